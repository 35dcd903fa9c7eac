// IEEE half and bfloat16 conversions, exact in both directions (round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

namespace squat {

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf/nan
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);
    // Subnormal half: value = mantissa * 2^-24.
    float value = float(mantissa) * (1.0f / 16777216.0f);
    return sign ? -value : value;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t float_to_fp16(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits >= 0x7f800000u) {  // inf or nan
    return uint16_t(sign | 0x7c00u | (abs_bits > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs_bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs_bits < 0x38800000u) {
    // Result is subnormal (or zero) in half: value / 2^-24 rounded to nearest even.
    const float scaled = bits_to_float(abs_bits) * 16777216.0f;
    // Adding and subtracting 2^23 rounds to nearest even integer in float arithmetic.
    const float rounded = (scaled + 8388608.0f) - 8388608.0f;
    return uint16_t(sign | uint16_t(rounded));
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits, nearest even.
  uint32_t value = abs_bits - 0x38000000u;  // exponent bias 127 -> 15
  const uint32_t round_bit = 0x1000u, sticky = 0xfffu;
  uint32_t result = value >> 13;
  if ((value & round_bit) && ((value & sticky) || (result & 1u))) ++result;
  return uint16_t(sign | result);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);  // keep nan
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

}  // namespace squat
