// Picks the next token from logits: greedy at temperature 0, else temperature, top-k and
// top-p (nucleus) filtering and a seeded draw. Buffers are reused between calls.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace squat {

struct SamplerParams {
  float temperature = 0.8f;
  int top_k = 40;       // 0 = whole vocabulary
  float top_p = 0.95f;  // 1 = no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);
  int32_t sample(const float* logits, int vocab_size);
  // Index of the largest logit (the lowest index among equal maxima).
  static int32_t argmax(const float* logits, int vocab_size);

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace squat
