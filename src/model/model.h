// A Llama-family model loaded from GGUF (weights stay in the memory map) and the inference
// state of one sequence (scratch buffers, KV cache, position).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "kernels/matmul.h"
#include "model/attention_cache.h"
#include "model/config.h"

namespace squat {

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;     // RMSNorm gains (dequantized at load)
  std::vector<float> q_bias, k_bias, v_bias;  // qwen2 only, else empty
  kernels::WeightView wq, wk, wv, wo, w_gate, w_up, w_down;
};

class Model {
 public:
  // Opens, validates and maps a GGUF model; errors name the file and the tensor or key.
  static std::unique_ptr<Model> load(const std::string& path);

  const ModelConfig& config() const { return config_; }
  const gguf::File& file() const { return file_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const kernels::WeightView& token_embedding() const { return token_embd_; }
  const kernels::WeightView& output() const { return output_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  RopeSpec rope() const { return RopeSpec{config_.rope_inv_freq, config_.neox_rope}; }
  KvShape kv_shape(int max_tokens) const;
  // Bytes of weights read per decoded token (all matrices once; one embedding row).
  std::size_t weight_bytes() const;

 private:
  explicit Model(gguf::File file);
  kernels::WeightView matrix(const std::string& name, std::size_t rows, std::size_t cols) const;
  std::vector<float> vector(const std::string& name, std::size_t n) const;

  gguf::File file_;
  ModelConfig config_;
  std::vector<LayerWeights> layers_;
  kernels::WeightView token_embd_{}, output_{};
  std::vector<float> output_norm_;
};

// One sequence's part of a forward batch: `n` consecutive rows of the batch, whose tokens go
// to `cache` at positions first_pos, first_pos + 1, ...
struct BatchSlice {
  AttentionCache* cache = nullptr;
  int first_pos = 0;
  int n = 0;
};

// Activation scratch for a forward pass over up to `max_rows` rows, allocated once.
struct ForwardBuffers {
  ForwardBuffers(const ModelConfig& config, int max_rows);
  int max_rows;
  AlignedBuffer<float> x, xn, q, q_before_rope, k, v, att, proj, gate, up;
  // Per row: RoPE cos (head_dim/2) then sin (head_dim/2) of the row's position, computed once
  // per forward pass and used by every layer's query heads.
  AlignedBuffer<float> rope_cs;
};

// The transformer layers over a batch of rows that may belong to several sequences (slices in
// row order, rows summing to at most buffers.max_rows): every projection is one product over
// all rows, so the weights are read once per batch; attention runs per slice against that
// slice's own cache. Leaves the final hidden states (before the output norm) in buffers.x.
// Tokens must be valid ids and every cache must have room (callers check).
void forward_layers(const Model& model, const int32_t* tokens, std::span<const BatchSlice> slices,
                    ForwardBuffers& buffers, ThreadPool& pool);

// Runs the forward pass for one sequence. Tokens are processed in batches of up to
// `max_batch` (matrix-matrix products); all buffers are allocated here, once.
class InferenceContext {
 public:
  InferenceContext(const Model& model, std::unique_ptr<AttentionCache> cache, ThreadPool& pool,
                   int max_batch = 256);

  // Feeds tokens at the next positions, in batches of up to max_batch. Returns the logits after
  // the last one (vocab_size floats, valid until the next call). When `all_logits` is given, it
  // receives [n, vocab]. The tokens of the first call on an empty cache are its prompt
  // (AttentionCache::finish_prompt after them).
  const float* eval(std::span<const int32_t> tokens, std::vector<float>* all_logits = nullptr);

  const Model& model() const { return model_; }
  int n_past() const { return n_past_; }
  int max_tokens() const { return max_tokens_; }
  AttentionCache& cache() { return *cache_; }
  const AttentionCache& cache() const { return *cache_; }
  void reset();

 private:
  void forward_batch(const int32_t* tokens, int n, float* logits_out, bool want_all);

  const Model& model_;
  std::unique_ptr<AttentionCache> cache_;
  ThreadPool& pool_;
  int max_batch_;
  int max_tokens_;
  int n_past_ = 0;
  ForwardBuffers buffers_;
  AlignedBuffer<float> logits_, last_;
};

}  // namespace squat
