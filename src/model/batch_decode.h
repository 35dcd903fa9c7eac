// Continuous batching: several sequences, each with its own cache (and SQuat subspace) and
// position, advance together in one forward pass whose projections read the weights once.
// Used by the server's scheduler; the layer code is model.cpp's forward_layers, shared with
// the single-sequence InferenceContext.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/model.h"

namespace squat {

// One sequence of a batch: its cache and the number of tokens fed so far. A cache that already
// holds tokens (a prefix filled elsewhere, e.g. replayed from a shared prompt prefix) is
// continued after them.
class BatchSequence {
 public:
  explicit BatchSequence(std::unique_ptr<AttentionCache> cache)
      : cache_(std::move(cache)), n_past_(cache_ ? cache_->n_tokens() : 0) {}
  AttentionCache& cache() { return *cache_; }
  const AttentionCache& cache() const { return *cache_; }
  int n_past() const { return n_past_; }
  int capacity() const { return cache_->capacity(); }

 private:
  friend class BatchDecoder;
  std::unique_ptr<AttentionCache> cache_;
  int n_past_ = 0;
};

// What one sequence contributes to a step: a decode step feeds one token, a prefill chunk
// several. `want_logits`: return the logits after its last token (not needed for a prefill
// chunk that is not the prompt's last); an input that wants them ends its sequence's prompt
// (AttentionCache::finish_prompt), so a prompt's chunks but the last must not ask for them.
struct BatchInput {
  BatchSequence* sequence = nullptr;
  std::span<const int32_t> tokens;
  bool want_logits = true;
};

class BatchDecoder {
 public:
  // `max_rows`: most tokens of all inputs together in one step.
  BatchDecoder(const Model& model, ThreadPool& pool, int max_rows);

  // Runs every input in one forward pass (each sequence at most once). Returns the logits of
  // the inputs that want them, in input order, [count, vocab_size]; valid until the next call.
  // Throws squat::Error (nothing is fed) on an empty or oversized step, an input without
  // tokens, a token id outside the vocabulary or a sequence whose cache would overflow; and
  // after the pass on a NaN or infinite logit (corrupt weights).
  const float* eval(std::span<const BatchInput> inputs);

  int max_rows() const { return buffers_.max_rows; }
  const Model& model() const { return model_; }

 private:
  const Model& model_;
  ThreadPool& pool_;
  ForwardBuffers buffers_;
  std::vector<int32_t> tokens_;
  std::vector<BatchSlice> slices_;
  AlignedBuffer<float> normed_, logits_;
};

}  // namespace squat
