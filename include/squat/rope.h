// Rotary position embedding (RoPE): the engine's one definition of the rotation angles and of
// the rotation itself. The model's queries, post-RoPE keys, the cache's per-position tables and
// the fused decode kernel's block tables all take their cos/sin from rope_cos_sin.
#pragma once

#include <cstddef>

namespace squat {

// The rotated pairs: (2i, 2i + 1) (Llama-style GGUFs, GGML_ROPE_TYPE_NORMAL) or
// (i, i + head_dim/2) (Qwen2, GPT-NeoX).
enum class RopeLayout { Normal, Neox };

// cos and sin of pair i's angle position * inv_freq[i], i < half (inv_freq already holds any
// frequency scaling). The angle and its cos/sin are computed in double (the product of a
// position below 2^29 and a float frequency is exact in double) and rounded once to float, so
// each entry is within one float rounding of the exact value at every position, and rotations
// compose: R_a R_b equals R_(a+b) to float rounding. (An angle rounded to float first, as
// float(p) * inv_freq, is off by up to p * 6e-8 rad, 2e-3 rad at 32K positions: the fused
// decode kernel's R_b0 R_j then drifted from the per-position rotation.)
void rope_cos_sin(long long position, const float* inv_freq, std::size_t half, float* cos,
                  float* sin);

// Rotates one head vector in place with its position's cos/sin (half = head_dim/2 entries
// each): pair (a, b) becomes (a cos - b sin, a sin + b cos).
void rope_apply(float* x, std::size_t head_dim, const float* cos, const float* sin,
                RopeLayout layout);

// rope_cos_sin + rope_apply for one head vector (no scratch memory).
void rope_rotate(float* x, std::size_t head_dim, long long position, const float* inv_freq,
                 RopeLayout layout);

}  // namespace squat
