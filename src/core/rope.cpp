#include "squat/rope.h"

#include <cmath>

namespace squat {

namespace {

void pair_cos_sin(long long position, float inv_freq, float& c, float& s) {
  const double angle = double(position) * double(inv_freq);
  c = float(std::cos(angle));
  s = float(std::sin(angle));
}

// Rotates pair i of a head vector (its elements per layout) by the angle with cos c, sin s.
void rotate_pair(float* x, std::size_t i, std::size_t half, RopeLayout layout, float c, float s) {
  const std::size_t a = layout == RopeLayout::Normal ? 2 * i : i;
  const std::size_t b = layout == RopeLayout::Normal ? 2 * i + 1 : i + half;
  const float xa = x[a], xb = x[b];
  x[a] = xa * c - xb * s;
  x[b] = xa * s + xb * c;
}

}  // namespace

void rope_cos_sin(long long position, const float* inv_freq, std::size_t half, float* cos,
                  float* sin) {
  for (std::size_t i = 0; i < half; ++i) pair_cos_sin(position, inv_freq[i], cos[i], sin[i]);
}

void rope_apply(float* x, std::size_t head_dim, const float* cos, const float* sin,
                RopeLayout layout) {
  const std::size_t half = head_dim / 2;
  for (std::size_t i = 0; i < half; ++i) rotate_pair(x, i, half, layout, cos[i], sin[i]);
}

void rope_rotate(float* x, std::size_t head_dim, long long position, const float* inv_freq,
                 RopeLayout layout) {
  const std::size_t half = head_dim / 2;
  for (std::size_t i = 0; i < half; ++i) {
    float c = 0.0f, s = 0.0f;
    pair_cos_sin(position, inv_freq[i], c, s);
    rotate_pair(x, i, half, layout, c, s);
  }
}

}  // namespace squat
