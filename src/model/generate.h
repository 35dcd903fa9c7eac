// The generation loop of one sequence, shared by `squat run`, `squat chat` and the pass-key
// evaluator. Batches of sequences (the server's scheduler, the GSM8K evaluator) step through
// model/batch_decode.h instead; stop strings for all of them are model/stop_filter.h.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"
#include "tokenizer/tokenizer.h"

namespace squat {

struct GenerationStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  int decode_evals = 0;       // single-token forward passes
  double prompt_seconds = 0;  // prompt processing
  double decode_seconds = 0;  // all single-token forward passes
  bool stopped_at_eog = false;
  bool context_full = false;  // ended because the context could hold no more tokens

  double prompt_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Feeds `prompt` at the context's next positions, then samples up to `max_new_tokens`,
// stopping at an end-of-generation token (not fed, not reported), when `on_token` returns
// false, or when the context is full (stats.context_full). Tokens are fed back one at a time; the
// last sampled token is not fed.
GenerationStats generate(InferenceContext& context, const Tokenizer& tokenizer,
                         std::span<const int32_t> prompt, int max_new_tokens, Sampler& sampler,
                         const std::function<bool(int32_t)>& on_token);

}  // namespace squat
