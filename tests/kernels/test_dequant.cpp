// Worked examples: one block per type, bytes chosen by hand, expected values from the format's
// definition (literals, or a closed form written out here independently of the kernel).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "kernels/dequant.h"

namespace squat::kernels {
namespace {

using gguf::TensorType;

std::vector<float> decode(TensorType type, const std::vector<uint8_t>& bytes, std::size_t n) {
  EXPECT_EQ(bytes.size(), gguf::row_bytes(type, n));
  std::vector<float> out(n, -12345.0f);
  dequantize_row(type, bytes.data(), out.data(), n);
  return out;
}

void put16(std::vector<uint8_t>& b, std::size_t at, uint16_t v) {
  b[at] = uint8_t(v & 0xff);
  b[at + 1] = uint8_t(v >> 8);
}

TEST(Dequant, F32) {
  const float values[3] = {1.5f, -2.25f, 0.0f};
  std::vector<uint8_t> b(12);
  std::memcpy(b.data(), values, 12);
  EXPECT_EQ(decode(TensorType::F32, b, 3), (std::vector<float>{1.5f, -2.25f, 0.0f}));
}

TEST(Dequant, F16) {
  std::vector<uint8_t> b(10);
  put16(b, 0, 0x3c00);  // 1
  put16(b, 2, 0xc000);  // -2
  put16(b, 4, 0x3555);  // 0x155/1024 * 2^-2 + 2^-2
  put16(b, 6, 0x7bff);  // largest finite half
  put16(b, 8, 0x0001);  // smallest subnormal, 2^-24
  EXPECT_EQ(decode(TensorType::F16, b, 5),
            (std::vector<float>{1.0f, -2.0f, 0.333251953125f, 65504.0f, 5.9604644775390625e-08f}));
}

TEST(Dequant, BF16) {
  std::vector<uint8_t> b(6);
  put16(b, 0, 0x3f80);  // 1
  put16(b, 2, 0xc040);  // -3
  put16(b, 4, 0x4049);  // 3.140625
  EXPECT_EQ(decode(TensorType::BF16, b, 3), (std::vector<float>{1.0f, -3.0f, 3.140625f}));
}

// Nibble byte j holds j (low) and 15 - j (high) for the 32-element block types.
void fill_nibbles(std::vector<uint8_t>& b, std::size_t at) {
  for (int j = 0; j < 16; ++j) b[at + j] = uint8_t(j | (15 - j) << 4);
}

TEST(Dequant, Q4_0) {
  std::vector<uint8_t> b(18);
  put16(b, 0, 0x4000);  // d = 2
  fill_nibbles(b, 2);
  // x = d * (q - 8); elements 0..15 are q = j, 16..31 are q = 15 - j.
  const std::vector<float> expected = {-16, -14, -12, -10, -8, -6, -4,  -2,  0,   2,  4,
                                       6,   8,   10,  12,  14, 14, 12,  10,  8,   6,  4,
                                       2,   0,   -2,  -4,  -6, -8, -10, -12, -14, -16};
  EXPECT_EQ(decode(TensorType::Q4_0, b, 32), expected);
}

TEST(Dequant, Q4_1) {
  std::vector<uint8_t> b(20);
  put16(b, 0, 0x3800);  // d = 0.5
  put16(b, 2, 0xbc00);  // m = -1
  fill_nibbles(b, 4);
  const std::vector<float> expected = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f, 2.0f,  2.5f,
                                       3.0f,  3.5f,  4.0f, 4.5f, 5.0f, 5.5f, 6.0f,  6.5f,
                                       6.5f,  6.0f,  5.5f, 5.0f, 4.5f, 4.0f, 3.5f,  3.0f,
                                       2.5f,  2.0f,  1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
  EXPECT_EQ(decode(TensorType::Q4_1, b, 32), expected);
}

// qh = 0x00ff5555: bit 4 set for even j < 16 and for elements 16..23.
TEST(Dequant, Q5_0) {
  std::vector<uint8_t> b(22);
  put16(b, 0, 0x3c00);  // d = 1
  b[2] = 0x55, b[3] = 0x55, b[4] = 0xff, b[5] = 0x00;
  fill_nibbles(b, 6);
  // x = q - 16; j < 16: q = j + 16 (even j) or j; j >= 16: q = 31 - j + 16 (j < 24) or 31 - j.
  const std::vector<float> expected = {0,  -15, 2,  -13, 4,   -11, 6,   -9,  8,   -7, 10,
                                       -5, 12,  -3, 14,  -1,  15,  14,  13,  12,  11, 10,
                                       9,  8,   -9, -10, -11, -12, -13, -14, -15, -16};
  EXPECT_EQ(decode(TensorType::Q5_0, b, 32), expected);
}

TEST(Dequant, Q5_1) {
  std::vector<uint8_t> b(24);
  put16(b, 0, 0x3800);  // d = 0.5
  put16(b, 2, 0x3c00);  // m = 1
  b[4] = 0x55, b[5] = 0x55, b[6] = 0xff, b[7] = 0x00;
  fill_nibbles(b, 8);
  // x = q/2 + 1 with q as in Q5_0 (before subtracting 16).
  const std::vector<float> expected = {9.0f,  1.5f,  10.0f, 2.5f,  11.0f, 3.5f,  12.0f, 4.5f,
                                       13.0f, 5.5f,  14.0f, 6.5f,  15.0f, 7.5f,  16.0f, 8.5f,
                                       16.5f, 16.0f, 15.5f, 15.0f, 14.5f, 14.0f, 13.5f, 13.0f,
                                       4.5f,  4.0f,  3.5f,  3.0f,  2.5f,  2.0f,  1.5f,  1.0f};
  EXPECT_EQ(decode(TensorType::Q5_1, b, 32), expected);
}

TEST(Dequant, Q8_0) {
  std::vector<uint8_t> b(34);
  put16(b, 0, 0x3400);  // d = 0.25
  for (int j = 0; j < 32; ++j) b[2 + j] = uint8_t(int8_t(4 * j - 64));
  b[2 + 30] = uint8_t(int8_t(127));
  b[2 + 31] = uint8_t(int8_t(-128));
  std::vector<float> expected;
  for (int j = 0; j < 30; ++j) expected.push_back(float(j - 16));  // 0.25 * (4j - 64)
  expected.push_back(31.75f);
  expected.push_back(-32.0f);
  EXPECT_EQ(decode(TensorType::Q8_0, b, 32), expected);
}

// Eight 6-bit scales and mins, packed by hand into the K-quants' 12 bytes:
//   bytes 0..3: scale[j] | (scale[j+4] >> 4) << 6,  bytes 4..7: min[j] | (min[j+4] >> 4) << 6,
//   bytes 8..11: (scale[j+4] & 15) | (min[j+4] & 15) << 4.
const int kScales[8] = {1, 2, 3, 63, 17, 33, 48, 5};
const int kMins[8] = {0, 7, 62, 4, 19, 40, 1, 63};
const uint8_t kPackedScales[12] = {0x41, 0x82, 0xc3, 0x3f, 0x40, 0x87,
                                   0x3e, 0xc4, 0x31, 0x81, 0x10, 0xf5};

// Nibble pattern of the 128 quant bytes: byte l of each 32-byte group = (l%16) | (15-l%16)<<4.
int low_nibble(int l) { return l % 16; }
int high_nibble(int l) { return 15 - l % 16; }

TEST(Dequant, Q4_K) {
  std::vector<uint8_t> b(144);
  put16(b, 0, 0x3800);  // d = 0.5
  put16(b, 2, 0x3400);  // dmin = 0.25
  std::memcpy(b.data() + 4, kPackedScales, 12);
  for (int i = 0; i < 128; ++i) b[16 + i] = uint8_t(low_nibble(i % 32) | high_nibble(i % 32) << 4);
  const std::vector<float> y = decode(TensorType::Q4_K, b, 256);
  // Sub-block s (32 elements) uses the low nibbles of group s/2 when s is even, else the high.
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int q = s % 2 == 0 ? low_nibble(l) : high_nibble(l);
      EXPECT_EQ(y[32 * s + l], 0.5f * float(kScales[s] * q) - 0.25f * float(kMins[s]))
          << "s=" << s << " l=" << l;
    }
  }
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[32], 13.25f);       // s=1, q=15: 0.5*2*15 - 0.25*7
  EXPECT_EQ(y[192 + 1], 23.75f);  // s=6, q=1: 0.5*48 - 0.25*1
  EXPECT_EQ(y[224 + 2], 16.75f);  // s=7, q=13: 0.5*5*13 - 0.25*63
  EXPECT_EQ(y[96 + 5], 314.0f);   // s=3, q=10: 0.5*63*10 - 0.25*4
}

TEST(Dequant, Q5_K) {
  std::vector<uint8_t> b(176);
  put16(b, 0, 0x3800);  // d = 0.5
  put16(b, 2, 0x3400);  // dmin = 0.25
  std::memcpy(b.data() + 4, kPackedScales, 12);
  // qh[l]: bit s is bit 4 of element l of sub-block s.
  auto qh = [](int l) { return l < 8 ? 0xff : (l % 2 ? 0xaa : 0x00); };
  for (int l = 0; l < 32; ++l) b[16 + l] = uint8_t(qh(l));
  for (int i = 0; i < 128; ++i) b[48 + i] = uint8_t(low_nibble(i % 32) | high_nibble(i % 32) << 4);
  const std::vector<float> y = decode(TensorType::Q5_K, b, 256);
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int q = (s % 2 == 0 ? low_nibble(l) : high_nibble(l)) + 16 * ((qh(l) >> s) & 1);
      EXPECT_EQ(y[32 * s + l], 0.5f * float(kScales[s] * q) - 0.25f * float(kMins[s]))
          << "s=" << s << " l=" << l;
    }
  }
  EXPECT_EQ(y[32], 29.25f);    // s=1, l=0: q = 15 + 16; 0.5*2*31 - 0.25*7
  EXPECT_EQ(y[201], 215.75f);  // s=6, l=9: q = 9 (bit 6 of 0xaa clear); 0.5*48*9 - 0.25
  EXPECT_EQ(y[233], 39.25f);   // s=7, l=9: q = 6 + 16; 0.5*5*22 - 0.25*63
}

TEST(Dequant, Q6_K) {
  std::vector<uint8_t> b(210);
  for (int i = 0; i < 128; ++i) b[i] = uint8_t(i % 16 | (i % 7) << 4);  // ql
  for (int i = 0; i < 64; ++i) b[128 + i] = uint8_t(i);                 // qh
  const int8_t scales[16] = {1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8};
  std::memcpy(b.data() + 192, scales, 16);
  put16(b, 208, 0x3800);  // d = 0.5
  const std::vector<float> y = decode(TensorType::Q6_K, b, 256);
  // Element e: half h = e/128, t = e%128, k = t/32, l = t%32; low 4 bits: nibble (k<2: low,
  // else high) of ql[64h + l + 32(k%2)]; high 2 bits: bits 2k..2k+1 of qh[32h + l];
  // scale index 8h + 2k + l/16; value d * scale * (q - 32).
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, t = e % 128, k = t / 32, l = t % 32;
    const int lb = 64 * h + l + 32 * (k % 2);
    const int lo = k < 2 ? lb % 16 : lb % 7;
    const int q = lo | (((32 * h + l) >> (2 * k)) & 3) << 4;
    EXPECT_EQ(y[e], 0.5f * float(scales[8 * h + 2 * k + l / 16] * (q - 32))) << "e=" << e;
  }
  EXPECT_EQ(y[0], -16.0f);    // q = 0, scale 1
  EXPECT_EQ(y[45], 29.0f);    // q = 13 | 3<<4 = 61, scale 2
  EXPECT_EQ(y[113], 64.0f);   // q = 0, scale -4
  EXPECT_EQ(y[200], 7.0f);    // q = 2 | 2<<4 = 34, scale 7
  EXPECT_EQ(y[255], 124.0f);  // q = 1, scale -8
}

TEST(Dequant, SeveralBlocksAdvance) {
  std::vector<uint8_t> b(40);
  put16(b, 0, 0x3c00);  // block 0: d = 1, m = 0, all q = 1
  put16(b, 2, 0x0000);
  for (int j = 0; j < 16; ++j) b[4 + j] = 0x11;
  put16(b, 20, 0x4000);  // block 1: d = 2, m = 3, all q = 0 except element 31 (q = 15)
  put16(b, 22, 0x4200);
  b[24 + 15] = 0xf0;
  const std::vector<float> y = decode(TensorType::Q4_1, b, 64);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 1.0f);
  for (int j = 32; j < 63; ++j) EXPECT_EQ(y[j], 3.0f);
  EXPECT_EQ(y[63], 33.0f);
}

TEST(Dequant, UnsupportedTypeThrows) {
  std::vector<uint8_t> b(84);
  std::vector<float> y(256);
  EXPECT_FALSE(dequant_supported(TensorType::Q2_K));
  EXPECT_THROW(dequantize_row(TensorType::Q2_K, b.data(), y.data(), 256), Error);
}

}  // namespace
}  // namespace squat::kernels

namespace squat::kernels {
namespace {

// Blocks built by hand: a finite block, then the same block with one fp16 field set to NaN
// (0x7e00) or Inf (0x7c00) at the offset the format gives it.
TEST(WeightsFinite, FindsNanOrInfInScalesAndElements) {
  using gguf::TensorType;
  struct Case {
    TensorType type;
    std::size_t bytes, field;
  };
  for (const Case c :
       {Case{TensorType::Q4_0, 18, 0}, Case{TensorType::Q4_1, 20, 2}, Case{TensorType::Q8_0, 34, 0},
        Case{TensorType::Q4_K, 144, 2}, Case{TensorType::Q6_K, 210, 208}}) {
    std::vector<uint8_t> block(2 * c.bytes, 0);  // two blocks of zeros: scales 0.0
    const std::size_t n = 2 * gguf::traits(c.type).block_size;
    EXPECT_TRUE(weights_finite(c.type, block.data(), n)) << gguf::traits(c.type).name;
    for (uint16_t bad : {uint16_t(0x7e00), uint16_t(0x7c00)}) {
      std::vector<uint8_t> broken = block;
      std::memcpy(&broken[c.bytes + c.field], &bad, 2);  // in the second block
      EXPECT_FALSE(weights_finite(c.type, broken.data(), n)) << gguf::traits(c.type).name;
    }
  }
  std::vector<float> plain{1.0f, -2.0f, 3.5f};
  EXPECT_TRUE(weights_finite(TensorType::F32, plain.data(), 3));
  plain[1] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(weights_finite(TensorType::F32, plain.data(), 3));
  const std::vector<uint16_t> halves{0x3c00, 0xfc00};
  EXPECT_TRUE(weights_finite(TensorType::F16, halves.data(), 1));
  EXPECT_FALSE(weights_finite(TensorType::F16, halves.data(), 2));
}

}  // namespace
}  // namespace squat::kernels
