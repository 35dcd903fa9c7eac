// Full-precision KV cache: keys (rotated) and values stored as fp16 or fp32, laid out per layer
// and KV head as [token, head_dim] so attention streams each head's keys contiguously.
#pragma once

#include <cstdint>
#include <vector>

#include "model/kv_cache.h"

namespace squat {

class FullPrecisionCache final : public KvCache {
 public:
  enum class Storage { F16, F32 };
  FullPrecisionCache(const KvShape& shape, const RopeSpec& rope, Storage storage);

  void append(int layer, const float* k, const float* v, int n) override;
  void attend(int layer, const float* q, int n, int first_pos, float* out,
              ThreadPool& pool) override;
  int n_tokens() const override { return n_tokens_; }
  int capacity() const override { return shape_.max_tokens; }
  std::size_t bytes() const override;
  void clear() override;

 private:
  // Key or value row of (layer, kv_head, token) in the element buffer.
  std::size_t row_offset(int layer, int kv_head, int token) const;
  void store_row(std::vector<uint16_t>& half, std::vector<float>& full, std::size_t offset,
                 const float* src);
  void load_rows(const std::vector<uint16_t>& half, const std::vector<float>& full,
                 std::size_t offset, int count, float* dst) const;

  KvShape shape_;
  RopeSpec rope_;
  Storage storage_;
  int n_tokens_ = 0;
  std::vector<int> layer_tokens_;
  std::vector<uint16_t> k_half_, v_half_;
  std::vector<float> k_full_, v_full_;
  std::vector<float> rotated_scratch_;  // one key while it is rotated
};

}  // namespace squat
