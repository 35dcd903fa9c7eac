#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace squat {

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) {
  if (!(params.temperature >= 0.0f) || !std::isfinite(params.temperature)) {
    fail_usage("--temp must be a finite number >= 0, got {}", params.temperature);
  }
  if (params.top_k < 0) fail_usage("--top-k must be >= 0, got {}", params.top_k);
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    fail_usage("--top-p must be in (0, 1], got {}", params.top_p);
  }
}

int32_t Sampler::argmax(const float* logits, int vocab_size) {
  return int32_t(std::max_element(logits, logits + vocab_size) - logits);
}

int32_t Sampler::sample(const float* logits, int vocab_size) {
  if (params_.temperature == 0.0f) return argmax(logits, vocab_size);

  candidates_.resize(std::size_t(vocab_size));
  for (int i = 0; i < vocab_size; ++i) candidates_[std::size_t(i)] = {logits[i], int32_t(i)};
  std::size_t keep = candidates_.size();
  if (params_.top_k > 0) keep = std::min(keep, std::size_t(params_.top_k));
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  std::partial_sort(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(keep),
                    candidates_.end(), by_logit);
  candidates_.resize(keep);

  // Softmax at the temperature over the kept candidates (sorted, largest first).
  const float max_logit = candidates_.front().first;
  double total = 0.0;
  for (auto& c : candidates_) {
    c.first = std::exp((c.first - max_logit) / params_.temperature);
    total += c.first;
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  double cumulative = 0.0;
  std::size_t nucleus = candidates_.size();
  for (std::size_t i = 0; i < candidates_.size(); ++i) {
    cumulative += candidates_[i].first / total;
    if (cumulative >= params_.top_p) {
      nucleus = i + 1;
      break;
    }
  }
  candidates_.resize(nucleus);
  double nucleus_total = 0.0;
  for (const auto& c : candidates_) nucleus_total += c.first;

  std::uniform_real_distribution<double> uniform(0.0, nucleus_total);
  double draw = uniform(rng_);
  for (const auto& c : candidates_) {
    draw -= c.first;
    if (draw <= 0.0) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace squat
