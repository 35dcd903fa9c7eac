#include "squat/rope.h"

#include <cmath>

namespace squat {

namespace {

void pair_cos_sin(long long position, float inv_freq, float& c, float& s) {
  const double angle = double(position) * double(inv_freq);
  c = float(std::cos(angle));
  s = float(std::sin(angle));
}

void rotate_pair(float* x, std::size_t a, std::size_t b, float c, float s) {
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
  for (std::size_t i = 0; i < half; ++i) {
    if (layout == RopeLayout::Normal) {
      rotate_pair(x, 2 * i, 2 * i + 1, cos[i], sin[i]);
    } else {
      rotate_pair(x, i, i + half, cos[i], sin[i]);
    }
  }
}

void rope_rotate(float* x, std::size_t head_dim, long long position, const float* inv_freq,
                 RopeLayout layout) {
  const std::size_t half = head_dim / 2;
  for (std::size_t i = 0; i < half; ++i) {
    float c = 0.0f, s = 0.0f;
    pair_cos_sin(position, inv_freq[i], c, s);
    if (layout == RopeLayout::Normal) {
      rotate_pair(x, 2 * i, 2 * i + 1, c, s);
    } else {
      rotate_pair(x, i, i + half, c, s);
    }
  }
}

}  // namespace squat
