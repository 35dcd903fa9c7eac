#include "model/generate.h"

#include <chrono>

#include "core/error.h"

namespace squat {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
}  // namespace

double GenerationStats::prompt_tokens_per_second() const {
  return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0.0;
}

double GenerationStats::decode_tokens_per_second() const {
  return decode_seconds > 0 ? decode_evals / decode_seconds : 0.0;
}

GenerationStats generate(InferenceContext& context, const Tokenizer& tokenizer,
                         std::span<const int32_t> prompt, int max_new_tokens, Sampler& sampler,
                         const std::function<bool(int32_t)>& on_token) {
  GenerationStats stats;
  if (prompt.empty()) fail("the prompt is empty after tokenization: nothing to continue from");
  const int vocab = int(context.model().config().vocab_size);
  stats.prompt_tokens = int(prompt.size());
  sampler.observe(prompt);  // the repetition penalties count the prompt's tokens too
  auto start = Clock::now();
  const float* logits = context.eval(prompt);
  stats.prompt_seconds = seconds_since(start);

  for (int i = 0; i < max_new_tokens; ++i) {
    const int32_t token = sampler.sample(logits, vocab);
    if (tokenizer.is_eog(token)) {
      stats.stopped_at_eog = true;
      break;
    }
    ++stats.generated_tokens;
    if (!on_token(token) || i + 1 == max_new_tokens) break;
    if (context.n_past() >= context.max_tokens()) {  // context full: stop cleanly
      stats.context_full = true;
      break;
    }
    start = Clock::now();
    logits = context.eval(std::span<const int32_t>(&token, 1));
    stats.decode_seconds += seconds_since(start);
    ++stats.decode_evals;
  }
  return stats;
}

}  // namespace squat
