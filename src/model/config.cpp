#include "model/config.h"

#include <cmath>

#include "core/error.h"
#include "gguf/gguf.h"

namespace squat {

namespace {

int positive_int(const gguf::File& file, const std::string& key, uint64_t max_value) {
  const uint64_t value = file.get_uint(key);
  if (value == 0 || value > max_value) {
    fail("{}: metadata '{}' is {}, expected a value in 1..{}", file.path(), key, value, max_value);
  }
  return int(value);
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const gguf::File& file) {
  ModelConfig c;
  c.architecture = file.get_string("general.architecture");
  const std::string& arch = c.architecture;
  if (arch != "llama" && arch != "mistral" && arch != "qwen2") {
    fail("{}: architecture '{}' is not supported (supported: llama, mistral, qwen2)", file.path(),
         arch);
  }
  c.name = file.get_string_or("general.name", arch);
  const std::string p = arch + ".";
  c.n_layers = positive_int(file, p + "block_count", 1024);
  c.n_embd = positive_int(file, p + "embedding_length", 1 << 16);
  c.n_ff = positive_int(file, p + "feed_forward_length", 1 << 18);
  c.n_heads = positive_int(file, p + "attention.head_count", 1024);
  c.n_kv_heads = int(file.get_uint_or(p + "attention.head_count_kv", uint64_t(c.n_heads)));
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) {
    fail("{}: {} query heads cannot be shared by {} KV heads (expected a divisor)", file.path(),
         c.n_heads, c.n_kv_heads);
  }
  if (c.n_embd % c.n_heads != 0) {
    fail("{}: embedding length {} is not a multiple of the head count {}", file.path(), c.n_embd,
         c.n_heads);
  }
  c.head_dim = int(file.get_uint_or(p + "attention.key_length", uint64_t(c.n_embd / c.n_heads)));
  if (c.head_dim <= 0 || c.head_dim % 2 != 0 || c.head_dim > 1024) {
    fail("{}: head dimension {} is not an even number in 2..1024", file.path(), c.head_dim);
  }
  c.context_length = int(file.get_uint_or(p + "context_length", 4096));
  c.rms_eps = float(file.get_float(p + "attention.layer_norm_rms_epsilon"));
  if (!(c.rms_eps > 0.0f) || c.rms_eps > 1.0f) {
    fail("{}: '{}attention.layer_norm_rms_epsilon' is {}, expected a small positive number",
         file.path(), p, c.rms_eps);
  }
  c.neox_rope = arch == "qwen2";
  c.qkv_bias = arch == "qwen2";

  const int rope_dims = int(file.get_uint_or(p + "rope.dimension_count", uint64_t(c.head_dim)));
  if (rope_dims != c.head_dim) {
    fail("{}: partial rotary embedding ({} of {} dimensions) is not supported", file.path(),
         rope_dims, c.head_dim);
  }
  const double base = file.get_float_or(p + "rope.freq_base", 10000.0);
  if (!(base > 1.0)) fail("{}: '{}rope.freq_base' is {}, expected > 1", file.path(), p, base);
  c.rope_inv_freq.resize(size_t(c.head_dim / 2));
  for (int i = 0; i < c.head_dim / 2; ++i) {
    c.rope_inv_freq[size_t(i)] = float(std::pow(base, -2.0 * i / c.head_dim));
  }
  // Llama 3.1-style scaling is stored as a tensor of per-pair divisors (rope_freqs.weight);
  // linear scaling as a metadata factor dividing positions.
  const std::string scaling = file.get_string_or(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    const double factor = file.get_float(p + "rope.scaling.factor");
    if (!(factor >= 1.0)) fail("{}: rope scaling factor {} must be >= 1", file.path(), factor);
    for (float& f : c.rope_inv_freq) f = float(f / factor);
  } else if (scaling != "none" && scaling != "") {
    fail("{}: RoPE scaling type '{}' is not supported (supported: none, linear)", file.path(),
         scaling);
  }
  return c;
}

}  // namespace squat
