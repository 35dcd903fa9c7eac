// `squat quant --from-model`: runs the model over one prompt, captures every layer's keys and
// queries per KV head, and reports per layer how much KIVI and SQuat move the attention logits.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "apps/model_options.h"

namespace squat::apps {

// The errors `squat quant` reports for one quantized [n, d] key matrix: mean squared error per
// element and, with queries, the relative logit error ‖Q(K̂−K)ᵀ‖_F / ‖QKᵀ‖_F (in double).
struct KeyError {
  double mse = 0;
  double logit = 0;  // 0 without queries
};
KeyError key_error(const float* k, const float* khat, std::size_t n, std::size_t d,
                   const float* q = nullptr, std::size_t q_rows = 0);

struct FromModelOptions {
  ModelOptions model;  // -m, threads, context and every cache flag
  std::string prompt, prompt_file;
  std::string dump_dir;     // empty: no .npy files
  std::string json;         // empty: no JSON
  std::vector<int> layers;  // empty: every layer
};

void run_quant_from_model(FromModelOptions options);

}  // namespace squat::apps
