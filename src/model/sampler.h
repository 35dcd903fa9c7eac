// Picks the next token from logits. In order: repetition penalties over the recent tokens, then
// greedy at temperature 0; else top-k, min-p, temperature, top-p (nucleus) and a seeded draw.
// The meanings follow llama.cpp's samplers of the same names. Buffers are reused between calls.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace squat {

struct SamplerParams {
  float temperature = 0.8f;
  int top_k = 40;       // 0 = whole vocabulary
  float top_p = 0.95f;  // 1 = no nucleus cut
  uint64_t seed = 0;
  // Keep only tokens whose probability is at least min_p times the most likely one's, measured
  // before temperature (llama.cpp's default order applies temperature last). 0 = off.
  float min_p = 0.0f;
  // Over the last `penalty_last_n` tokens seen (prompt and output): a token that occurs there has
  // its logit divided by repeat_penalty when positive, multiplied when negative (1 = off), then
  // lowered by presence_penalty once and by frequency_penalty per occurrence (0 = off).
  float repeat_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int penalty_last_n = 64;  // 0: no penalties
};

class Sampler {
 public:
  // Refuses out-of-range parameters, naming the command-line flag.
  explicit Sampler(const SamplerParams& params);

  // Records tokens the model has seen (the prompt) for the penalties; sample() records its own
  // picks.
  void observe(std::span<const int32_t> tokens);
  int32_t sample(const float* logits, int vocab_size);

  // Applies the repetition penalties for the recorded tokens to `logits` in place.
  void penalize(float* logits, int vocab_size);
  bool penalties_active() const;
  // A token never to sample (e.g. end-of-generation for --ignore-eos): its logit becomes -inf.
  void ban(int32_t token);

  // Index of the largest logit (the lowest index among equal maxima).
  static int32_t argmax(const float* logits, int vocab_size);

 private:
  void remember(int32_t token);

  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
  std::vector<int32_t> recent_;  // ring of the last penalty_last_n tokens
  std::size_t recent_next_ = 0;
  std::vector<int32_t> sorted_recent_;
  std::vector<float> penalized_;
  std::vector<int32_t> banned_;
};

}  // namespace squat
