// Scalar references of ops.h, and the kernels that stay scalar.
#include "kernels/ops.h"

#include <cmath>
#include <limits>
#include <numbers>

namespace squat::kernels {

void rmsnorm_ref(const float* x, const float* weight, float* out, std::size_t n, float eps) {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
  const float scale = float(1.0 / std::sqrt(sum / double(n) + double(eps)));
  for (std::size_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void llama3_rope_inv_freq(float* inv_freq, std::size_t head_dim, float theta,
                          const Llama3RopeScaling* scaling) {
  for (std::size_t i = 0; i < head_dim / 2; ++i) {
    double f = std::pow(double(theta), -double(2 * i) / double(head_dim));
    if (scaling) {
      const double old_len = scaling->original_context_length;
      const double low = scaling->low_freq_factor, high = scaling->high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > old_len / low) {
        f /= scaling->factor;
      } else if (wavelen >= old_len / high) {
        const double s = (old_len / wavelen - low) / (high - low);
        f = (1.0 - s) * f / scaling->factor + s * f;
      }
    }
    inv_freq[i] = float(f);
  }
}

void softmax_ref(float* x, std::size_t n) {
  float max = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) max = std::fmax(max, x[i]);
  if (max == -std::numeric_limits<float>::infinity()) {
    for (std::size_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (std::size_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu_ref(const float* gate, const float* up, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_ref(float* acc, const float* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) acc[i] += x[i];
}

float dot_ref(const float* a, const float* b, std::size_t n) {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += double(a[i]) * double(b[i]);
  return float(sum);
}

void axpy_ref(float a, const float* x, float* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace squat::kernels
