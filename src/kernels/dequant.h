// Scalar dequantization of GGUF weight rows to float: the reference every fast kernel is
// checked against, and the generic path for weight types without a dedicated kernel.
#pragma once

#include <cstddef>

#include "gguf/types.h"

namespace squat::kernels {

// Decodes n elements (a multiple of the type's block size) of `type` stored at src into dst.
// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; any other type
// throws squat::Error.
void dequantize_row(gguf::TensorType type, const void* src, float* dst, std::size_t n);

// True when dequantize_row (and so matvec/matmul) handles `type`.
bool dequant_supported(gguf::TensorType type);

// True when every scale, minimum and plain element of n elements (a multiple of the block size)
// is finite. Reads only the fp16 block scales of quantized types (their codes are integers),
// so a whole model is checked at load at the cost of paging it in.
bool weights_finite(gguf::TensorType type, const void* src, std::size_t n);

}  // namespace squat::kernels
