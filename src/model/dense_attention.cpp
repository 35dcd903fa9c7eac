#include "model/dense_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "core/scratch.h"
#include "core/thread_pool.h"
#include "kvcache/simd.h"
#include "kvcache/softmax_partials.h"

namespace squat {

namespace {

constexpr std::size_t kTileRows = 48;  // query rows per task (queries x heads of a group)
constexpr std::size_t kKeyBlock = 64;  // keys per tile

// Per-thread scratch, grow-only.
struct TileScratch {
  std::vector<float> qs, part, work;
  std::vector<std::size_t> vis;
};
TileScratch& tile_scratch() { return thread_scratch<TileScratch>(); }

}  // namespace

void causal_attention(const KvShape& shape, const float* q, int n_q, int q_first_pos,
                      const float* k, const float* v, int n_k, float* out, ThreadPool& pool,
                      float* lse) {
  if (n_q <= 0) return;
  const auto d = std::size_t(shape.head_dim);
  const auto n_heads = std::size_t(shape.n_heads), n_kv = std::size_t(shape.n_kv_heads);
  const std::size_t n_rep = n_heads / n_kv;
  const std::size_t kv_stride = n_kv * d, stride = kv::softmax_partial_stride(d);
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));
  const std::size_t qb = std::max<std::size_t>(1, kTileRows / n_rep);  // queries per task
  const std::size_t n_blocks = (std::size_t(n_q) + qb - 1) / qb;
  const std::size_t n_tasks = n_blocks * n_kv;
  // Keys visible to query i.
  const auto visible = [&](std::size_t i) {
    return std::size_t(std::clamp<long long>((long long)q_first_pos + (long long)i + 1, 0, n_k));
  };

  const auto run_task = [&](std::size_t task) {
    // Last query blocks first: they see the most keys, so handing them out first balances
    // the causal triangle over the threads.
    const std::size_t blk = n_blocks - 1 - task / n_kv, g = task % n_kv;
    const std::size_t i0 = blk * qb, i1 = std::min(std::size_t(n_q), i0 + qb);
    const std::size_t rows = (i1 - i0) * n_rep;
    TileScratch& sc = tile_scratch();
    grow(sc.qs, rows * d);
    grow(sc.part, rows * stride);
    grow(sc.vis, rows);
    grow(sc.work, 4 * kKeyBlock);
    for (std::size_t i = i0; i < i1; ++i) {
      for (std::size_t r = 0; r < n_rep; ++r) {
        const float* src = q + (i * n_heads + g * n_rep + r) * d;
        float* dst = sc.qs.data() + ((i - i0) * n_rep + r) * d;
        std::copy(src, src + d, dst);
      }
    }
    kv::reset_partials(sc.part.data(), rows, stride);
    std::size_t limit = 0;
    for (std::size_t i = i0; i < i1; ++i) limit = std::max(limit, visible(i));
    // Two passes over the key tiles: the rows' max, then weights and values against it.
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t t0 = 0; t0 < limit; t0 += kKeyBlock) {
        const std::size_t nb = std::min(kKeyBlock, limit - t0);
        // Only the diagonal tiles cut rows short.
        for (std::size_t i = i0; i < i1; ++i) {
          const std::size_t vi = visible(i);
          const std::size_t seen = vi > t0 ? std::min(nb, vi - t0) : 0;
          for (std::size_t r = 0; r < n_rep; ++r) sc.vis[(i - i0) * n_rep + r] = seen;
        }
        kv::simd::prompt_tile(sc.qs.data(), rows, sc.vis.data(), k + t0 * kv_stride + g * d,
                              kv_stride, v + t0 * kv_stride + g * d, kv_stride, nb, d, scale, pass,
                              sc.part.data(), stride, sc.work.data());
      }
    }
    for (std::size_t i = i0; i < i1; ++i) {
      for (std::size_t r = 0; r < n_rep; ++r) {
        // A query that sees no key (a row that stayed empty) gets zeros and -inf.
        const float* p = sc.part.data() + ((i - i0) * n_rep + r) * stride;
        const float l =
            kv::merge_partials(p, 1, stride, d, out + (i * n_heads + g * n_rep + r) * d);
        if (lse) lse[i * n_heads + g * n_rep + r] = l;
      }
    }
  };

  if (pool.size() <= 1 || n_tasks == 1) {
    for (std::size_t t = 0; t < n_tasks; ++t) run_task(t);
    return;
  }
  // Tasks are handed out one at a time (their cost grows with the query block), no lock.
  std::atomic<std::size_t> next{0};
  pool.run_on_all([&](int) {
    for (std::size_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) run_task(t);
  });
}

void causal_attention_reference(const KvShape& shape, const float* q, int n_q, int q_first_pos,
                                const float* k, const float* v, int n_k, float* out) {
  const auto d = std::size_t(shape.head_dim);
  const int n_rep = shape.n_heads / shape.n_kv_heads;
  const auto kv_stride = std::size_t(shape.n_kv_heads) * d;
  const double scale = 1.0 / std::sqrt(double(shape.head_dim));
  std::vector<double> scores;
  for (int i = 0; i < n_q; ++i) {
    for (int h = 0; h < shape.n_heads; ++h) {
      const std::size_t g = std::size_t(h / n_rep);
      const float* qh = q + (std::size_t(i) * std::size_t(shape.n_heads) + std::size_t(h)) * d;
      float* o = out + (std::size_t(i) * std::size_t(shape.n_heads) + std::size_t(h)) * d;
      const int visible = std::clamp(q_first_pos + i + 1, 0, n_k);
      std::fill(o, o + d, 0.0f);
      if (visible <= 0) continue;
      scores.assign(std::size_t(visible), 0.0);
      double max_score = -std::numeric_limits<double>::infinity();
      for (int t = 0; t < visible; ++t) {
        const float* kt = k + std::size_t(t) * kv_stride + g * d;
        double s = 0.0;
        for (std::size_t c = 0; c < d; ++c) s += double(qh[c]) * double(kt[c]);
        scores[std::size_t(t)] = s * scale;
        max_score = std::max(max_score, scores[std::size_t(t)]);
      }
      double total = 0.0;
      for (double& s : scores) total += (s = std::exp(s - max_score));
      for (std::size_t c = 0; c < d; ++c) {
        double a = 0.0;
        for (int t = 0; t < visible; ++t) {
          a += scores[std::size_t(t)] * double(v[std::size_t(t) * kv_stride + g * d + c]);
        }
        o[c] = float(a / total);
      }
    }
  }
}

}  // namespace squat
