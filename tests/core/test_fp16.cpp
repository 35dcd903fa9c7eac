#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "core/fp16.h"

namespace squat {
namespace {

TEST(Fp16, KnownEncodings) {
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(1e6f), 0x7c00);
  EXPECT_EQ(float_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(float_to_fp16(5.9604645e-8f), 0x0001);  // smallest subnormal
  EXPECT_FLOAT_EQ(fp16_to_float(0x3555), 0.333251953125f);
  EXPECT_FLOAT_EQ(fp16_to_float(0x0001), 5.9604645e-8f);
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(fp16_to_float(0xfc00)));
}

TEST(Fp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t half = uint16_t(h);
    const float f = fp16_to_float(half);
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_fp16(f), half) << std::hex << h;
  }
}

TEST(Fp16, RoundsToNearestEven) {
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_fp16(1.0f + 1.0f / 2048), 0x3c00);
  EXPECT_EQ(float_to_fp16(1.0f + 3.0f / 2048), 0x3c02);
  EXPECT_EQ(float_to_fp16(1.0f + 1.0f / 2048 + 1.0f / 65536), 0x3c01);
}

TEST(Bf16, RoundTripAndRounding) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_FLOAT_EQ(bf16_to_float(0x4049), 3.140625f);
  EXPECT_EQ(float_to_bf16(bf16_to_float(0xc2f7)), 0xc2f7);
}

}  // namespace
}  // namespace squat
