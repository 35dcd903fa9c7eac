#include "kvcache/codebook.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>

#include "core/error.h"

namespace squat::kv {

namespace {

// Cumulative integrals of f, x f and x^2 f from lo to each of grid + 1 equally spaced points
// (trapezoids), read at any x in [lo, hi] by linear interpolation.
class Moments {
 public:
  Moments(const Density& f, double lo, double hi, int grid)
      : lo_(lo), h_((hi - lo) / grid), m_(std::size_t(grid) + 1) {
    double prev_x = lo, prev_f = f(lo);
    for (int k = 1; k <= grid; ++k) {
      const double x = lo + h_ * k, fx = f(x);
      const std::size_t i = std::size_t(k);
      const double a[3] = {prev_f, prev_f * prev_x, prev_f * prev_x * prev_x};
      const double b[3] = {fx, fx * x, fx * x * x};
      for (std::size_t p = 0; p < 3; ++p) m_[i][p] = m_[i - 1][p] + 0.5 * h_ * (a[p] + b[p]);
      prev_x = x;
      prev_f = fx;
    }
  }
  // Integral of x^p f from lo to x.
  double at(double x, int p) const {
    const double t = std::clamp((x - lo_) / h_, 0.0, double(m_.size() - 1));
    const std::size_t k = std::min(std::size_t(t), m_.size() - 2);
    const double w = t - double(k);
    return m_[k][std::size_t(p)] * (1.0 - w) + m_[k + 1][std::size_t(p)] * w;
  }
  double total(int p) const { return m_.back()[std::size_t(p)]; }
  // The x where the integral of f from lo reaches `mass` (bisection on the interpolated table).
  double quantile(double mass) const {
    double a = lo_, b = lo_ + h_ * double(m_.size() - 1);
    for (int it = 0; it < 200; ++it) {
      const double mid = 0.5 * (a + b);
      (at(mid, 0) < mass ? a : b) = mid;
    }
    return 0.5 * (a + b);
  }

 private:
  double lo_, h_;
  std::vector<std::array<double, 3>> m_;
};

void check_range(double lo, double hi, int grid) {
  if (!(lo < hi) || !std::isfinite(lo) || !std::isfinite(hi)) {
    fail_usage("codebook range must be finite with lo < hi, got [{}, {}]", lo, hi);
  }
  if (grid < 16) fail_usage("codebook grid must have at least 16 intervals, got {}", grid);
}

}  // namespace

int Codebook::encode(double x) const {
  return int(std::upper_bound(bounds.begin(), bounds.end(), x) - bounds.begin());
}

double rotated_coordinate_density(double x, int dim) {
  if (dim < 2) fail_usage("rotated_coordinate_density needs dim >= 2, got {}", dim);
  const double u = 1.0 - x * x / double(dim);
  if (u <= 0.0) return 0.0;
  return std::pow(u, 0.5 * double(dim - 3));
}

Codebook lloyd_max(const Density& density, double lo, double hi, int bits, int grid, double tol) {
  if (bits < 1 || bits > 8) fail_usage("codebook bits must be 1 to 8, got {}", bits);
  check_range(lo, hi, grid);
  const Moments m(density, lo, hi, grid);
  const double mass = m.total(0);
  if (!(mass > 0.0) || !std::isfinite(mass)) {
    fail_usage("codebook density has no mass on [{}, {}]", lo, hi);
  }
  const std::size_t n = std::size_t(1) << bits;
  Codebook cb;
  cb.levels.resize(n);
  cb.bounds.resize(n - 1);
  // Start: equal-mass cells, each level at its cell's median.
  for (std::size_t i = 0; i < n; ++i) cb.levels[i] = m.quantile(mass * (double(i) + 0.5) / n);
  for (int it = 0; it < 100000; ++it) {
    for (std::size_t i = 0; i + 1 < n; ++i) {
      cb.bounds[i] = 0.5 * (cb.levels[i] + cb.levels[i + 1]);
    }
    double moved = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const double a = i == 0 ? lo : cb.bounds[i - 1];
      const double b = i + 1 == n ? hi : cb.bounds[i];
      const double w = m.at(b, 0) - m.at(a, 0);
      if (w <= 0.0) continue;  // an empty cell keeps its level
      const double mean = (m.at(b, 1) - m.at(a, 1)) / w;
      moved = std::max(moved, std::fabs(mean - cb.levels[i]));
      cb.levels[i] = mean;
    }
    if (moved <= tol) break;
  }
  for (std::size_t i = 0; i + 1 < n; ++i) cb.bounds[i] = 0.5 * (cb.levels[i] + cb.levels[i + 1]);
  return cb;
}

double codebook_mse(const Codebook& cb, const Density& density, double lo, double hi, int grid) {
  check_range(lo, hi, grid);
  const Moments m(density, lo, hi, grid);
  const std::size_t n = cb.levels.size();
  double err = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double a = i == 0 ? lo : std::max(lo, cb.bounds[i - 1]);
    const double b = i + 1 == n ? hi : std::min(hi, cb.bounds[i]);
    if (b <= a) continue;
    const double l = cb.levels[i];
    const double m0 = m.at(b, 0) - m.at(a, 0), m1 = m.at(b, 1) - m.at(a, 1);
    const double m2 = m.at(b, 2) - m.at(a, 2);
    err += m2 - 2.0 * l * m1 + l * l * m0;
  }
  return err / m.total(0);
}

Codebook rotated_coordinate_codebook(int dim, int bits) {
  const double r = std::sqrt(double(dim));
  return lloyd_max([dim](double x) { return rotated_coordinate_density(x, dim); }, -r, r, bits);
}

}  // namespace squat::kv
