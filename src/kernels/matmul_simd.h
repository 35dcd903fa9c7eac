// Per-target SIMD pieces behind matvec/matmul (matmul_simd.cpp), called by matmul.cpp after it
// has split rows over threads and prepared activations and scratch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gguf/types.h"

namespace squat::kernels::detail {

// x quantized row by row with quantize_activations_q8: row i has q + i*cols, d + i*nb and
// s + i*nbp; s is zero in [nb, nbp) so sums over it can run in whole vectors of 8.
struct Q8Rows {
  const int8_t* q;
  const float* d;
  const float* s;
  std::size_t cols;
  std::size_t nb;   // cols / 32
  std::size_t nbp;  // nb rounded up to a multiple of 8
};

inline std::size_t padded_blocks(std::size_t nb) { return (nb + 7) / 8 * 8; }

// x rows per slice that one weight tile sweeps (keeps the slice's int8 codes within L2).
inline std::size_t q8_x_chunk(std::size_t cols) {
  const std::size_t rows = 256 * 1024 / (cols + 8) / 4 * 4;
  return rows > 4 ? rows : 4;
}

// From this many x rows on, Q4_0, Q4_1, Q4_K and Q6_K weights go through the prompt GEMM
// (8-row interleaved tiles, decoded once per slice of x rows).
constexpr std::size_t kR8MinXRows = 8;

// Scratch of the per-row path (QuantRows), in rows of nbp floats (one float per 32-element
// block) for a register tile of kW weight rows by kX x rows.
struct QuantRowsScratch {
  static constexpr std::size_t kW = 4, kX = 4;
  static constexpr std::size_t dw = 0;                // kW rows: weight block scales
  static constexpr std::size_t mw = dw + kW;          // kW rows: weight block offsets
  static constexpr std::size_t scale = mw + kW;       // kW * kX rows: weight x activation scales
  static constexpr std::size_t pair_dw = scale + kW * kX;  // AVX-512 pair path: 2 x 16 rows
  static constexpr std::size_t pair_mw = pair_dw + 32;     // and 2 x 2 rows of offsets
  static constexpr std::size_t rows = pair_mw + 4;
};

// Scratch of the prompt GEMM (R8Rows): one decoded 8-row tile, in floats per 32-element block,
// then Q6_K's per-word x sums (cols / 4 int32 per x row of a slice).
struct R8TileScratch {
  static constexpr std::size_t codes = 0;  // 256 code bytes = 64 floats
  static constexpr std::size_t d = 64;     // 8 row scales
  static constexpr std::size_t m = d + 8;  // 8 row offsets; Q6_K: 16 half-block scales
  static constexpr std::size_t per_block = m + 16;
};

// Scratch floats q8_rows needs per calling thread: the larger of its two paths.
inline std::size_t q8_rows_scratch_floats(std::size_t nb, std::size_t nbp, std::size_t cols) {
  const std::size_t gemm = R8TileScratch::per_block * nb + cols / 4 * q8_x_chunk(cols);
  const std::size_t per_row = QuantRowsScratch::rows * nbp;
  return gemm > per_row ? gemm : per_row;
}

// Weight rows [r0, r1) of a type whose cpu_traits (weight_kernels.h) has q8_activations,
// against n quantized x rows: y[i*ldy + r]. Another type throws squat::Error.
// scratch: at least q8_rows_scratch_floats(nb, nbp, cols) floats.
void q8_rows(gguf::TensorType type, const uint8_t* w, std::size_t row_bytes, std::size_t r0,
             std::size_t r1, const Q8Rows& x, std::size_t n, float* y, std::size_t ldy,
             float* scratch);

// nrows float weight rows (stride w_stride floats) against n x rows of cols floats:
// y[i*ldy + r] = dot(w row r, x row i).
void float_rows(const float* w, std::size_t w_stride, std::size_t nrows, const float* x,
                std::size_t n, std::size_t cols, float* y, std::size_t ldy);

// F16 weight rows [r0, r1) against one x vector: y[r] (decode, fused conversion).
void f16_rows_vec(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t r1,
                  const float* x, std::size_t cols, float* y);

// Keeps Highway off its AVX3_DL target on CPUs without both AVX-512 VNNI and AVX-VNNI: the
// 1.0.3 target string lets the compiler emit either. Call before the first dispatch (cheap).
void guard_simd_targets();

// SIMD quantize_activations_q8 (bit-identical to quantize_activations_q8_ref).
void quantize_q8(const float* x, std::size_t n, int8_t* q, float* d, float* s);

// dequantize_row compiled for the best SIMD target; `type` must be supported.
void dequantize_row_fast(gguf::TensorType type, const uint8_t* src, float* dst, std::size_t n);

// count fp16 values to float.
void f16_to_f32(const uint8_t* src, float* dst, std::size_t count);

}  // namespace squat::kernels::detail
