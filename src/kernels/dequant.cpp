#include "kernels/dequant.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "gguf/types.h"

namespace squat::kernels {

namespace {
#include "kernels/dequant-inl.h"  // IWYU pragma: keep
}  // namespace

bool dequant_supported(gguf::TensorType type) {
  using gguf::TensorType;
  switch (type) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16:
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q8_0:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
      return true;
    default:
      return false;
  }
}

void dequantize_row(gguf::TensorType type, const void* src, float* dst, std::size_t n) {
  if (dq::dequantize(type, static_cast<const uint8_t*>(src), dst, n)) return;
  const gguf::TypeTraits* t = gguf::type_traits(uint32_t(type));
  fail("cannot dequantize tensor type {} ({}): not supported", t ? t->name : "unknown",
       uint32_t(type));
}

namespace {

bool half_finite(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return (h & 0x7c00u) != 0x7c00u;  // exponent all ones: Inf or NaN
}

}  // namespace

bool weights_finite(gguf::TensorType type, const void* src, std::size_t n) {
  using gguf::TensorType;
  const auto* bytes = static_cast<const uint8_t*>(src);
  const gguf::TypeTraits& t = gguf::traits(type);
  const std::size_t blocks = n / t.block_size;
  // Offsets of the fp16 scale (and minimum) fields inside one block, per ggml's block layouts.
  std::size_t offsets[2] = {0, 0};
  std::size_t count = 1;
  switch (type) {
    case TensorType::F32:
      for (std::size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, bytes + 4 * i, 4);
        if (!std::isfinite(v)) return false;
      }
      return true;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        if (!half_finite(bytes + 2 * i)) return false;
      }
      return true;
    case TensorType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, bytes + 2 * i, 2);
        if ((b & 0x7f80u) == 0x7f80u) return false;
      }
      return true;
    case TensorType::Q4_1:
    case TensorType::Q5_1:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
      offsets[1] = 2;  // d, then m (or dmin)
      count = 2;
      break;
    case TensorType::Q6_K:
      offsets[0] = 208;  // d after the codes and sub-block scales
      break;
    default:  // Q4_0, Q5_0, Q8_0: d first
      break;
  }
  for (std::size_t b = 0; b < blocks; ++b) {
    const uint8_t* block = bytes + b * t.block_bytes;
    for (std::size_t k = 0; k < count; ++k) {
      if (!half_finite(block + offsets[k])) return false;
    }
  }
  return true;
}

}  // namespace squat::kernels
