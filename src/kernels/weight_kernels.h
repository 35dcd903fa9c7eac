// What the CPU does with each GGUF weight type, in one table (ggml keeps the same facts in its
// type_traits_cpu): which row kernel multiplies it and which activation format that kernel
// wants. matmul.cpp and matmul_simd.cpp read only this; block sizes and bytes are the file
// format's (gguf/types.h).
#pragma once

#include <cstdint>

#include "gguf/types.h"

namespace squat::kernels {

enum class RowKernel : uint8_t {
  kDequantTiles,  // rows dequantized to float tiles once, then float dots (any supported type)
  kF32,           // float rows read in place
  kF16,           // one x row: fused fp16 conversion; more: dequantized tiles
  // Integer block dots against activations quantized per block of 32 (quantize_activations_q8):
  kQ4_0,
  kQ4_1,
  kQ4_K,
  kQ6_K,
  kQ8_0,
};

struct CpuTypeTraits {
  RowKernel kernel;
  bool q8_activations;  // x is quantized to int8 blocks of 32 before the row kernel runs
  bool prompt_gemm;     // many x rows go through 8-row interleaved int8 tiles (x86)
};

constexpr CpuTypeTraits cpu_traits(gguf::TensorType type) {
  using gguf::TensorType;
  switch (type) {
    case TensorType::F32:
      return {RowKernel::kF32, false, false};
    case TensorType::F16:
      return {RowKernel::kF16, false, false};
    case TensorType::Q4_0:
      return {RowKernel::kQ4_0, true, true};
    case TensorType::Q4_1:
      return {RowKernel::kQ4_1, true, true};
    case TensorType::Q4_K:
      return {RowKernel::kQ4_K, true, true};
    case TensorType::Q6_K:
      return {RowKernel::kQ6_K, true, true};
    case TensorType::Q8_0:
      return {RowKernel::kQ8_0, true, false};
    default:  // BF16, Q5_0, Q5_1, Q5_K: dequantize_row decodes them (dequant_supported)
      return {RowKernel::kDequantTiles, false, false};
  }
}

}  // namespace squat::kernels
