#include "kernels/dequant.h"

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

}  // namespace squat::kernels
