#include "model/dense_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace squat {

void causal_attention(const KvShape& shape, const float* q, int n_q, int q_first_pos,
                      const float* k, const float* v, int n_k, float* out, ThreadPool& pool) {
  const auto d = std::size_t(shape.head_dim);
  const int n_rep = shape.n_heads / shape.n_kv_heads;
  const auto kv_stride = std::size_t(shape.n_kv_heads) * d;
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));
  const std::size_t tasks = std::size_t(n_q) * std::size_t(shape.n_heads);

  pool.parallel_for(tasks, [&](std::size_t begin, std::size_t end, int) {
    thread_local std::vector<float> scores;  // grown once per thread
    for (std::size_t task = begin; task < end; ++task) {
      const std::size_t i = task / std::size_t(shape.n_heads);
      const std::size_t h = task % std::size_t(shape.n_heads);
      const std::size_t g = h / std::size_t(n_rep);
      const float* qh = q + task * d;
      float* o = out + task * d;
      const int visible = std::min(n_k, q_first_pos + int(i) + 1);
      std::fill(o, o + d, 0.0f);
      if (visible <= 0) continue;
      scores.resize(std::size_t(visible));
      float max_score = -std::numeric_limits<float>::infinity();
      for (int t = 0; t < visible; ++t) {
        const float s = kernels::dot(qh, k + std::size_t(t) * kv_stride + g * d, d) * scale;
        scores[std::size_t(t)] = s;
        max_score = std::max(max_score, s);
      }
      float total = 0.0f;
      for (int t = 0; t < visible; ++t) {
        const float w = std::exp(scores[std::size_t(t)] - max_score);
        total += w;
        kernels::axpy(w, v + std::size_t(t) * kv_stride + g * d, o, d);
      }
      const float inv = 1.0f / total;
      for (std::size_t c = 0; c < d; ++c) o[c] *= inv;
    }
  });
}

}  // namespace squat
