// Scalar codebooks for rotated coordinates (issue 16's base quantizer). After a random rotation
// (sign flips and a Walsh-Hadamard transform) every coordinate of a head vector, scaled by
// sqrt(dim) / its norm, follows one known distribution, so a single Lloyd-Max codebook per bit
// width quantizes all of them without calibration (the idea of TurboQuant, Zandieh et al., ICLR
// 2026, arXiv 2504.19874; the codebooks here are computed by lloyd_max, not copied).
#pragma once

#include <functional>
#include <vector>

namespace squat::kv {

// A scalar quantizer: 2^bits levels in ascending order and the bounds between neighbouring
// levels (bounds[i] separates levels[i] and levels[i + 1]; bounds.size() == levels.size() - 1).
struct Codebook {
  std::vector<double> levels;
  std::vector<double> bounds;
  // The cell x falls in (so the index of the level nearest to x; x on a bound goes up).
  int encode(double x) const;
};

// Density, up to a constant factor, of one coordinate of a uniformly random unit vector in
// `dim` >= 2 dimensions multiplied by sqrt(dim), so that its variance is 1:
// (1 - x^2 / dim)^((dim - 3) / 2) on |x| < sqrt(dim), 0 outside. Uniform for dim 3; tends to
// the standard normal density as dim grows.
double rotated_coordinate_density(double x, int dim);

// A density up to a constant factor (non-negative), to be integrated over [lo, hi].
using Density = std::function<double(double)>;

// The Lloyd-Max quantizer with 2^bits levels (1 <= bits <= 8) of `density` on [lo, hi]: from
// equal-mass cells, each bound is set to the midpoint of its two levels and each level to the
// mean of its cell, alternately, until no level moves by more than `tol`. Cell masses and means
// come from cumulative integrals over `grid` equal intervals (trapezoids), interpolated
// linearly between grid points. fail_usage on a bad range, bits or a density of no mass.
Codebook lloyd_max(const Density& density, double lo, double hi, int bits, int grid = 1 << 16,
                   double tol = 1e-11);

// Mean squared error E[(x - level(x))^2] of `cb` for x drawn from `density` on [lo, hi]
// (normalised there), by the same cumulative integrals.
double codebook_mse(const Codebook& cb, const Density& density, double lo, double hi,
                    int grid = 1 << 16);

// lloyd_max of rotated_coordinate_density(., dim) on its support.
Codebook rotated_coordinate_codebook(int dim, int bits);

}  // namespace squat::kv
