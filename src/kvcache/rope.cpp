// RoPE tables of pre-RoPE keys (angles from squat::rope_cos_sin), the Walsh-Hadamard
// transform, fast code unpacking and dense reference attention.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "kvcache/internal.h"
#include "kvcache/simd.h"
#include "squat/kvcache.h"

namespace squat::kv {

RopeTable::RopeTable(RopeSpec spec) : spec_(std::move(spec)), half_(int(spec_.inv_freq.size())) {}

RopeTable::RopeTable(RopeSpec spec, std::size_t fixed_positions) : RopeTable(std::move(spec)) {
  grow(fixed_positions);
  fixed_ = true;
}

void RopeTable::ensure(std::size_t n_positions) {
  if (n_positions <= n_) return;
  if (fixed_) {
    fail(
        "the shared RoPE table holds {} positions, a cache asked for {} (a sequence longer "
        "than the context it was made for)",
        n_, n_positions);
  }
  grow(std::max(n_positions, n_ * 2));
}

void RopeTable::grow(std::size_t cap) {
  const std::size_t D = std::size_t(2 * half_);
  c_.resize(cap * D);
  s_.resize(cap * D);
  cs_.resize(cap * D);
  for (std::size_t p = n_; p < cap; ++p) {
    float* c = c_.data() + p * D;
    float* s = s_.data() + p * D;
    float* cs = cs_.data() + p * D;
    for (int i = 0; i < half_; ++i) {
      float cv = 0.0f, sv = 0.0f;
      rope_cos_sin((long long)p, spec_.inv_freq.data() + i, 1, &cv, &sv);
      const std::size_t a =
          spec_.layout == RopeLayout::Normal ? std::size_t(2 * i) : std::size_t(i);
      const std::size_t b = spec_.layout == RopeLayout::Normal ? a + 1 : a + std::size_t(half_);
      c[a] = c[b] = cv;
      s[a] = -sv;
      s[b] = sv;
      const bool normal = spec_.layout == RopeLayout::Normal;
      cs[normal ? 2 * std::size_t(i) : std::size_t(i)] = cv;
      cs[normal ? 2 * std::size_t(i) + 1 : std::size_t(half_ + i)] = sv;
    }
  }
  n_ = cap;
}

void hadamard_transform(float* x, int n) {
  for (int len = 1; len < n; len <<= 1) {
    for (int i = 0; i < n; i += 2 * len) {
      for (int j = i; j < i + len; ++j) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
    }
  }
  const float norm = 1.0f / std::sqrt(float(n));
  for (int i = 0; i < n; ++i) x[i] *= norm;
}

namespace detail {
namespace {

struct Luts {
  std::array<std::array<float, 4>, 256> two;
  std::array<std::array<float, 2>, 256> four;
  Luts() {
    for (int b = 0; b < 256; ++b) {
      for (int j = 0; j < 4; ++j) two[std::size_t(b)][std::size_t(j)] = float((b >> (2 * j)) & 3);
      for (int j = 0; j < 2; ++j) four[std::size_t(b)][std::size_t(j)] = float((b >> (4 * j)) & 15);
    }
  }
};
const Luts kLuts;

}  // namespace

void unpack_to_float(const uint8_t* packed, std::size_t n, int bits, float* out) {
  if (bits == 2) {
    const std::size_t full = n / 4;
    for (std::size_t i = 0; i < full; ++i) {
      const auto& e = kLuts.two[packed[i]];
      out[4 * i + 0] = e[0];
      out[4 * i + 1] = e[1];
      out[4 * i + 2] = e[2];
      out[4 * i + 3] = e[3];
    }
    for (std::size_t i = full * 4; i < n; ++i) out[i] = float((packed[i / 4] >> (2 * (i % 4))) & 3);
  } else if (bits == 4) {
    const std::size_t full = n / 2;
    for (std::size_t i = 0; i < full; ++i) {
      const auto& e = kLuts.four[packed[i]];
      out[2 * i + 0] = e[0];
      out[2 * i + 1] = e[1];
    }
    if (n % 2) out[n - 1] = float(packed[n / 2] & 15);
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = float(packed[i]);
  }
}

}  // namespace detail

void attention_dense(const float* q, std::size_t n_q, int n_heads, const int* q_pos, const float* k,
                     const float* v, std::size_t n_k, int n_kv_heads, int d, float* out) {
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0) {
    fail_usage("n_heads {} must be a multiple of n_kv_heads {}", n_heads, n_kv_heads);
  }
  const int n_rep = n_heads / n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<float> logits(n_k);
  const std::size_t D = std::size_t(d);
  for (std::size_t i = 0; i < n_q; ++i) {
    const long long visible = std::min<long long>((long long)n_k, (long long)q_pos[i] + 1);
    for (int h = 0; h < n_heads; ++h) {
      const float* qv = q + (i * std::size_t(n_heads) + std::size_t(h)) * D;
      float* o = out + (i * std::size_t(n_heads) + std::size_t(h)) * D;
      std::fill(o, o + D, 0.0f);
      if (visible <= 0) continue;
      const std::size_t kvh = std::size_t(h / n_rep);
      float mx = -std::numeric_limits<float>::infinity();
      for (std::size_t t = 0; t < std::size_t(visible); ++t) {
        const float* kv = k + (t * std::size_t(n_kv_heads) + kvh) * D;
        float s = 0;
        for (std::size_t c = 0; c < D; ++c) s += qv[c] * kv[c];
        logits[t] = s * scale;
        mx = std::max(mx, logits[t]);
      }
      float sum = 0;
      for (std::size_t t = 0; t < std::size_t(visible); ++t) {
        logits[t] = std::exp(logits[t] - mx);
        sum += logits[t];
      }
      for (std::size_t t = 0; t < std::size_t(visible); ++t) {
        const float* vv = v + (t * std::size_t(n_kv_heads) + kvh) * D;
        const float w = logits[t] / sum;
        for (std::size_t c = 0; c < D; ++c) o[c] += w * vv[c];
      }
    }
  }
}

}  // namespace squat::kv

namespace squat::kv::simd {

float softmax_sum_update(float l, float corr, float psum) { return l * corr + psum; }

}  // namespace squat::kv::simd
