// squat/rope.h, the engine's one RoPE: worked examples, the table path (rope_cos_sin +
// rope_apply) equal to rope_rotate bit for bit, cos/sin within one float rounding of the exact
// angle's (long double) at positions to 2^20, and rotations that compose (R_a R_b = R_(a+b)).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "squat/rope.h"

namespace squat {
namespace {

std::vector<float> frequencies(std::size_t head_dim, double theta) {
  std::vector<float> f(head_dim / 2);
  for (std::size_t i = 0; i < f.size(); ++i) {
    f[i] = float(std::pow(theta, -double(2 * i) / double(head_dim)));
  }
  return f;
}

TEST(Rope, WorkedExamples) {
  const float inv_freq[2] = {1.0f, 0.5f};
  float normal[4] = {1, 0, 0, 1};
  rope_rotate(normal, 4, 1, inv_freq, RopeLayout::Normal);  // (0,1) by 1 rad, (2,3) by 0.5 rad
  EXPECT_NEAR(normal[0], 0.54030231f, 1e-7f);
  EXPECT_NEAR(normal[1], 0.84147098f, 1e-7f);
  EXPECT_NEAR(normal[2], -0.47942554f, 1e-7f);
  EXPECT_NEAR(normal[3], 0.87758256f, 1e-7f);
  float neox[4] = {1, 0, 0, 1};
  rope_rotate(neox, 4, 1, inv_freq, RopeLayout::Neox);  // (0,2) by 1 rad, (1,3) by 0.5 rad
  EXPECT_NEAR(neox[0], 0.54030231f, 1e-7f);
  EXPECT_NEAR(neox[2], 0.84147098f, 1e-7f);
  EXPECT_NEAR(neox[1], -0.47942554f, 1e-7f);
  EXPECT_NEAR(neox[3], 0.87758256f, 1e-7f);
  float same[4] = {0.25f, -1, 2, 3};
  rope_rotate(same, 4, 0, inv_freq, RopeLayout::Normal);
  EXPECT_EQ(std::vector<float>(same, same + 4), (std::vector<float>{0.25f, -1, 2, 3}));
}

TEST(Rope, TablePathEqualsRotateBitForBitAndKeepsTheNorm) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<float> f = frequencies(64, 10000.0);
  for (RopeLayout layout : {RopeLayout::Normal, RopeLayout::Neox}) {
    for (long long pos : {0LL, 1LL, 17LL, 4095LL, 32767LL, 100000LL}) {
      std::vector<float> a(64), cs(64);
      for (float& x : a) x = normal(rng);
      std::vector<float> b = a;
      double norm0 = 0.0, norm1 = 0.0;
      for (float x : a) norm0 += double(x) * double(x);
      rope_rotate(a.data(), 64, pos, f.data(), layout);
      rope_cos_sin(pos, f.data(), 32, cs.data(), cs.data() + 32);
      rope_apply(b.data(), 64, cs.data(), cs.data() + 32, layout);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), 64 * sizeof(float)), 0) << "position " << pos;
      for (float x : a) norm1 += double(x) * double(x);
      EXPECT_NEAR(norm1 / norm0, 1.0, 1e-6) << "position " << pos;
    }
  }
}

// Each cos/sin is the float nearest the exact value of position * inv_freq[i]: within one float
// ulp (5.96e-8 below 1) of the long double computation, at every position up to 2^20. The
// angle rounded to float first (float(p) * inv_freq) is off by up to 2e-3 rad at 32K.
TEST(Rope, CosSinAreTheExactAnglesRoundedOnce) {
  const std::vector<float> f = frequencies(128, 1000000.0);
  std::vector<float> c(64), s(64);
  for (long long pos : {1LL, 1000LL, 8191LL, 30000LL, 32767LL, 1LL << 20}) {
    rope_cos_sin(pos, f.data(), 64, c.data(), s.data());
    for (std::size_t i = 0; i < 64; ++i) {
      const long double angle = (long double)pos * (long double)f[i];
      EXPECT_LE(std::fabs(double(c[i]) - double(std::cos(angle))), 6e-8)
          << "position " << pos << " pair " << i;
      EXPECT_LE(std::fabs(double(s[i]) - double(std::sin(angle))), 6e-8)
          << "position " << pos << " pair " << i;
    }
  }
}

// What the fused decode kernel relies on: rotating by b0 and then by j is rotating by b0 + j,
// to float rounding, for block starts up to 30K.
TEST(Rope, RotationsComposeAtLargePositions) {
  const std::vector<float> f = frequencies(64, 10000.0);
  std::vector<float> cb(32), sb(32), cj(32), sj(32), c(32), s(32);
  double worst = 0.0;
  for (long long b0 : {1024LL, 8192LL, 30016LL}) {
    rope_cos_sin(b0, f.data(), 32, cb.data(), sb.data());
    for (long long j = 0; j < 64; ++j) {
      rope_cos_sin(j, f.data(), 32, cj.data(), sj.data());
      rope_cos_sin(b0 + j, f.data(), 32, c.data(), s.data());
      for (std::size_t i = 0; i < 32; ++i) {
        const double cc = double(cb[i]) * cj[i] - double(sb[i]) * sj[i];
        const double ss = double(sb[i]) * cj[i] + double(cb[i]) * sj[i];
        worst = std::max({worst, std::fabs(cc - c[i]), std::fabs(ss - s[i])});
      }
    }
  }
  EXPECT_LT(worst, 2e-7);
}

}  // namespace
}  // namespace squat
