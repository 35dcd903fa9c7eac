// GGUF tensor (weight) types and their block layouts. Numbers are those of the GGUF format
// (ggml's `ggml_type` enum, see ggml/docs/gguf.md); a block holds `block_size` elements in
// `block_bytes` bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace squat::gguf {

enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

// Bytes of the 256-element k-quant super-blocks, named for the kernels that index them at
// compile time; the traits table below holds the same numbers.
inline constexpr std::size_t kQ4_KBlockBytes = 144;  // fp16 d, dmin; 12 scale/min bytes; 128 nibble bytes
inline constexpr std::size_t kQ5_KBlockBytes = 176;
inline constexpr std::size_t kQ6_KBlockBytes = 210;  // 128 low-nibble, 64 high-bit, 16 scale bytes; fp16 d

struct TypeTraits {
  const char* name;
  std::size_t block_size;   // elements per block
  std::size_t block_bytes;  // bytes per block
  bool supported;           // we can dequantize it
};

// Traits of a type number read from a file; nullptr when the number is not a known type.
const TypeTraits* type_traits(uint32_t type);
inline const TypeTraits& traits(TensorType type) { return *type_traits(uint32_t(type)); }

// Bytes of one row of `n` elements (n must be a multiple of the block size).
inline std::size_t row_bytes(TensorType type, std::size_t n) {
  const TypeTraits& t = traits(type);
  return n / t.block_size * t.block_bytes;
}

}  // namespace squat::gguf
