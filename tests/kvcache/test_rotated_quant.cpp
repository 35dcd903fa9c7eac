// The rotated base quantizer (kvcache/rotated_quant.h): an exact, norm-preserving rotation, the
// reconstruction error the codebook's theory predicts for inputs whose direction is uniform,
// and a worked example for the spikiest input.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "kvcache/rotated_quant.h"

namespace squat::kv {
namespace {

double norm2(const std::vector<float>& x) {
  double s = 0.0;
  for (float v : x) s += double(v) * double(v);
  return s;
}

TEST(RotatedQuant, RotationIsOrthonormalAndSeeded) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int dim : {4, 64, 128}) {
    const RotatedQuantizer a(dim, 2, 7), b(dim, 2, 7), c(dim, 2, 8);
    std::vector<float> x(static_cast<std::size_t>(dim));
    for (float& v : x) v = normal(rng);
    std::vector<float> ra = x, rb = x, rc = x;
    a.rotate(ra.data());
    b.rotate(rb.data());
    c.rotate(rc.data());
    EXPECT_NEAR(norm2(ra), norm2(x), 1e-4 * norm2(x));
    EXPECT_EQ(ra, rb);  // same seed, same rotation
    if (dim >= 64) {
      EXPECT_NE(ra, rc);
    }
    a.unrotate(ra.data());
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(ra[i], x[i], 1e-5);
  }
}

TEST(RotatedQuant, ErrorOfRandomDirectionsIsTheCodebooksError) {
  // For Gaussian x, R x is Gaussian again, so x / |x| is uniform on the sphere whatever R is,
  // and E|x - x^|^2 / |x|^2 is exactly the codebook's error under the rotated-coordinate
  // density (codebook_mse), which lloyd_max computed by integration, not by sampling.
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int bits : {2, 3, 4}) {
    const int dim = 128;
    const RotatedQuantizer q(dim, bits, 11);
    const double r = std::sqrt(double(dim));
    const double expected = codebook_mse(
        q.codebook(), [dim](double x) { return rotated_coordinate_density(x, dim); }, -r, r);
    std::vector<float> x(dim), out(dim), scratch(dim);
    std::vector<uint8_t> codes(dim);
    double err = 0.0;
    const int n = 4000;
    for (int k = 0; k < n; ++k) {
      for (float& v : x) v = normal(rng);
      const float norm = q.quantize(x.data(), codes.data(), scratch.data());
      EXPECT_NEAR(norm, std::sqrt(norm2(x)), 1e-3 * norm);
      for (uint8_t code : codes) ASSERT_LT(code, 1 << bits);
      q.dequantize(codes.data(), norm, out.data());
      double e = 0.0;
      for (int i = 0; i < dim; ++i) e += double(out[i] - x[i]) * double(out[i] - x[i]);
      err += e / norm2(x);
    }
    // 4000 vectors of 128 coordinates: the sampling error of the mean is about 0.3%.
    EXPECT_NEAR(err / n, expected, 0.02 * expected) << bits << " bits";
  }
}

TEST(RotatedQuant, ASpikeSpreadsToEqualCoordinates) {
  // x = 10 e_3: H diag(s) maps it to +-10 / sqrt(d) in every coordinate, +-1 once scaled to
  // unit variance; 2 bits quantize 1 to the nearest level of Max's normal-like codebook
  // (1.51 at d = 4096), so every coordinate is off by the same amount and the reconstruction
  // keeps the spike's direction exactly.
  const int dim = 4096;
  const RotatedQuantizer q(dim, 2, 3);
  std::vector<float> x(dim, 0.0f), out(dim), scratch(dim);
  x[3] = 10.0f;
  std::vector<uint8_t> codes(dim);
  const float norm = q.quantize(x.data(), codes.data(), scratch.data());
  EXPECT_FLOAT_EQ(norm, 10.0f);
  const double top = q.codebook().levels[3];
  ASSERT_GT(top, 1.0);
  ASSERT_LT(top - 1.0, 1.0 - q.codebook().levels[2]);  // 1 is nearer the top level
  q.dequantize(codes.data(), norm, out.data());
  for (int i = 0; i < dim; ++i) {
    EXPECT_NEAR(out[i], i == 3 ? 10.0 * top : 0.0, 1e-3) << i;
  }
}

TEST(RotatedQuant, EightBitsAreNearlyExactAndBadShapesAreErrors) {
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const RotatedQuantizer q(64, 8, 5);
  std::vector<float> x(64), out(64), scratch(64);
  for (float& v : x) v = normal(rng);
  std::vector<uint8_t> codes(64);
  q.dequantize(codes.data(), q.quantize(x.data(), codes.data(), scratch.data()), out.data());
  double e = 0.0;
  for (int i = 0; i < 64; ++i) e += double(out[i] - x[i]) * double(out[i] - x[i]);
  EXPECT_LT(e / norm2(x), 1e-3);
  EXPECT_THROW(RotatedQuantizer(96, 2, 1), squat::Error);
  EXPECT_THROW(RotatedQuantizer(2, 2, 1), squat::Error);
  EXPECT_THROW(RotatedQuantizer(64, 0, 1), squat::Error);
  EXPECT_THROW(RotatedQuantizer(64, 9, 1), squat::Error);
}

}  // namespace
}  // namespace squat::kv
