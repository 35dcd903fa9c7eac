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
  if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) {
    fail_usage("--min-p must be in [0, 1], got {}", params.min_p);
  }
  if (!(params.repeat_penalty > 0.0f) || !std::isfinite(params.repeat_penalty)) {
    fail_usage("--repeat-penalty must be a finite number > 0, got {}", params.repeat_penalty);
  }
  // The OpenAI API's range for both penalties.
  if (!(params.presence_penalty >= -2.0f && params.presence_penalty <= 2.0f)) {
    fail_usage("--presence-penalty must be in [-2, 2], got {}", params.presence_penalty);
  }
  if (!(params.frequency_penalty >= -2.0f && params.frequency_penalty <= 2.0f)) {
    fail_usage("--frequency-penalty must be in [-2, 2], got {}", params.frequency_penalty);
  }
  if (params.penalty_last_n < 0) {
    fail_usage("--repeat-last-n must be >= 0, got {}", params.penalty_last_n);
  }
  if (penalties_active()) {
    recent_.reserve(std::size_t(params.penalty_last_n));
    sorted_recent_.reserve(std::size_t(params.penalty_last_n));
  }
}

bool Sampler::penalties_active() const {
  return params_.penalty_last_n > 0 &&
         (params_.repeat_penalty != 1.0f || params_.presence_penalty != 0.0f ||
          params_.frequency_penalty != 0.0f);
}

void Sampler::remember(int32_t token) {
  if (!penalties_active()) return;
  if (recent_.size() < std::size_t(params_.penalty_last_n)) {
    recent_.push_back(token);
  } else {
    recent_[recent_next_] = token;
    recent_next_ = (recent_next_ + 1) % recent_.size();
  }
}

void Sampler::observe(std::span<const int32_t> tokens) {
  for (int32_t t : tokens) remember(t);
}

void Sampler::penalize(float* logits, int vocab_size) {
  if (!penalties_active() || recent_.empty()) return;
  sorted_recent_.assign(recent_.begin(), recent_.end());
  std::sort(sorted_recent_.begin(), sorted_recent_.end());
  for (std::size_t i = 0; i < sorted_recent_.size();) {
    const int32_t token = sorted_recent_[i];
    std::size_t end = i;
    while (end < sorted_recent_.size() && sorted_recent_[end] == token) ++end;
    const float count = float(end - i);
    i = end;
    if (token < 0 || token >= vocab_size) continue;
    float& logit = logits[token];
    logit = logit > 0.0f ? logit / params_.repeat_penalty : logit * params_.repeat_penalty;
    logit -= params_.presence_penalty + count * params_.frequency_penalty;
  }
}

int32_t Sampler::argmax(const float* logits, int vocab_size) {
  return int32_t(std::max_element(logits, logits + vocab_size) - logits);
}

void Sampler::ban(int32_t token) { banned_.push_back(token); }

int32_t Sampler::sample(const float* logits, int vocab_size) {
  if ((penalties_active() && !recent_.empty()) || !banned_.empty()) {
    penalized_.assign(logits, logits + vocab_size);
    penalize(penalized_.data(), vocab_size);
    for (int32_t t : banned_) {
      if (t >= 0 && t < vocab_size) penalized_[std::size_t(t)] = -INFINITY;
    }
    logits = penalized_.data();
  }
  if (params_.temperature == 0.0f) {
    const int32_t token = argmax(logits, vocab_size);
    remember(token);
    return token;
  }

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

  const float max_logit = candidates_.front().first;
  // Min-p: p_i >= min_p * p_max  <=>  logit_i >= max_logit + log(min_p) (before temperature).
  if (params_.min_p > 0.0f) {
    const float floor = max_logit + std::log(params_.min_p);
    std::size_t kept = 1;
    while (kept < candidates_.size() && candidates_[kept].first >= floor) ++kept;
    candidates_.resize(kept);
  }

  // Softmax at the temperature over the kept candidates (sorted, largest first).
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
  int32_t token = candidates_.back().second;
  for (const auto& c : candidates_) {
    draw -= c.first;
    if (draw <= 0.0) {
      token = c.second;
      break;
    }
  }
  remember(token);
  return token;
}

}  // namespace squat
