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

// Runs the forward pass for one sequence. Tokens are processed in batches of up to
// `max_batch` (matrix-matrix products); all buffers are allocated here, once.
class InferenceContext {
 public:
  InferenceContext(const Model& model, std::unique_ptr<AttentionCache> cache, ThreadPool& pool,
                   int max_batch = 256);

  // Feeds tokens at the next positions. Returns the logits after the last one (vocab_size
  // floats, valid until the next call). When `all_logits` is given, it receives [n, vocab].
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
  AlignedBuffer<float> x_, xn_, q_, q_before_rope_, k_, v_, att_, proj_, gate_, up_, logits_, last_;
};

}  // namespace squat
