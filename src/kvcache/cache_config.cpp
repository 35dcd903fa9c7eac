// CacheConfig: method names, the translation of named options (make_cache_config), defaults and
// validation, bits per element.
#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "squat/kvcache.h"

namespace squat::kv {

const char* to_string(CacheMethod m) {
  switch (m) {
    case CacheMethod::F32:
      return "f32";
    case CacheMethod::F16:
      return "f16";
    case CacheMethod::Int8:
      return "int8";
    case CacheMethod::Int4:
      return "int4";
    case CacheMethod::Kivi:
      return "kivi";
    case CacheMethod::Squat:
      return "squat";
  }
  return "?";
}

CacheMethod parse_method(const std::string& s) {
  for (CacheMethod m : kCacheMethods) {
    if (s == to_string(m)) return m;
  }
  fail_usage("unknown KV cache method '{}' (expected f32, f16, int8, int4, kivi or squat)", s);
}

namespace {
// Bits per element the method fixes, or `chosen` (k_bits / v_bits) for kivi and squat.
int method_bits(CacheMethod method, int chosen) {
  switch (method) {
    case CacheMethod::F32:
      return 32;
    case CacheMethod::F16:
      return 16;
    case CacheMethod::Int8:
      return 8;
    case CacheMethod::Int4:
      return 4;
    default:
      return chosen;
  }
}
}  // namespace

int CacheConfig::key_bits() const { return method_bits(method, k_bits); }
int CacheConfig::value_bits() const { return method_bits(method, v_bits); }
int default_quant_group_size(int head_dim, GroupLayout key_quant, int group_size) {
  int g = head_dim >= 128 ? 64 : head_dim % 4 == 0 ? head_dim / 4 : head_dim;
  if (key_quant == GroupLayout::PerToken && group_size > 0 && g % group_size != 0) {
    g = group_size;
    while (g < head_dim && head_dim % g != 0) g += group_size;
  }
  return std::clamp(g, 1, std::max(1, head_dim));
}

CacheConfig make_cache_config(const CacheOptions& o, int head_dim) {
  CacheConfig c;
  c.method = parse_method(o.method);
  c.k_bits = o.k_bits;
  c.v_bits = o.v_bits;
  c.group_size = o.group_size;
  c.residual_length = o.residual_length;
  c.subspace_dim = o.subspace_dim;
  c.lambda = o.lambda;
  if (o.key_quant != "per-channel" && o.key_quant != "per-token") {
    fail_usage("key_quant must be 'per-channel' or 'per-token', got '{}'", o.key_quant);
  }
  c.key_quant = o.key_quant == "per-token" ? GroupLayout::PerToken : GroupLayout::PerChannel;
  if (head_dim <= 0) fail_usage("head_dim must be positive, got {}", head_dim);
  if (o.group_size <= 0) fail_usage("group_size must be positive, got {}", o.group_size);
  if (o.quant_group_size < 0) {
    fail_usage("quant_group_size must be positive (0: automatic), got {}", o.quant_group_size);
  }
  c.quant_group_size = o.quant_group_size > 0
                           ? o.quant_group_size
                           : default_quant_group_size(head_dim, c.key_quant, c.group_size);
  const bool kivi_like = c.method == CacheMethod::Kivi || c.method == CacheMethod::Squat;
  const std::string rope = o.key_rope.empty() ? (kivi_like ? "pre" : "post") : o.key_rope;
  if (rope != "pre" && rope != "post") {
    fail_usage("key_rope must be 'pre' or 'post', got '{}'", o.key_rope);
  }
  c.key_rope = rope == "pre" ? KeyRope::Pre : KeyRope::Post;
  if (o.query_rope != "after" && o.query_rope != "before") {
    fail_usage("query_rope must be 'after' or 'before', got '{}'", o.query_rope);
  }
  c.query_rope = o.query_rope == "before" ? QueryRope::Before : QueryRope::After;
  c.power_method = o.power_method;
  c.hadamard = o.hadamard;
  try {
    c.validate(head_dim);
  } catch (const Error& e) {
    fail_usage("invalid KV cache options for method '{}': {}", o.method, e.what());
  }
  return c;
}

int CacheConfig::window() const {
  return (method == CacheMethod::Kivi || method == CacheMethod::Squat) ? residual_length : 0;
}

void CacheConfig::validate(int head_dim) const {
  if (head_dim <= 0) fail_usage("head_dim must be positive, got {}", head_dim);
  if (key_rope == KeyRope::Pre && head_dim % 2 != 0) {
    fail_usage("pre-RoPE keys need an even head_dim, got {}", head_dim);
  }
  if (hadamard && (head_dim & (head_dim - 1)) != 0) {
    fail_usage("the Hadamard rotation of values needs head_dim a power of two, got {}", head_dim);
  }
  if (!quantized()) return;
  if (group_size <= 0) fail_usage("group_size must be positive, got {}", group_size);
  if (head_dim % group_size != 0) {
    fail_usage(
        "group_size {} must divide head_dim {} (values are quantized in groups of "
        "group_size channels)",
        group_size, head_dim);
  }
  if (method == CacheMethod::Int8 || method == CacheMethod::Int4) return;
  if (head_dim % 4 != 0) {
    fail_usage("quantized KV caches need head_dim a multiple of 4, got {}", head_dim);
  }
  for (auto [name, b] : {std::pair<const char*, int>{"k_bits", k_bits}, {"v_bits", v_bits}}) {
    if (b != 2 && b != 4 && b != 8) fail_usage("{} must be 2, 4 or 8, got {}", name, b);
  }
  if (residual_length <= 0 || residual_length % group_size != 0) {
    fail_usage("residual_length {} must be a positive multiple of group_size {}", residual_length,
               group_size);
  }
  if (method != CacheMethod::Squat) return;
  if (quant_group_size <= 0 || head_dim % quant_group_size != 0) {
    fail_usage("quant_group_size {} must divide head_dim {}", quant_group_size, head_dim);
  }
  if (key_quant == GroupLayout::PerToken && quant_group_size % group_size != 0) {
    fail_usage("per-token SQuat keys need quant_group_size {} to be a multiple of group_size {}",
               quant_group_size, group_size);
  }
  if (subspace_dim < 0) fail_usage("subspace_dim must be >= 0, got {}", subspace_dim);
  if (!(lambda >= 0) || !std::isfinite(lambda)) {
    fail_usage("lambda must be finite and >= 0, got {}", lambda);
  }
  if (power_method && power_iterations < 1) {
    fail_usage("power_iterations must be >= 1, got {}", power_iterations);
  }
}

std::string CacheConfig::describe() const {
  std::string s = to_string(method);
  if (method == CacheMethod::Kivi || method == CacheMethod::Squat) {
    s += fmt::format(" k{}v{} G={} R={} keys={} {}-RoPE", k_bits, v_bits, group_size,
                     residual_length,
                     key_quant == GroupLayout::PerChannel ? "per-channel" : "per-token",
                     key_rope == KeyRope::Pre ? "pre" : "post");
  }
  if (method == CacheMethod::Squat) {
    s += fmt::format(" g={} r={} lambda={}{}", quant_group_size, subspace_dim, lambda,
                     power_method ? " power" : "");
  }
  if (method == CacheMethod::Int8 || method == CacheMethod::Int4) {
    s += fmt::format(" G={}", group_size);
  }
  if (hadamard) s += " hadamard-V";
  return s;
}

}  // namespace squat::kv
