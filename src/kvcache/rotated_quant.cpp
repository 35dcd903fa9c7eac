#include "kvcache/rotated_quant.h"

#include <cmath>
#include <random>

#include "core/error.h"
#include "squat/kvcache.h"

namespace squat::kv {

RotatedQuantizer::RotatedQuantizer(int dim, int bits, uint64_t seed)
    : dim_(dim), bits_(bits), seed_(seed) {
  if (dim < 4 || dim > 4096 || (dim & (dim - 1)) != 0) {
    fail_usage("rotated quantizer: dim must be a power of two from 4 to 4096, got {}", dim);
  }
  if (bits < 1 || bits > 8) fail_usage("rotated quantizer: bits must be 1 to 8, got {}", bits);
  // Signs from std::mt19937_64, whose output the C++ standard fixes: the same seed gives the
  // same rotation on every platform (a saved cache records the seed).
  std::mt19937_64 rng(seed);
  signs_.resize(std::size_t(dim));
  for (int i = 0; i < dim; i += 64) {
    const uint64_t word = rng();
    for (int j = 0; j < 64 && i + j < dim; ++j) {
      signs_[std::size_t(i + j)] = (word >> j) & 1 ? -1.0f : 1.0f;
    }
  }
  codebook_ = rotated_coordinate_codebook(dim, bits);
  const double inv = 1.0 / std::sqrt(double(dim));
  for (double l : codebook_.levels) levels_.push_back(float(l * inv));
}

void RotatedQuantizer::rotate(float* x) const {
  for (int i = 0; i < dim_; ++i) x[i] *= signs_[std::size_t(i)];
  hadamard_transform(x, dim_);
}

void RotatedQuantizer::unrotate(float* x) const {
  hadamard_transform(x, dim_);  // H is symmetric and orthonormal: its own inverse
  for (int i = 0; i < dim_; ++i) x[i] *= signs_[std::size_t(i)];
}

float RotatedQuantizer::quantize(const float* x, uint8_t* codes, float* scratch) const {
  double sq = 0.0;
  for (int i = 0; i < dim_; ++i) sq += double(x[i]) * double(x[i]);
  const double norm = std::sqrt(sq);
  for (int i = 0; i < dim_; ++i) scratch[i] = x[i];
  rotate(scratch);
  const double to_unit_variance = norm > 0.0 ? std::sqrt(double(dim_)) / norm : 0.0;
  for (int i = 0; i < dim_; ++i) {
    codes[i] = uint8_t(codebook_.encode(double(scratch[i]) * to_unit_variance));
  }
  return float(norm);
}

void RotatedQuantizer::dequantize_rotated(const uint8_t* codes, float norm, float* out) const {
  for (int i = 0; i < dim_; ++i) out[i] = norm * levels_[codes[i]];
}

void RotatedQuantizer::dequantize(const uint8_t* codes, float norm, float* out) const {
  dequantize_rotated(codes, norm, out);
  unrotate(out);
}

}  // namespace squat::kv
