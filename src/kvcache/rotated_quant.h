// The rotated base quantizer of one head vector (issue 16): a fixed random rotation
// R = H diag(s) (s: signs drawn from a seed, H: the normalized Walsh-Hadamard matrix), the
// vector's norm kept, and every coordinate of sqrt(d) R x / |x| quantized with the Lloyd-Max
// codebook of a rotated coordinate (kvcache/codebook.h). After the rotation every coordinate
// of a unit vector follows the same distribution whatever the input's outlier channels, which
// is what makes one fixed codebook near-optimal without calibration.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcache/codebook.h"

namespace squat::kv {

class RotatedQuantizer {
 public:
  // dim: a power of two (the Walsh-Hadamard transform's size), 4..4096; bits 1..8.
  // fail_usage naming the parameter otherwise.
  RotatedQuantizer(int dim, int bits, uint64_t seed);

  int dim() const { return dim_; }
  int bits() const { return bits_; }
  uint64_t seed() const { return seed_; }
  const Codebook& codebook() const { return codebook_; }

  // x <- R x, and its inverse x <- R^T x (dim floats, in place).
  void rotate(float* x) const;
  void unrotate(float* x) const;

  // codes[i] (one byte each, < 2^bits) of the rotated, normalized x; returns |x| (0 for a zero
  // vector, whose codes are then the levels nearest 0). scratch: dim floats.
  float quantize(const float* x, uint8_t* codes, float* scratch) const;
  // The reconstruction in the rotated basis, norm * level[code_i] / sqrt(dim) (attention can
  // rotate the query instead of every key), and in the original basis (R^T of that).
  void dequantize_rotated(const uint8_t* codes, float norm, float* out) const;
  void dequantize(const uint8_t* codes, float norm, float* out) const;

 private:
  int dim_, bits_;
  uint64_t seed_;
  std::vector<float> signs_;   // s, +-1
  std::vector<float> levels_;  // codebook levels / sqrt(dim), as floats
  Codebook codebook_;
};

}  // namespace squat::kv
