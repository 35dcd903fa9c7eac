#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/dequant.h"
#include "kernels/ops.h"

namespace squat {

namespace {

std::string layer_tensor(int layer, const char* name) {
  return "blk." + std::to_string(layer) + "." + name;
}

}  // namespace

Model::Model(gguf::File file) : file_(std::move(file)) {}

std::unique_ptr<Model> Model::load(const std::string& path) {
  std::unique_ptr<Model> model(new Model(gguf::File::open(path)));
  Model& m = *model;
  ModelConfig& c = m.config_;
  c = ModelConfig::from_gguf(m.file_);

  const gguf::TensorInfo& embd = m.file_.tensor("token_embd.weight");
  if (embd.shape.size() != 2 || embd.shape[0] != uint64_t(c.n_embd)) {
    fail("{}: tensor 'token_embd.weight' has an unexpected shape (expected [{}, vocab])", path,
         c.n_embd);
  }
  c.vocab_size = int(embd.shape[1]);
  m.token_embd_ = m.matrix("token_embd.weight", std::size_t(c.vocab_size), std::size_t(c.n_embd));
  m.output_ = m.file_.find_tensor("output.weight")
                  ? m.matrix("output.weight", std::size_t(c.vocab_size), std::size_t(c.n_embd))
                  : m.token_embd_;  // tied embeddings
  m.output_norm_ = m.vector("output_norm.weight", std::size_t(c.n_embd));

  // Llama 3.1-style RoPE scaling: per-pair divisors of the frequencies.
  if (m.file_.find_tensor("rope_freqs.weight")) {
    const std::vector<float> factors = m.vector("rope_freqs.weight", std::size_t(c.head_dim / 2));
    for (std::size_t i = 0; i < factors.size(); ++i) {
      if (!(factors[i] > 0.0f))
        fail("{}: tensor 'rope_freqs.weight' holds a non-positive factor", path);
      c.rope_inv_freq[i] /= factors[i];
    }
  }

  const auto e = std::size_t(c.n_embd), ff = std::size_t(c.n_ff);
  const auto qd = std::size_t(c.q_dim()), kvd = std::size_t(c.kv_dim());
  m.layers_.resize(std::size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& w = m.layers_[std::size_t(l)];
    w.attn_norm = m.vector(layer_tensor(l, "attn_norm.weight"), e);
    w.ffn_norm = m.vector(layer_tensor(l, "ffn_norm.weight"), e);
    w.wq = m.matrix(layer_tensor(l, "attn_q.weight"), qd, e);
    w.wk = m.matrix(layer_tensor(l, "attn_k.weight"), kvd, e);
    w.wv = m.matrix(layer_tensor(l, "attn_v.weight"), kvd, e);
    w.wo = m.matrix(layer_tensor(l, "attn_output.weight"), e, qd);
    w.w_gate = m.matrix(layer_tensor(l, "ffn_gate.weight"), ff, e);
    w.w_up = m.matrix(layer_tensor(l, "ffn_up.weight"), ff, e);
    w.w_down = m.matrix(layer_tensor(l, "ffn_down.weight"), e, ff);
    if (c.qkv_bias) {
      w.q_bias = m.vector(layer_tensor(l, "attn_q.bias"), qd);
      w.k_bias = m.vector(layer_tensor(l, "attn_k.bias"), kvd);
      w.v_bias = m.vector(layer_tensor(l, "attn_v.bias"), kvd);
    }
  }
  return model;
}

kernels::WeightView Model::matrix(const std::string& name, std::size_t rows,
                                  std::size_t cols) const {
  const gguf::TensorInfo& t = file_.tensor(name);
  if (t.shape.size() != 2 || t.shape[0] != cols || t.shape[1] != rows) {
    std::string shape;
    for (uint64_t dim : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(dim);
    fail("{}: tensor '{}' has shape [{}], expected [{}, {}]", file_.path(), name, shape, cols,
         rows);
  }
  if (!kernels::weights_finite(t.type, t.data, t.n_elements)) {
    fail("{}: tensor '{}' holds NaN or Inf values", file_.path(), name);
  }
  return kernels::WeightView{t.type, t.data, rows, cols, gguf::row_bytes(t.type, cols)};
}

std::vector<float> Model::vector(const std::string& name, std::size_t n) const {
  const gguf::TensorInfo& t = file_.tensor(name);
  if (t.n_elements != n) {
    fail("{}: tensor '{}' has {} elements, expected {}", file_.path(), name, t.n_elements, n);
  }
  std::vector<float> out(n);
  kernels::dequantize_row(t.type, t.data, out.data(), n);
  for (float value : out) {
    if (!std::isfinite(value)) fail("{}: tensor '{}' holds NaN or Inf", file_.path(), name);
  }
  return out;
}

KvShape Model::kv_shape(int max_tokens) const {
  return KvShape{config_.n_layers, config_.n_heads, config_.n_kv_heads, config_.head_dim,
                 max_tokens};
}

std::size_t Model::weight_bytes() const {
  std::size_t total = output_.rows * output_.row_bytes + token_embd_.row_bytes;
  for (const LayerWeights& w : layers_) {
    for (const kernels::WeightView* m :
         {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      total += m->rows * m->row_bytes;
    }
  }
  return total;
}

InferenceContext::InferenceContext(const Model& model, std::unique_ptr<AttentionCache> cache,
                                   ThreadPool& pool, int max_batch)
    : model_(model),
      cache_(std::move(cache)),
      pool_(pool),
      max_batch_(std::max(1, max_batch)),
      max_tokens_(cache_->capacity()) {
  const ModelConfig& c = model.config();
  const auto b = std::size_t(max_batch_);
  x_.resize(b * std::size_t(c.n_embd));
  xn_.resize(b * std::size_t(c.n_embd));
  proj_.resize(b * std::size_t(c.n_embd));
  q_.resize(b * std::size_t(c.q_dim()));
  q_before_rope_.resize(b * std::size_t(c.q_dim()));
  att_.resize(b * std::size_t(c.q_dim()));
  k_.resize(b * std::size_t(c.kv_dim()));
  v_.resize(b * std::size_t(c.kv_dim()));
  gate_.resize(b * std::size_t(c.n_ff));
  up_.resize(b * std::size_t(c.n_ff));
  last_.resize(std::size_t(c.n_embd));
  logits_.resize(std::size_t(c.vocab_size));
}

void InferenceContext::reset() {
  cache_->clear();
  n_past_ = 0;
}

const float* InferenceContext::eval(std::span<const int32_t> tokens,
                                    std::vector<float>* all_logits) {
  const ModelConfig& c = model_.config();
  if (tokens.empty()) fail("eval: no tokens to process");
  if (n_past_ + int(tokens.size()) > max_tokens_) {
    fail("the context is full: {} tokens so far + {} new exceed the context size {} (raise -c)",
         n_past_, tokens.size(), max_tokens_);
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.vocab_size)
      fail("token id {} is outside the vocabulary (0..{})", t, c.vocab_size - 1);
  }
  if (all_logits) all_logits->resize(tokens.size() * std::size_t(c.vocab_size));
  for (std::size_t start = 0; start < tokens.size(); start += std::size_t(max_batch_)) {
    const int n = int(std::min(tokens.size() - start, std::size_t(max_batch_)));
    float* out = all_logits ? all_logits->data() + start * std::size_t(c.vocab_size) : nullptr;
    forward_batch(tokens.data() + start, n, out, all_logits != nullptr);
  }
  // NaN or Inf weights (a corrupt file) would otherwise turn into silent garbage tokens.
  for (float value : logits_) {
    if (!std::isfinite(value)) {
      fail("{}: the model computed a NaN or infinite logit; its weights hold NaN or Inf values",
           model_.file().path());
    }
  }
  return logits_.data();
}

void InferenceContext::forward_batch(const int32_t* tokens, int n, float* logits_out,
                                     bool want_all) {
  const Model& m = model_;
  const ModelConfig& c = m.config();
  const auto e = std::size_t(c.n_embd), qd = std::size_t(c.q_dim()), kvd = std::size_t(c.kv_dim());
  const auto ff = std::size_t(c.n_ff), hd = std::size_t(c.head_dim);
  const auto rows = std::size_t(n);
  const kernels::RopeLayout layout =
      c.neox_rope ? kernels::RopeLayout::Neox : kernels::RopeLayout::Normal;

  const kernels::WeightView& embd = m.token_embedding();
  for (std::size_t i = 0; i < rows; ++i) {
    kernels::dequantize_row(embd.type, embd.data + std::size_t(tokens[i]) * embd.row_bytes,
                            x_.data() + i * e, e);
  }

  // One product per weight matrix for the whole batch: matvec for a single token.
  auto project = [&](const kernels::WeightView& w, const float* in, float* out) {
    if (n == 1) {
      kernels::matvec(w, in, out, pool_);
    } else {
      kernels::matmul(w, in, rows, out, pool_);
    }
  };
  auto add_bias = [&](float* out, const std::vector<float>& bias, std::size_t width) {
    if (bias.empty()) return;
    for (std::size_t i = 0; i < rows; ++i) kernels::add(out + i * width, bias.data(), width);
  };

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = m.layers()[std::size_t(l)];
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::rmsnorm(x_.data() + i * e, w.attn_norm.data(), xn_.data() + i * e, e, c.rms_eps);
    }
    project(w.wq, xn_.data(), q_.data());
    project(w.wk, xn_.data(), k_.data());
    project(w.wv, xn_.data(), v_.data());
    add_bias(q_.data(), w.q_bias, qd);
    add_bias(k_.data(), w.k_bias, kvd);
    add_bias(v_.data(), w.v_bias, kvd);
    const bool wants_queries = cache_->wants_queries(l);
    if (wants_queries) std::copy(q_.data(), q_.data() + rows * qd, q_before_rope_.data());
    for (std::size_t i = 0; i < rows; ++i) {
      for (int h = 0; h < c.n_heads; ++h) {
        kernels::rope(q_.data() + i * qd + std::size_t(h) * hd, hd, n_past_ + int(i),
                      c.rope_inv_freq.data(), layout);
      }
    }
    if (wants_queries) cache_->observe_queries(l, q_before_rope_.data(), q_.data(), n, pool_);
    cache_->append(l, k_.data(), v_.data(), n);
    cache_->attend(l, q_.data(), n, n_past_, att_.data(), pool_);
    project(w.wo, att_.data(), proj_.data());
    for (std::size_t i = 0; i < rows; ++i) kernels::add(x_.data() + i * e, proj_.data() + i * e, e);

    for (std::size_t i = 0; i < rows; ++i) {
      kernels::rmsnorm(x_.data() + i * e, w.ffn_norm.data(), xn_.data() + i * e, e, c.rms_eps);
    }
    project(w.w_gate, xn_.data(), gate_.data());
    project(w.w_up, xn_.data(), up_.data());
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::swiglu(gate_.data() + i * ff, up_.data() + i * ff, gate_.data() + i * ff, ff);
    }
    project(w.w_down, gate_.data(), proj_.data());
    for (std::size_t i = 0; i < rows; ++i) kernels::add(x_.data() + i * e, proj_.data() + i * e, e);
  }
  n_past_ += n;

  const auto vocab = std::size_t(c.vocab_size);
  if (want_all) {
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::rmsnorm(x_.data() + i * e, m.output_norm().data(), xn_.data() + i * e, e, c.rms_eps);
    }
    if (n == 1) {
      kernels::matvec(m.output(), xn_.data(), logits_out, pool_);
    } else {
      kernels::matmul(m.output(), xn_.data(), rows, logits_out, pool_);
    }
    std::copy(logits_out + (rows - 1) * vocab, logits_out + rows * vocab, logits_.data());
  } else {
    kernels::rmsnorm(x_.data() + (rows - 1) * e, m.output_norm().data(), last_.data(), e,
                     c.rms_eps);
    kernels::matvec(m.output(), last_.data(), logits_.data(), pool_);
  }
}

}  // namespace squat
