#include "model/batch_decode.h"

#include <cmath>

#include "core/error.h"
#include "kernels/ops.h"

namespace squat {

BatchDecoder::BatchDecoder(const Model& model, ThreadPool& pool, int max_rows)
    : model_(model), pool_(pool), buffers_(model.config(), max_rows) {
  const ModelConfig& c = model.config();
  const auto rows = std::size_t(buffers_.max_rows);
  tokens_.reserve(rows);
  slices_.reserve(rows);
  normed_.resize(rows * std::size_t(c.n_embd));
  logits_.resize(rows * std::size_t(c.vocab_size));
}

const float* BatchDecoder::eval(std::span<const BatchInput> inputs) {
  const ModelConfig& c = model_.config();
  tokens_.clear();
  slices_.clear();
  std::size_t rows = 0;
  for (const BatchInput& in : inputs) {
    if (in.tokens.empty()) fail("batched eval: an input has no tokens");
    rows += in.tokens.size();
  }
  if (rows == 0 || rows > std::size_t(max_rows())) {
    fail("batched eval of {} tokens, expected 1..{}", rows, max_rows());
  }
  for (const BatchInput& in : inputs) {
    BatchSequence& s = *in.sequence;
    if (s.n_past_ + int(in.tokens.size()) > s.capacity()) {
      fail("the context is full: {} tokens so far + {} new exceed the sequence's capacity {}",
           s.n_past_, in.tokens.size(), s.capacity());
    }
    for (int32_t t : in.tokens) {
      if (t < 0 || t >= c.vocab_size)
        fail("token id {} is outside the vocabulary (0..{})", t, c.vocab_size - 1);
    }
    tokens_.insert(tokens_.end(), in.tokens.begin(), in.tokens.end());
    slices_.push_back(BatchSlice{&s.cache(), s.n_past_, int(in.tokens.size())});
  }
  forward_layers(model_, tokens_.data(), slices_, buffers_, pool_);

  // Output norm and logits only for the rows asked for, as one product.
  const auto e = std::size_t(c.n_embd), vocab = std::size_t(c.vocab_size);
  std::size_t row = 0, wanted = 0;
  for (const BatchInput& in : inputs) {
    in.sequence->n_past_ += int(in.tokens.size());
    row += in.tokens.size();
    if (!in.want_logits) continue;
    in.sequence->cache().finish_prompt();  // logits asked for: its prompt, if any, is complete
    kernels::rmsnorm(buffers_.x.data() + (row - 1) * e, model_.output_norm().data(),
                     normed_.data() + wanted * e, e, c.rms_eps);
    ++wanted;
  }
  if (wanted == 1) {
    kernels::matvec(model_.output(), normed_.data(), logits_.data(), pool_);
  } else if (wanted > 1) {
    kernels::matmul(model_.output(), normed_.data(), wanted, logits_.data(), pool_);
  }
  for (std::size_t i = 0; i < wanted * vocab; ++i) {
    if (!std::isfinite(logits_[i])) {
      fail("{}: the model computed a NaN or infinite logit; its weights hold NaN or Inf values",
           model_.file().path());
    }
  }
  return logits_.data();
}

}  // namespace squat
