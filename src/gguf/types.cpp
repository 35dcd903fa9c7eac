#include "gguf/types.h"

namespace squat::gguf {

// Block layouts from ggml's type table (ggml/src/ggml.c, type_traits): block size and bytes.
const TypeTraits* type_traits(uint32_t type) {
  static const TypeTraits f32{"F32", 1, 4, true}, f16{"F16", 1, 2, true}, bf16{"BF16", 1, 2, true},
      q4_0{"Q4_0", 32, 18, true}, q4_1{"Q4_1", 32, 20, true}, q5_0{"Q5_0", 32, 22, true},
      q5_1{"Q5_1", 32, 24, true}, q8_0{"Q8_0", 32, 34, true}, q8_1{"Q8_1", 32, 36, false},
      q2_k{"Q2_K", 256, 84, false}, q3_k{"Q3_K", 256, 110, false}, q4_k{"Q4_K", 256, kQ4_KBlockBytes, true},
      q5_k{"Q5_K", 256, kQ5_KBlockBytes, true}, q6_k{"Q6_K", 256, kQ6_KBlockBytes, true}, q8_k{"Q8_K", 256, 292, false};
  switch (TensorType(type)) {
    case TensorType::F32:
      return &f32;
    case TensorType::F16:
      return &f16;
    case TensorType::BF16:
      return &bf16;
    case TensorType::Q4_0:
      return &q4_0;
    case TensorType::Q4_1:
      return &q4_1;
    case TensorType::Q5_0:
      return &q5_0;
    case TensorType::Q5_1:
      return &q5_1;
    case TensorType::Q8_0:
      return &q8_0;
    case TensorType::Q8_1:
      return &q8_1;
    case TensorType::Q2_K:
      return &q2_k;
    case TensorType::Q3_K:
      return &q3_k;
    case TensorType::Q4_K:
      return &q4_k;
    case TensorType::Q5_K:
      return &q5_k;
    case TensorType::Q6_K:
      return &q6_k;
    case TensorType::Q8_K:
      return &q8_k;
  }
  return nullptr;
}

}  // namespace squat::gguf
