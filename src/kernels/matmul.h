// Weight-matrix times activation kernels: matvec for decode (one token), matmul for prompt
// processing (n tokens at once). Weights stay in their GGUF block format; rows are contiguous.
//
// Numerics of the fast paths: for Q4_0, Q4_1, Q4_K, Q6_K and Q8_0 weights, x is first
// quantized per block of 32 to int8 with one float scale (like llama.cpp's Q8_1/Q8_0
// activations) and each block's dot product is an exact integer sum, scaled in float.
// matvec_q8_ref/matmul_q8_ref are the scalar definition of that; matvec_ref/matmul_ref are the
// plain float definition (dequantize, dot in double). Every other type dequantizes rows to
// float and takes a float dot product.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"
#include "gguf/types.h"

namespace squat::kernels {

struct WeightView {
  gguf::TensorType type;
  const uint8_t* data;  // rows * row_bytes bytes
  std::size_t rows;
  std::size_t cols;       // a multiple of the type's block size
  std::size_t row_bytes;  // stride between rows, at least gguf::row_bytes(type, cols)
};

// y[r] = dot(W row r, x), r < rows; x has cols floats.
void matvec(const WeightView& w, const float* x, float* y, ThreadPool& pool);
// Y[i, r] = dot(W row r, X row i) for i < n; X is n x cols row-major, Y is n x rows row-major.
void matmul(const WeightView& w, const float* x, std::size_t n, float* y, ThreadPool& pool);

// Plain float references: dequantize_row, then a double-accumulated dot product.
void matvec_ref(const WeightView& w, const float* x, float* y);
void matmul_ref(const WeightView& w, const float* x, std::size_t n, float* y);

// True when matvec/matmul quantize x to 8 bits for this weight type (weight_kernels.h lists
// which: Q4_0, Q4_1, Q4_K, Q6_K, Q8_0).
bool uses_q8_activations(gguf::TensorType type);

// Scalar definition of what the fast path computes: for Q4_0, Q4_1, Q4_K and Q8_0 weights,
//   y[r] = sum over blocks b of  d_w(b) * d_x(b) * sum_j q_w(j) * q_x(j)  [+ m_w(b) * s_x(b)]
// with x quantized by quantize_activations_q8_ref, Q4_0 read as d*q + m (q in 0..15, m = -8d)
// and each 32-element Q4_K sub-block as d = d_super*scale, m = -dmin*min; for Q6_K each
// 16-element half contributes d * scale * d_x * sum((q - 32) * q_x); the same as matvec_ref
// for other types. Accumulated in double.
void matvec_q8_ref(const WeightView& w, const float* x, float* y);
void matmul_q8_ref(const WeightView& w, const float* x, std::size_t n, float* y);

// Quantizes n floats (a multiple of 32) block by block: d = max|x|/127, q = x * (1/d) clamped
// to [-127, 127] and rounded to nearest, ties to even (0 where d = 0), s = d * sum(q). q, d and
// s receive n, n/32 and n/32 values. The SIMD version is bit-identical to the scalar _ref.
void quantize_activations_q8(const float* x, std::size_t n, int8_t* q, float* d, float* s);
void quantize_activations_q8_ref(const float* x, std::size_t n, int8_t* q, float* d, float* s);

}  // namespace squat::kernels
