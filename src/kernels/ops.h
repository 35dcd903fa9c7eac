// Element-wise and reduction kernels of the transformer forward pass. Each fast kernel (SIMD,
// picked at run time for the CPU) has a plain scalar `*_ref` beside it that tests compare with.
#pragma once

#include <cstddef>

namespace squat::kernels {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]. out may alias x.
void rmsnorm(const float* x, const float* weight, float* out, std::size_t n, float eps);
void rmsnorm_ref(const float* x, const float* weight, float* out, std::size_t n, float eps);

// Llama 3.1 long-context frequency scaling (rope_scaling "llama3" in the model config).
struct Llama3RopeScaling {
  float factor = 8.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  float original_context_length = 8192.0f;
};

// inv_freq[i] = theta^(-2i/head_dim) for i < head_dim/2, then, when `scaling` is given, the
// Llama 3.1 rule (apply_scaling in meta-llama/llama-models, models/llama3/reference_impl/
// model.py): wavelengths 2*pi/f shorter than original_context_length/high_freq_factor are kept,
// those longer than original_context_length/low_freq_factor are divided by factor, and those
// between are blended: s = (original_context_length/wavelen - low) / (high - low),
// f' = (1-s) * f/factor + s * f.
void llama3_rope_inv_freq(float* inv_freq, std::size_t head_dim, float theta,
                          const Llama3RopeScaling* scaling = nullptr);

// In place: x[i] = exp(x[i] - max) / sum. Entries of -inf give 0; if all are -inf, all give 0.
void softmax(float* x, std::size_t n);
void softmax_ref(float* x, std::size_t n);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void swiglu(const float* gate, const float* up, float* out, std::size_t n);
void swiglu_ref(const float* gate, const float* up, float* out, std::size_t n);

// acc += x
void add(float* acc, const float* x, std::size_t n);
void add_ref(float* acc, const float* x, std::size_t n);

float dot(const float* a, const float* b, std::size_t n);
float dot_ref(const float* a, const float* b, std::size_t n);  // double accumulation

// y += a * x
void axpy(float a, const float* x, float* y, std::size_t n);
void axpy_ref(float a, const float* x, float* y, std::size_t n);

}  // namespace squat::kernels
