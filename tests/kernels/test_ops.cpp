// ops.h kernels: worked examples, and fast kernels against their scalar references.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/ops.h"
#include "simd_targets.h"

namespace squat::kernels {
namespace {

const std::size_t kSizes[] = {1, 2, 7, 15, 16, 17, 31, 33, 64, 100, 576, 1000, 4099};

std::vector<float> random_vector(std::size_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

TEST(Ops, RmsNormWorkedExample) {
  const float x[2] = {3.0f, 4.0f}, w[2] = {1.0f, 2.0f};
  float out[2], out_ref[2];
  rmsnorm(x, w, out, 2, 0.0f);  // rms = sqrt(12.5)
  rmsnorm_ref(x, w, out_ref, 2, 0.0f);
  EXPECT_NEAR(out[0], 0.84852814f, 1e-6f);
  EXPECT_NEAR(out[1], 2.26274170f, 1e-6f);
  EXPECT_NEAR(out_ref[0], 0.84852814f, 1e-6f);
  EXPECT_NEAR(out_ref[1], 2.26274170f, 1e-6f);
}

TEST(Ops, RmsNormMatchesReferenceAndAliases) {
  for_each_simd_target([&] {
    std::mt19937 rng(1);
    for (std::size_t n : kSizes) {
      const auto x = random_vector(n, rng, 3.0f), w = random_vector(n, rng);
      std::vector<float> out(n), ref(n);
      rmsnorm(x.data(), w.data(), out.data(), n, 1e-5f);
      rmsnorm_ref(x.data(), w.data(), ref.data(), n, 1e-5f);
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_NEAR(out[i], ref[i], 1e-5f * std::fabs(ref[i]) + 1e-6f);
      std::vector<float> inplace = x;
      rmsnorm(inplace.data(), w.data(), inplace.data(), n, 1e-5f);
      EXPECT_EQ(inplace, out);
    }
    const std::vector<float> zeros(8, 0.0f), ones(8, 1.0f);
    std::vector<float> out(8, 1.0f);
    rmsnorm(zeros.data(), ones.data(), out.data(), 8, 1e-6f);
    EXPECT_EQ(out, zeros);  // eps keeps the zero vector finite
  });
}

TEST(Ops, InvFreqPlainAndLlama3Scaled) {
  std::vector<float> f(2);
  llama3_rope_inv_freq(f.data(), 4, 10000.0f);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[1], 0.01f);  // 10000^(-2/4)

  // Llama 3.1: theta 500000, factor 8, low 1, high 4, original context 8192, head_dim 128.
  std::vector<float> g(64);
  const Llama3RopeScaling scaling;
  llama3_rope_inv_freq(g.data(), 128, 500000.0f, &scaling);
  EXPECT_FLOAT_EQ(g[0], 1.0f);  // wavelength 2*pi < 2048: kept
  // i = 32: f = 500000^-0.5 = 1.41421356e-3, wavelength 4442.88 lies in [2048, 8192]:
  // s = (8192/4442.883 - 1) / 3 = 0.2812826, f' = f * ((1 - s)/8 + s) = 5.248462e-4.
  EXPECT_NEAR(g[32], 5.248462e-4f, 1e-9f);
  // i = 63: f = 500000^(-126/128) = 2.4551408e-6, wavelength far beyond 8192: f / 8.
  EXPECT_NEAR(g[63], 3.0689260e-7f, 1e-12f);
}

TEST(Ops, SoftmaxWorkedExamples) {
  for_each_simd_target([&] {
    float x[3] = {1, 2, 3};
    softmax(x, 3);
    EXPECT_NEAR(x[0], 0.09003057f, 1e-7f);
    EXPECT_NEAR(x[1], 0.24472847f, 1e-7f);
    EXPECT_NEAR(x[2], 0.66524096f, 1e-7f);
    const float inf = std::numeric_limits<float>::infinity();
    float masked[2] = {0.0f, -inf};
    softmax(masked, 2);
    EXPECT_EQ(masked[0], 1.0f);
    EXPECT_EQ(masked[1], 0.0f);
    float big[2] = {1000.0f, 1000.0f};  // no overflow: the max is subtracted first
    softmax(big, 2);
    EXPECT_EQ(big[0], 0.5f);
    EXPECT_EQ(big[1], 0.5f);
    std::vector<float> all_masked(20, -inf);
    softmax(all_masked.data(), 20);
    EXPECT_EQ(all_masked, std::vector<float>(20, 0.0f));
  });
}

TEST(Ops, SoftmaxMatchesReference) {
  for_each_simd_target([&] {
    std::mt19937 rng(3);
    for (std::size_t n : kSizes) {
      auto x = random_vector(n, rng, 10.0f);
      if (n > 3) x[n / 2] = -std::numeric_limits<float>::infinity();
      auto ref = x;
      softmax(x.data(), n);
      softmax_ref(ref.data(), n);
      double sum = 0;
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(x[i], ref[i], 2e-6f * ref[i] + 1e-7f) << n << " " << i;
        sum += x[i];
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  });
}

TEST(Ops, SwigluWorkedExampleAndReference) {
  for_each_simd_target([&] {
    const float gate[3] = {0.0f, 1.0f, -100.0f}, up[3] = {5.0f, 2.0f, 3.0f};
    float out[3];
    swiglu(gate, up, out, 3);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_NEAR(out[1], 1.46211716f, 1e-6f);  // 2 / (1 + e^-1)
    EXPECT_NEAR(out[2], 0.0f, 1e-30f);
    std::mt19937 rng(4);
    for (std::size_t n : kSizes) {
      const auto g = random_vector(n, rng, 5.0f), u = random_vector(n, rng);
      std::vector<float> fast(n), ref(n);
      swiglu(g.data(), u.data(), fast.data(), n);
      swiglu_ref(g.data(), u.data(), ref.data(), n);
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_NEAR(fast[i], ref[i], 1e-6f * std::fabs(ref[i]) + 1e-7f);
    }
  });
}

TEST(Ops, AddDotAxpyMatchReferences) {
  for_each_simd_target([&] {
    std::mt19937 rng(5);
    const float a[3] = {1, 2, 3}, b[3] = {4, -5, 6};
    EXPECT_EQ(dot(a, b, 3), 12.0f);
    EXPECT_EQ(dot(a, b, 0), 0.0f);
    for (std::size_t n : kSizes) {
      const auto x = random_vector(n, rng), y0 = random_vector(n, rng);
      double mag = 0;
      for (std::size_t i = 0; i < n; ++i) mag += std::fabs(double(x[i]) * y0[i]);
      EXPECT_NEAR(dot(x.data(), y0.data(), n), dot_ref(x.data(), y0.data(), n),
                  1.2e-7 * double(n) * mag + 1e-6);
      auto acc = y0, acc_ref = y0;
      add(acc.data(), x.data(), n);
      add_ref(acc_ref.data(), x.data(), n);
      EXPECT_EQ(acc, acc_ref);
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], y0[i] + x[i]);
      auto ax = y0, ax_ref = y0;
      axpy(-0.75f, x.data(), ax.data(), n);
      axpy_ref(-0.75f, x.data(), ax_ref.data(), n);
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_NEAR(ax[i], ax_ref[i], 1e-6f * (std::fabs(ax_ref[i]) + 1.0f));
    }
  });
}

}  // namespace
}  // namespace squat::kernels
