// The engine's prompt attention (tiled causal_attention) against its scalar double-precision
// reference on every SIMD target of this CPU: GQA ratios 1..8, head sizes that are and are not
// multiples of the vector width, query offsets (a later batch), query blocks and key blocks with
// tails, 1..3 threads. (The flash tile kernel itself: tests/kvcache, FlashTile*.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "../kernels/simd_targets.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"
#include "kvcache/simd.h"
#include "model/dense_attention.h"

namespace squat {
namespace {

std::vector<float> randn(std::size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;  // also an untouched row's -inf max
    const double e = std::fabs(double(a[i]) - double(b[i])) / (1.0 + std::fabs(double(b[i])));
    worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
  }
  return worst;
}

// The per-query loop the tiles replaced (kernels::dot per key, the max over all visible logits,
// std::exp, kernels::axpy in token order): the tiles must give exactly its bits, so engines'
// outputs do not move with the speed-up.
void per_query_attention(const KvShape& shape, const float* q, int n_q, int q_first_pos,
                         const float* k, const float* v, int n_k, float* out) {
  const auto d = std::size_t(shape.head_dim);
  const int n_rep = shape.n_heads / shape.n_kv_heads;
  const auto kv_stride = std::size_t(shape.n_kv_heads) * d;
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));
  std::vector<float> scores;
  for (int i = 0; i < n_q; ++i) {
    for (int h = 0; h < shape.n_heads; ++h) {
      const std::size_t task = std::size_t(i) * std::size_t(shape.n_heads) + std::size_t(h);
      const std::size_t g = std::size_t(h / n_rep);
      float* o = out + task * d;
      const int visible = std::min(n_k, q_first_pos + i + 1);
      std::fill(o, o + d, 0.0f);
      if (visible <= 0) continue;
      scores.assign(std::size_t(visible), 0.0f);
      float max_score = -std::numeric_limits<float>::infinity();
      for (int t = 0; t < visible; ++t) {
        scores[std::size_t(t)] =
            kernels::dot(q + task * d, k + std::size_t(t) * kv_stride + g * d, d) * scale;
        max_score = std::max(max_score, scores[std::size_t(t)]);
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
  }
}

struct Shape {
  int n_heads, n_kv, d, n_q, q_first, n_k;
};

TEST(DenseAttention, TiledMatchesScalarReference) {
  std::vector<std::unique_ptr<ThreadPool>> pools;
  for (int t = 1; t <= 3; ++t) pools.push_back(std::make_unique<ThreadPool>(t));
  const Shape shapes[] = {
      {9, 3, 64, 200, 0, 200},    // SmolLM2's heads, one prompt batch
      {4, 4, 16, 37, 0, 37},      // no GQA, tiny head
      {8, 1, 20, 65, 0, 65},      // 8 query heads per KV head, d not a multiple of 8 or 16
      {6, 2, 72, 70, 63, 133},    // a later batch (queries start at 63)
      {12, 3, 128, 17, 5, 22},    // large head, few queries
      {3, 3, 8, 1, 0, 1},         // a single token
      {2, 1, 64, 130, 0, 100},    // more queries than keys: the last ones see all 100
  };
  int seed = 1;
  for (const Shape& s : shapes) {
    const KvShape shape{1, s.n_heads, s.n_kv, s.d, s.q_first + s.n_q};
    const auto q = randn(std::size_t(s.n_q * s.n_heads * s.d), seed++, 1.5f);
    const auto k = randn(std::size_t(s.n_k * s.n_kv * s.d), seed++, 1.5f);
    const auto v = randn(std::size_t(s.n_k * s.n_kv * s.d), seed++, 1.0f);
    std::vector<float> ref(q.size());
    causal_attention_reference(shape, q.data(), s.n_q, s.q_first, k.data(), v.data(), s.n_k,
                               ref.data());
    kernels::for_each_simd_target([&] {
      std::vector<float> first;
      for (auto& pool : pools) {
        std::vector<float> out(q.size(), 7.0f);
        causal_attention(shape, q.data(), s.n_q, s.q_first, k.data(), v.data(), s.n_k,
                         out.data(), *pool);
        EXPECT_LT(max_rel_diff(out, ref), 2e-5)
            << "heads " << s.n_heads << "/" << s.n_kv << " d " << s.d << " n_q " << s.n_q
            << " from " << s.q_first << " n_k " << s.n_k << " threads " << pool->size();
        if (first.empty()) {
          std::vector<float> loop(q.size());
          per_query_attention(shape, q.data(), s.n_q, s.q_first, k.data(), v.data(), s.n_k,
                              loop.data());
          EXPECT_EQ(out, loop) << "the tiles must keep the per-query loop's bits";
          first = out;
        } else {
          EXPECT_EQ(out, first) << "the result must not depend on the thread count";
        }
      }
    });
  }
}

// The reference itself against a hand-computed case: one query over two keys.
TEST(DenseAttention, ReferenceOnAHandComputedCase) {
  const KvShape shape{1, 1, 1, 2, 2};
  const float q[] = {1.0f, 0.0f}, k[] = {0.0f, 0.0f, std::sqrt(2.0f) * std::log(3.0f), 0.0f};
  const float v[] = {1.0f, 2.0f, 5.0f, -2.0f};
  float out[2];
  // Logits 0 and log 3 after the 1/sqrt(2) scale: weights 1/4 and 3/4.
  causal_attention_reference(shape, q, 1, 1, k, v, 2, out);
  EXPECT_NEAR(out[0], 0.25f * 1.0f + 0.75f * 5.0f, 1e-6);
  EXPECT_NEAR(out[1], 0.25f * 2.0f - 0.75f * 2.0f, 1e-6);
  causal_attention_reference(shape, q, 1, 0, k, v, 2, out);  // sees only the first key
  EXPECT_NEAR(out[0], 1.0f, 1e-6);
  EXPECT_NEAR(out[1], 2.0f, 1e-6);
}

}  // namespace
}  // namespace squat
