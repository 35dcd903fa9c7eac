// Group quantization and bit packing against worked examples and direct bounds.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "kvcache/simd.h"
#include "squat/kv_quant.h"

using namespace squat::kv;

namespace {

std::vector<float> random_vec(std::size_t n, uint64_t seed, float lo = -3.0f, float hi = 5.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

}  // namespace

TEST(KvPack, RoundTripsEveryBitWidth) {
  std::mt19937_64 rng(1);
  for (int bits : {1, 2, 3, 4, 5, 6, 7, 8}) {
    for (std::size_t n = 1; n <= 70; ++n) {
      std::vector<uint8_t> codes(n), back(n);
      for (auto& c : codes) c = uint8_t(rng() % (1u << bits));
      std::vector<uint8_t> packed(packed_bytes(n, bits));
      EXPECT_EQ(packed.size(), (n * std::size_t(bits) + 7) / 8);
      pack_codes(codes.data(), n, bits, packed.data());
      unpack_codes(packed.data(), n, bits, back.data());
      EXPECT_EQ(codes, back) << "bits " << bits << " n " << n;
    }
  }
}

TEST(KvPack, SimdUnpackMatchesScalar) {
  std::mt19937_64 rng(2);
  for (int bits : {2, 4, 8}) {
    for (std::size_t n = 1; n <= 300; n += (n < 70 ? 1 : 37)) {
      std::vector<uint8_t> codes(n), back(n);
      for (auto& c : codes) c = uint8_t(rng() % (1u << bits));
      // Exactly sized heap buffer: reading past it would be caught by the sanitizer build.
      std::vector<uint8_t> packed(packed_bytes(n, bits));
      pack_codes(codes.data(), n, bits, packed.data());
      std::vector<float> out(n, -1.0f);
      squat::kv::simd::unpack_f32(packed.data(), n, bits, out.data());
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(out[i], float(codes[i])) << "bits " << bits << " n " << n << " i " << i;
      }
    }
  }
}

TEST(KvPack, LayoutIsLowBitsFirst) {
  const uint8_t codes2[4] = {1, 2, 3, 0};
  uint8_t b = 0;
  pack_codes(codes2, 4, 2, &b);
  EXPECT_EQ(b, 0x39);  // 00 11 10 01
  const uint8_t codes4[2] = {0xA, 0x3};
  pack_codes(codes4, 2, 4, &b);
  EXPECT_EQ(b, 0x3A);
  // 3 bits: 8 codes in 3 bytes, the third and sixth straddling two. The codes 5,1,7,2,0,6,3,4
  // low bit first are the bit stream 101 100 111 010 000 011 110 001, so byte 0 holds bits
  // 0-7 = 1,0,1,1,0,0,1,1 (0xCD), byte 1 bits 8-15 = 1,0,1,0,0,0,0,0 (0x05), byte 2 bits
  // 16-23 = 1,1,1,1,0,0,0,1 (0x8F), each byte's bit 0 first.
  const uint8_t codes3[8] = {5, 1, 7, 2, 0, 6, 3, 4};
  uint8_t b3[3];
  pack_codes(codes3, 8, 3, b3);
  EXPECT_EQ(b3[0], 0xCD);
  EXPECT_EQ(b3[1], 0x05);
  EXPECT_EQ(b3[2], 0x8F);
  uint8_t back[8];
  unpack_codes(b3, 8, 3, back);
  EXPECT_EQ(std::vector<uint8_t>(back, back + 8), std::vector<uint8_t>(codes3, codes3 + 8));
}

TEST(KvQuant, WorkedExample) {
  const float x[4] = {0.0f, 0.4f, 1.6f, 3.0f};
  uint8_t codes[4];
  float scale, mn;
  quantize_group(x, 4, 1, 2, ParamType::F32, codes, &scale, &mn);
  EXPECT_EQ(scale, 1.0f);
  EXPECT_EQ(mn, 0.0f);
  EXPECT_EQ(codes[0], 0);
  EXPECT_EQ(codes[1], 0);
  EXPECT_EQ(codes[2], 2);
  EXPECT_EQ(codes[3], 3);
  // Strided access: every other element.
  const float y[8] = {-1.0f, 99.0f, 0.0f, 99.0f, 14.0f, 99.0f, 7.0f, 99.0f};
  quantize_group(y, 4, 2, 4, ParamType::F32, codes, &scale, &mn);
  EXPECT_EQ(mn, -1.0f);
  EXPECT_EQ(scale, 1.0f);
  EXPECT_EQ(codes[0], 0);
  EXPECT_EQ(codes[1], 1);
  EXPECT_EQ(codes[2], 15);
  EXPECT_EQ(codes[3], 8);
}

TEST(KvQuant, ErrorWithinHalfStep) {
  for (ParamType p : {ParamType::F32, ParamType::F16}) {
    for (int bits : {2, 4, 8}) {
      for (uint64_t seed = 0; seed < 50; ++seed) {
        const std::size_t n = 1 + seed % 64;
        std::vector<float> x = random_vec(n, seed * 7 + uint64_t(bits));
        std::vector<uint8_t> codes(n);
        float scale, mn;
        quantize_group(x.data(), n, 1, bits, p, codes.data(), &scale, &mn);
        double lo = x[0], hi = x[0];
        for (float v : x) lo = std::min<double>(lo, v), hi = std::max<double>(hi, v);
        if (p == ParamType::F32) {
          EXPECT_FLOAT_EQ(scale, float((hi - lo) / ((1 << bits) - 1)));
          EXPECT_EQ(mn, float(lo));
        } else {
          EXPECT_EQ(squat::fp16_to_float(squat::float_to_fp16(scale)), scale);
          EXPECT_EQ(squat::fp16_to_float(squat::float_to_fp16(mn)), mn);
        }
        for (std::size_t i = 0; i < n; ++i) {
          EXPECT_LT(codes[i], 1u << bits);
          const double xhat = double(codes[i]) * scale + mn;
          // A constant group (n == 1 here) stores its value as the min: fp16 rounding only.
          const double tol = scale == 0.0f ? (p == ParamType::F16 ? std::fabs(x[i]) / 2048 : 0.0)
                                           : 0.5 * scale * (1 + 1e-5) + 1e-6;
          EXPECT_LE(std::fabs(xhat - x[i]), tol) << "bits " << bits << " seed " << seed;
        }
      }
    }
  }
}

TEST(KvQuant, ScaleZeroGroup) {
  const float x[5] = {1.5f, 1.5f, 1.5f, 1.5f, 1.5f};
  uint8_t codes[5] = {9, 9, 9, 9, 9};
  float scale = -1, mn = -1;
  for (ParamType p : {ParamType::F32, ParamType::F16}) {
    quantize_group(x, 5, 1, 2, p, codes, &scale, &mn);
    EXPECT_EQ(scale, 0.0f);
    EXPECT_EQ(mn, 1.5f);
    for (uint8_t c : codes) EXPECT_EQ(c, 0);
  }
  // A whole chunk of a constant channel dequantizes to the constant.
  std::vector<float> k(32 * 4, -2.25f);
  QuantizedChunk q =
      quantize_chunk(k.data(), 32, 4, 2, 32, GroupLayout::PerChannel, ParamType::F16);
  std::vector<float> back(k.size());
  dequantize_chunk(q, back.data());
  EXPECT_EQ(back, k);
}

TEST(KvQuant, ChunkLayoutsMatchGroupDefinition) {
  const std::size_t n = 64, d = 16;
  std::vector<float> x = random_vec(n * d, 3);
  for (GroupLayout layout : {GroupLayout::PerChannel, GroupLayout::PerToken}) {
    const int G = layout == GroupLayout::PerChannel ? 32 : 8;
    QuantizedChunk q = quantize_chunk(x.data(), n, d, 4, G, layout, ParamType::F32);
    EXPECT_EQ(q.n_groups(), n * d / std::size_t(G));
    EXPECT_EQ(q.storage_bytes(), q.n_groups() * (std::size_t(G) * 4 / 8 + 8));
    std::vector<float> back(n * d);
    dequantize_chunk(q, back.data());
    // Codes, scale and min of every group equal quantize_group on that group alone.
    for (std::size_t g = 0; g < q.n_groups(); ++g) {
      std::vector<uint8_t> codes(static_cast<std::size_t>(G));
      float sc, mn;
      const bool pc = layout == GroupLayout::PerChannel;
      const std::size_t t0 = pc ? (g / d) * std::size_t(G) : g / (d / std::size_t(G));
      const std::size_t c0 = pc ? g % d : (g % (d / std::size_t(G))) * std::size_t(G);
      quantize_group(x.data() + t0 * d + c0, std::size_t(G), pc ? d : 1, 4, ParamType::F32,
                     codes.data(), &sc, &mn);
      EXPECT_EQ(q.scale[g], sc);
      EXPECT_EQ(q.min[g], mn);
      for (std::size_t i = 0; i < std::size_t(G); ++i) {
        EXPECT_EQ(pc ? q.code(t0 + i, c0) : q.code(t0, c0 + i), codes[i]);
      }
    }
    // Each group's min is the min over its members (per-channel: G tokens of one channel).
    for (std::size_t g = 0; g < q.n_groups(); ++g) {
      float mn = INFINITY;
      for (int i = 0; i < G; ++i) {
        std::size_t t, c;
        if (layout == GroupLayout::PerChannel) {
          t = (g / d) * std::size_t(G) + std::size_t(i);
          c = g % d;
        } else {
          t = g / (d / std::size_t(G));
          c = (g % (d / std::size_t(G))) * std::size_t(G) + std::size_t(i);
        }
        mn = std::min(mn, x[t * d + c]);
      }
      EXPECT_EQ(q.min[g], mn);
    }
    for (std::size_t i = 0; i < n * d; ++i) EXPECT_NEAR(back[i], x[i], 8.0 / 15 / 2 + 1e-5);
  }
}

TEST(KvQuant, EightBitIsClose) {
  const std::size_t n = 32, d = 64;
  std::vector<float> x = random_vec(n * d, 11);
  QuantizedChunk q = quantize_chunk(x.data(), n, d, 8, 32, GroupLayout::PerChannel, ParamType::F16);
  std::vector<float> back(n * d);
  dequantize_chunk(q, back.data());
  for (std::size_t i = 0; i < n * d; ++i) EXPECT_NEAR(back[i], x[i], 8.0 / 255 / 2 * 1.01);
}

TEST(KvQuant, RejectsBadParameters) {
  std::vector<float> x(64 * 8, 1.0f);
  auto usage = [&](auto&& fn) {
    try {
      fn();
      ADD_FAILURE() << "expected an error";
    } catch (const squat::Error& e) {
      EXPECT_EQ(e.exit_status(), 2) << e.what();
    }
  };
  usage([&] { quantize_chunk(x.data(), 64, 8, 3, 32, GroupLayout::PerChannel, ParamType::F16); });
  usage([&] { quantize_chunk(x.data(), 40, 8, 2, 32, GroupLayout::PerChannel, ParamType::F16); });
  usage([&] { quantize_chunk(x.data(), 64, 8, 2, 3, GroupLayout::PerToken, ParamType::F16); });
}

TEST(KvQuant, NonFiniteInputNeverCrashes) {
  std::vector<float> x = random_vec(32 * 8, 9);
  x[17] = NAN;
  x[40] = INFINITY;
  // fp16 params: a clear runtime error.
  EXPECT_THROW(quantize_chunk(x.data(), 32, 8, 2, 32, GroupLayout::PerChannel, ParamType::F16),
               squat::Error);
  EXPECT_THROW(quantize_chunk(x.data(), 32, 8, 2, 8, GroupLayout::PerToken, ParamType::F16),
               squat::Error);
  // fp32 params: no error, codes stay in range (the sanitizer build checks the conversions).
  for (GroupLayout layout : {GroupLayout::PerChannel, GroupLayout::PerToken}) {
    QuantizedChunk q =
        quantize_chunk(x.data(), 32, 8, 2, 8 * (layout == GroupLayout::PerChannel ? 4 : 1), layout,
                       ParamType::F32);
    for (std::size_t t = 0; t < 32; ++t)
      for (std::size_t c = 0; c < 8; ++c) EXPECT_LT(q.code(t, c), 4);
  }
}
