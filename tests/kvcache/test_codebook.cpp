// Lloyd-Max codebooks (kvcache/codebook.h) against published optimal quantizers of the normal
// distribution, the closed form of the uniform one, and the optimality conditions checked by an
// integration of the test's own.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "kvcache/codebook.h"

namespace squat::kv {
namespace {

double normal_density(double x) { return std::exp(-0.5 * x * x); }

// Composite Simpson's rule over [a, b] with 2n intervals: the test's own integrator.
template <class F>
double simpson(F f, double a, double b, int n = 20000) {
  const double h = (b - a) / (2.0 * n);
  double s = f(a) + f(b);
  for (int i = 1; i < 2 * n; ++i) s += f(a + h * i) * (i % 2 == 1 ? 4.0 : 2.0);
  return s * h / 3.0;
}

// Every bound is the midpoint of its levels, every level the mean of its cell.
void expect_optimal(const Codebook& cb, const Density& f, double lo, double hi, double tol) {
  const std::size_t n = cb.levels.size();
  ASSERT_EQ(cb.bounds.size(), n - 1);
  for (std::size_t i = 0; i + 1 < n; ++i) {
    EXPECT_LT(cb.levels[i], cb.levels[i + 1]);
    EXPECT_NEAR(cb.bounds[i], 0.5 * (cb.levels[i] + cb.levels[i + 1]), 1e-12);
  }
  for (std::size_t i = 0; i < n; ++i) {
    const double a = i == 0 ? lo : cb.bounds[i - 1], b = i + 1 == n ? hi : cb.bounds[i];
    const double mass = simpson(f, a, b);
    const double mean = simpson([&](double x) { return x * f(x); }, a, b) / mass;
    EXPECT_NEAR(cb.levels[i], mean, tol) << "level " << i << " of " << n;
  }
}

TEST(Codebook, NormalQuantizersMatchMaxsTable) {
  // J. Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory 6(1), 1960, Table I
  // (outputs and mean squared errors of the optimal quantizers of N(0, 1), 4 decimals), and
  // the 1-bit case in closed form: +-sqrt(2/pi), error 1 - 2/pi.
  struct Row {
    int bits;
    std::vector<double> positive_levels;
    double mse;
  };
  const Row rows[] = {
      {1, {std::sqrt(2.0 / M_PI)}, 1.0 - 2.0 / M_PI},
      {2, {0.4528, 1.510}, 0.1175},
      {3, {0.2451, 0.7560, 1.344, 2.152}, 0.03454},
  };
  const double lo = -12.0, hi = 12.0;
  for (const Row& row : rows) {
    SCOPED_TRACE(row.bits);
    const Codebook cb = lloyd_max(normal_density, lo, hi, row.bits);
    const std::size_t n = cb.levels.size();
    ASSERT_EQ(n, std::size_t(1) << row.bits);
    for (std::size_t i = 0; i < n / 2; ++i) {
      EXPECT_NEAR(cb.levels[n / 2 + i], row.positive_levels[i], 6e-4);
      EXPECT_NEAR(cb.levels[n / 2 - 1 - i], -cb.levels[n / 2 + i], 1e-9);  // symmetric
    }
    EXPECT_NEAR(codebook_mse(cb, normal_density, lo, hi), row.mse, 6e-5);
    expect_optimal(cb, normal_density, lo, hi, 1e-6);
  }
  // More bits, less error (4 bits: Max's 0.009497).
  const Codebook four = lloyd_max(normal_density, lo, hi, 4);
  EXPECT_NEAR(codebook_mse(four, normal_density, lo, hi), 0.009497, 6e-6);
}

TEST(Codebook, UniformQuantizerIsTheClosedForm) {
  // In 3 dimensions a rotated coordinate is uniform on [-sqrt(3), sqrt(3)] (Archimedes): the
  // optimal quantizer has equal cells, levels at their centres, error width^2 / 12 = 1 / n^2.
  const double r = std::sqrt(3.0);
  for (int bits : {1, 2, 3}) {
    const Codebook cb = rotated_coordinate_codebook(3, bits);
    const std::size_t n = cb.levels.size();
    for (std::size_t i = 0; i < n; ++i) {
      EXPECT_NEAR(cb.levels[i], -r + (2.0 * double(i) + 1.0) * r / double(n), 1e-7);
    }
    EXPECT_NEAR(codebook_mse(
                    cb, [](double x) { return rotated_coordinate_density(x, 3); }, -r, r),
                1.0 / double(n * n), 1e-7);
  }
}

TEST(Codebook, RotatedCoordinatesHaveUnitVarianceAndApproachTheNormal) {
  for (int dim : {16, 64, 128}) {
    const double r = std::sqrt(double(dim));
    const auto f = [dim](double x) { return rotated_coordinate_density(x, dim); };
    const double var = simpson([&](double x) { return x * x * f(x); }, -r, r) / simpson(f, -r, r);
    EXPECT_NEAR(var, 1.0, 1e-6) << "dim " << dim;
    const Codebook cb = rotated_coordinate_codebook(dim, 2);
    expect_optimal(cb, f, -r, r, 1e-6);
  }
  // Lighter tails than the normal's at small dims: the outer levels sit further in.
  const Codebook small = rotated_coordinate_codebook(16, 2),
                 big = rotated_coordinate_codebook(4096, 2);
  EXPECT_LT(small.levels[3], big.levels[3] - 0.01);
  EXPECT_NEAR(big.levels[3], 1.510, 2e-3);
  EXPECT_NEAR(big.levels[2], 0.4528, 2e-3);
}

TEST(Codebook, EncodePicksTheNearestLevel) {
  const Codebook cb = rotated_coordinate_codebook(128, 3);
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1.5);
  for (int i = 0; i < 2000; ++i) {
    const double x = normal(rng);
    std::size_t best = 0;
    for (std::size_t j = 1; j < cb.levels.size(); ++j) {
      if (std::fabs(x - cb.levels[j]) < std::fabs(x - cb.levels[best])) best = j;
    }
    EXPECT_EQ(cb.encode(x), int(best)) << x;
  }
  EXPECT_EQ(cb.encode(-100.0), 0);
  EXPECT_EQ(cb.encode(100.0), int(cb.levels.size()) - 1);
}

TEST(Codebook, BadInputsAreErrors) {
  EXPECT_THROW(lloyd_max(normal_density, -1.0, 1.0, 0), squat::Error);
  EXPECT_THROW(lloyd_max(normal_density, -1.0, 1.0, 9), squat::Error);
  EXPECT_THROW(lloyd_max(normal_density, 1.0, 1.0, 2), squat::Error);
  EXPECT_THROW(lloyd_max(normal_density, -INFINITY, 1.0, 2), squat::Error);
  EXPECT_THROW(lloyd_max([](double) { return 0.0; }, -1.0, 1.0, 2), squat::Error);
  EXPECT_THROW(rotated_coordinate_density(0.0, 1), squat::Error);
}

}  // namespace
}  // namespace squat::kv
