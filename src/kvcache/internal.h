// Internal helpers of the kvcache library (not part of the public API).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/fp16.h"
#include "kvcache/simd.h"
#include "squat/kv_quant.h"

namespace squat::kv::detail {

// Grow-only scratch of the chunk quantizers: once sized (by a first call or reserve), later
// calls of the same shape allocate nothing (the decode path flushes through it).
struct QuantScratch {
  std::vector<uint8_t> raw;
  std::vector<float> mn, mx, sc, mi, safe;  // per column of a block
  std::vector<float> target, err;           // SQuat: [n, d] target and [n, g] block error
  void reserve(std::size_t n, std::size_t d);
};

// Sizes q for the shape (reusing its vectors' capacity) and zeroes codes and params.
void init_chunk(QuantizedChunk& q, std::size_t n, std::size_t d, int bits, int group_size,
                GroupLayout layout, ParamType p);
// Quantizes columns [c0, c1) of x ([q.n, ld] row-major) into q's groups (c0, c1 aligned to
// the group structure). When xhat is non-null, writes the dequantized columns to
// xhat[t*ldh + (c - c0)].
void quantize_columns(const float* x, std::size_t ld, std::size_t c0, std::size_t c1,
                      QuantizedChunk& q, float* xhat, std::size_t ldh, QuantScratch& scratch);
// quantize_chunk / squat_quantize_chunk into an existing chunk with caller-owned scratch
// (no allocation once q and scratch have the capacity). state == nullptr: KIVI.
void quantize_chunk_into(const float* x, std::size_t n, std::size_t d, int bits, int group_size,
                         GroupLayout layout, ParamType p, const SquatState* state,
                         QuantizedChunk& q, QuantScratch& scratch);

// Fast unpack of n packed codes to floats (table lookup per byte): out[i] = float(code_i).
void unpack_to_float(const uint8_t* packed, std::size_t n, int bits, float* out);

// A growable array of floats stored as fp16 or fp32 (bytes counted exactly).
class FloatStore {
 public:
  explicit FloatStore(bool f16 = false) : f16_(f16) {}
  bool f16() const { return f16_; }
  std::size_t size() const { return f16_ ? h_.size() : f_.size(); }
  std::size_t bytes() const { return f16_ ? h_.size() * 2 : f_.size() * 4; }
  void push(const float* x, std::size_t n) {
    if (f16_) {
      for (std::size_t i = 0; i < n; ++i) h_.push_back(float_to_fp16(x[i]));
    } else {
      f_.insert(f_.end(), x, x + n);
    }
  }
  float get(std::size_t i) const { return f16_ ? fp16_to_float(h_[i]) : f_[i]; }
  void get(std::size_t i, std::size_t n, float* out) const {
    if (f16_) {
      simd::f16_to_f32(h_.data() + i, n, out);
    } else {
      std::memcpy(out, f_.data() + i, n * sizeof(float));
    }
  }
  void reserve(std::size_t n) {
    if (f16_) {
      h_.reserve(n);
    } else {
      f_.reserve(n);
    }
  }
  std::size_t capacity_bytes() const { return h_.capacity() * 2 + f_.capacity() * 4; }
  void erase_front(std::size_t n) {
    if (f16_) {
      h_.erase(h_.begin(), h_.begin() + std::ptrdiff_t(n));
    } else {
      f_.erase(f_.begin(), f_.begin() + std::ptrdiff_t(n));
    }
  }
  void clear() {
    h_.clear();
    f_.clear();
  }

 private:
  bool f16_;
  std::vector<uint16_t> h_;
  std::vector<float> f_;
};

}  // namespace squat::kv::detail
