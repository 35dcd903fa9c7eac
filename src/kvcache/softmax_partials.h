// Online-softmax partials: attention of one query row over some of the keys, kept so that
// ranges of keys can be processed separately (tiles, threads) and merged exactly.
//
// Layout of a row: floats [m, l, acc[0..D)], stride D + 2 (rows may be spaced wider):
//   m   the largest score seen (-inf before any key),
//   l   sum over the keys seen of e^(s - m),
//   acc sum over the keys seen of e^(s - m) * v (unnormalised output).
// The kernels that add keys to rows (kvcache/simd.h: fused decode, prompt tiles; the dense
// prompt attention) rescale l and acc by e^(m_old - m_new) when m grows. The output is
// acc / l; the log of the softmax denominator, m + log l, lets results of disjoint key sets be
// merged again (prefill batches).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace squat::kv {

constexpr std::size_t softmax_partial_stride(std::size_t D) { return D + 2; }

// Empty rows: m = -inf, l = 0, acc = 0.
inline void reset_partials(float* part, std::size_t rows, std::size_t stride) {
  for (std::size_t row = 0; row < rows; ++row) {
    float* p = part + row * stride;
    p[0] = -std::numeric_limits<float>::infinity();
    std::fill(p + 1, p + stride, 0.0f);
  }
}

// Merges n partial rows of one query, spaced `stride` floats apart, into o[D] = the softmax-
// weighted values; returns the log of the merged denominator, M + log L (-inf, and o all zeros,
// when no partial saw a key). With n = 1 this is o = acc / l.
inline float merge_partials(const float* part, std::size_t n, std::size_t stride, std::size_t D,
                            float* o) {
  float M = -std::numeric_limits<float>::infinity();
  for (std::size_t j = 0; j < n; ++j) {
    if (part[j * stride + 1] > 0.0f) M = std::max(M, part[j * stride]);
  }
  std::fill(o, o + D, 0.0f);
  if (M == -std::numeric_limits<float>::infinity()) return M;  // sees no key: zeros
  float L = 0.0f;
  for (std::size_t j = 0; j < n; ++j) {
    const float* p = part + j * stride;
    if (!(p[1] > 0.0f)) continue;
    const float w = std::exp(p[0] - M);
    L += w * p[1];
    for (std::size_t c = 0; c < D; ++c) o[c] += w * p[2 + c];
  }
  const float inv = 1.0f / L;
  for (std::size_t c = 0; c < D; ++c) o[c] *= inv;
  return M + std::log(L);
}

}  // namespace squat::kv
