#include "model/full_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace squat {

namespace {
constexpr int kBlockTokens = 64;  // keys and values converted to f32 this many at a time
}

FullPrecisionCache::FullPrecisionCache(const KvShape& shape, const RopeSpec& rope, Storage storage)
    : shape_(shape),
      rope_(rope),
      storage_(storage),
      layer_tokens_(size_t(shape.n_layers), 0),
      rotated_scratch_(size_t(shape.head_dim)) {
  const std::size_t elements = std::size_t(shape.n_layers) * std::size_t(shape.n_kv_heads) *
                               std::size_t(shape.max_tokens) * std::size_t(shape.head_dim);
  // Pages are touched only as tokens arrive, so resident memory grows with the context.
  if (storage_ == Storage::F16) {
    k_half_.resize(elements);
    v_half_.resize(elements);
  } else {
    k_full_.resize(elements);
    v_full_.resize(elements);
  }
}

std::size_t FullPrecisionCache::row_offset(int layer, int kv_head, int token) const {
  return ((std::size_t(layer) * std::size_t(shape_.n_kv_heads) + std::size_t(kv_head)) *
              std::size_t(shape_.max_tokens) +
          std::size_t(token)) *
         std::size_t(shape_.head_dim);
}

void FullPrecisionCache::store_row(std::vector<uint16_t>& half, std::vector<float>& full,
                                   std::size_t offset, const float* src) {
  const int d = shape_.head_dim;
  if (storage_ == Storage::F16) {
    for (int i = 0; i < d; ++i) half[offset + std::size_t(i)] = float_to_fp16(src[i]);
  } else {
    std::copy(src, src + d, full.begin() + std::ptrdiff_t(offset));
  }
}

void FullPrecisionCache::load_rows(const std::vector<uint16_t>& half,
                                   const std::vector<float>& full, std::size_t offset, int count,
                                   float* dst) const {
  const std::size_t n = std::size_t(count) * std::size_t(shape_.head_dim);
  if (storage_ == Storage::F16) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = fp16_to_float(half[offset + i]);
  } else {
    std::copy(full.begin() + std::ptrdiff_t(offset), full.begin() + std::ptrdiff_t(offset + n),
              dst);
  }
}

void FullPrecisionCache::append(int layer, const float* k, const float* v, int n) {
  int& stored = layer_tokens_[size_t(layer)];
  if (stored + n > shape_.max_tokens) {
    fail("context is full: {} tokens cached + {} new > context size {}", stored, n,
         shape_.max_tokens);
  }
  const int d = shape_.head_dim;
  std::vector<float>& rotated = rotated_scratch_;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < shape_.n_kv_heads; ++h) {
      const std::size_t src =
          (std::size_t(t) * std::size_t(shape_.n_kv_heads) + std::size_t(h)) * std::size_t(d);
      std::copy(k + src, k + src + d, rotated.begin());
      kernels::rope(rotated.data(), std::size_t(d), stored + t, rope_.inv_freq.data(),
                    rope_.neox ? kernels::RopeLayout::Neox : kernels::RopeLayout::Normal);
      const std::size_t dst = row_offset(layer, h, stored + t);
      store_row(k_half_, k_full_, dst, rotated.data());
      store_row(v_half_, v_full_, dst, v + src);
    }
  }
  stored += n;
  if (layer == shape_.n_layers - 1) n_tokens_ = stored;
}

void FullPrecisionCache::attend(int layer, const float* q, int n, int first_pos, float* out,
                                ThreadPool& pool) {
  const int d = shape_.head_dim;
  const int n_rep = shape_.n_heads / shape_.n_kv_heads;
  const int stored = layer_tokens_[size_t(layer)];
  const float scale = 1.0f / std::sqrt(float(d));
  const std::size_t tasks = std::size_t(n) * std::size_t(shape_.n_kv_heads);

  pool.parallel_for(tasks, [&](std::size_t begin, std::size_t end, int) {
    // Per-thread scratch, grown once and reused by every later call.
    thread_local std::vector<float> keys, values, scores, acc, maxes, sums;
    keys.resize(std::size_t(kBlockTokens) * std::size_t(d));
    values.resize(keys.size());
    scores.resize(std::size_t(kBlockTokens) * std::size_t(n_rep));
    acc.resize(std::size_t(n_rep) * std::size_t(d));
    maxes.resize(std::size_t(n_rep));
    sums.resize(std::size_t(n_rep));

    for (std::size_t task = begin; task < end; ++task) {
      const int i = int(task / std::size_t(shape_.n_kv_heads));
      const int g = int(task % std::size_t(shape_.n_kv_heads));
      const int visible = std::min(stored, first_pos + i + 1);
      const float* q_group =
          q + (std::size_t(i) * std::size_t(shape_.n_heads) + std::size_t(g) * std::size_t(n_rep)) *
                  std::size_t(d);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(maxes.begin(), maxes.end(), -std::numeric_limits<float>::infinity());
      std::fill(sums.begin(), sums.end(), 0.0f);

      for (int t0 = 0; t0 < visible; t0 += kBlockTokens) {
        const int count = std::min(kBlockTokens, visible - t0);
        load_rows(k_half_, k_full_, row_offset(layer, g, t0), count, keys.data());
        load_rows(v_half_, v_full_, row_offset(layer, g, t0), count, values.data());
        for (int r = 0; r < n_rep; ++r) {
          const float* qr = q_group + std::size_t(r) * std::size_t(d);
          float* sr = scores.data() + std::size_t(r) * kBlockTokens;
          float block_max = -std::numeric_limits<float>::infinity();
          for (int t = 0; t < count; ++t) {
            sr[t] =
                kernels::dot(qr, keys.data() + std::size_t(t) * std::size_t(d), std::size_t(d)) *
                scale;
            block_max = std::max(block_max, sr[t]);
          }
          // Online softmax: rescale what was accumulated when the running maximum grows.
          const float new_max = std::max(maxes[size_t(r)], block_max);
          const float correction = std::exp(maxes[size_t(r)] - new_max);
          float* ar = acc.data() + std::size_t(r) * std::size_t(d);
          if (correction != 1.0f) {
            for (int c = 0; c < d; ++c) ar[c] *= correction;
          }
          sums[size_t(r)] *= correction;
          for (int t = 0; t < count; ++t) {
            const float w = std::exp(sr[t] - new_max);
            sums[size_t(r)] += w;
            kernels::axpy(w, values.data() + std::size_t(t) * std::size_t(d), ar, std::size_t(d));
          }
          maxes[size_t(r)] = new_max;
        }
      }
      for (int r = 0; r < n_rep; ++r) {
        float* o = out + (std::size_t(i) * std::size_t(shape_.n_heads) +
                          std::size_t(g) * std::size_t(n_rep) + std::size_t(r)) *
                             std::size_t(d);
        const float* ar = acc.data() + std::size_t(r) * std::size_t(d);
        const float inv = sums[size_t(r)] > 0.0f ? 1.0f / sums[size_t(r)] : 0.0f;
        for (int c = 0; c < d; ++c) o[c] = ar[c] * inv;
      }
    }
  });
}

std::size_t FullPrecisionCache::bytes() const {
  const std::size_t element = storage_ == Storage::F16 ? 2 : 4;
  return 2 * element * std::size_t(shape_.n_layers) * std::size_t(shape_.n_kv_heads) *
         std::size_t(n_tokens_) * std::size_t(shape_.head_dim);
}

void FullPrecisionCache::clear() {
  n_tokens_ = 0;
  std::fill(layer_tokens_.begin(), layer_tokens_.end(), 0);
}

}  // namespace squat
