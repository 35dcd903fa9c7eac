#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/dequant.h"
#include "kernels/ops.h"
#include "squat/rope.h"

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
  // Untied, the embedding table is read one row per token after the load's NaN scan paged all
  // of it in: let those pages go (131 MiB of Qwen2.5-1.5B's peak; rows come back as tokens use
  // them).
  if (m.output_.data != m.token_embd_.data) {
    m.file_.release_pages(embd.data, std::size_t(embd.n_bytes));
  }
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

ForwardBuffers::ForwardBuffers(const ModelConfig& c, int rows) : max_rows(std::max(1, rows)) {
  const auto b = std::size_t(max_rows);
  x.resize(b * std::size_t(c.n_embd));
  xn.resize(b * std::size_t(c.n_embd));
  proj.resize(b * std::size_t(c.n_embd));
  q.resize(b * std::size_t(c.q_dim()));
  q_before_rope.resize(b * std::size_t(c.q_dim()));
  att.resize(b * std::size_t(c.q_dim()));
  k.resize(b * std::size_t(c.kv_dim()));
  v.resize(b * std::size_t(c.kv_dim()));
  gate.resize(b * std::size_t(c.n_ff));
  up.resize(b * std::size_t(c.n_ff));
  rope_cs.resize(b * std::size_t(c.head_dim));
}

void forward_layers(const Model& m, const int32_t* tokens, std::span<const BatchSlice> slices,
                    ForwardBuffers& buf, ThreadPool& pool) {
  const ModelConfig& c = m.config();
  const auto e = std::size_t(c.n_embd), qd = std::size_t(c.q_dim()), kvd = std::size_t(c.kv_dim());
  const auto ff = std::size_t(c.n_ff), hd = std::size_t(c.head_dim);
  std::size_t rows = 0;
  for (const BatchSlice& s : slices) rows += std::size_t(s.n);
  if (rows == 0 || rows > std::size_t(buf.max_rows)) {
    fail("forward pass of {} rows, expected 1..{}", rows, buf.max_rows);
  }
  const RopeLayout layout = c.neox_rope ? RopeLayout::Neox : RopeLayout::Normal;
  {  // cos/sin of every row's position, shared by all layers and heads
    std::size_t row = 0;
    for (const BatchSlice& s : slices) {
      for (int i = 0; i < s.n; ++i, ++row) {
        float* cs = buf.rope_cs.data() + row * hd;
        rope_cos_sin(s.first_pos + i, c.rope_inv_freq.data(), hd / 2, cs, cs + hd / 2);
      }
    }
  }

  const kernels::WeightView& embd = m.token_embedding();
  for (std::size_t i = 0; i < rows; ++i) {
    kernels::dequantize_row(embd.type, embd.data + std::size_t(tokens[i]) * embd.row_bytes,
                            buf.x.data() + i * e, e);
  }

  // One product per weight matrix for all rows: matvec for a single row.
  auto project = [&](const kernels::WeightView& w, const float* in, float* out) {
    if (rows == 1) {
      kernels::matvec(w, in, out, pool);
    } else {
      kernels::matmul(w, in, rows, out, pool);
    }
  };
  auto add_bias = [&](float* out, const std::vector<float>& bias, std::size_t width) {
    if (bias.empty()) return;
    for (std::size_t i = 0; i < rows; ++i) kernels::add(out + i * width, bias.data(), width);
  };

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = m.layers()[std::size_t(l)];
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::rmsnorm(buf.x.data() + i * e, w.attn_norm.data(), buf.xn.data() + i * e, e,
                       c.rms_eps);
    }
    project(w.wq, buf.xn.data(), buf.q.data());
    project(w.wk, buf.xn.data(), buf.k.data());
    project(w.wv, buf.xn.data(), buf.v.data());
    add_bias(buf.q.data(), w.q_bias, qd);
    add_bias(buf.k.data(), w.k_bias, kvd);
    add_bias(buf.v.data(), w.v_bias, kvd);
    // Each slice is its own sequence: its positions, its cache (and SQuat subspace).
    std::size_t row = 0;
    for (const BatchSlice& s : slices) {
      const auto n = std::size_t(s.n);
      float* q = buf.q.data() + row * qd;
      const bool wants_queries = s.cache->wants_queries(l);
      if (wants_queries) std::copy(q, q + n * qd, buf.q_before_rope.data() + row * qd);
      for (std::size_t i = 0; i < n; ++i) {
        const float* cs = buf.rope_cs.data() + (row + i) * hd;
        for (int h = 0; h < c.n_heads; ++h) {
          rope_apply(q + i * qd + std::size_t(h) * hd, hd, cs, cs + hd / 2, layout);
        }
      }
      if (wants_queries) {
        s.cache->observe_queries(l, buf.q_before_rope.data() + row * qd, q, s.n, pool);
      }
      s.cache->append_and_attend(l, buf.k.data() + row * kvd, buf.v.data() + row * kvd, q, s.n,
                                 s.first_pos, buf.att.data() + row * qd, pool);
      row += n;
    }
    project(w.wo, buf.att.data(), buf.proj.data());
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::add(buf.x.data() + i * e, buf.proj.data() + i * e, e);
    }

    for (std::size_t i = 0; i < rows; ++i) {
      kernels::rmsnorm(buf.x.data() + i * e, w.ffn_norm.data(), buf.xn.data() + i * e, e,
                       c.rms_eps);
    }
    project(w.w_gate, buf.xn.data(), buf.gate.data());
    project(w.w_up, buf.xn.data(), buf.up.data());
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::swiglu(buf.gate.data() + i * ff, buf.up.data() + i * ff, buf.gate.data() + i * ff,
                      ff);
    }
    project(w.w_down, buf.gate.data(), buf.proj.data());
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::add(buf.x.data() + i * e, buf.proj.data() + i * e, e);
    }
  }
}

InferenceContext::InferenceContext(const Model& model, std::unique_ptr<AttentionCache> cache,
                                   ThreadPool& pool, int max_batch)
    : model_(model),
      cache_(std::move(cache)),
      pool_(pool),
      max_batch_(std::max(1, max_batch)),
      max_tokens_(cache_->capacity()),
      buffers_(model.config(), max_batch_) {
  const ModelConfig& c = model.config();
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
  cache_->finish_prompt();  // what one eval is given is one prompt (no-op after the first)
  // NaN or Inf weights (a corrupt file) would otherwise turn into silent garbage tokens.
  for (std::size_t i = 0; i < logits_.size(); ++i) {
    if (!std::isfinite(logits_[i])) {
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
  const auto e = std::size_t(c.n_embd), rows = std::size_t(n);
  const BatchSlice slice{cache_.get(), n_past_, n};
  forward_layers(m, tokens, std::span<const BatchSlice>(&slice, 1), buffers_, pool_);
  n_past_ += n;

  const float* x = buffers_.x.data();
  float* xn = buffers_.xn.data();
  const auto vocab = std::size_t(c.vocab_size);
  if (want_all) {
    for (std::size_t i = 0; i < rows; ++i) {
      kernels::rmsnorm(x + i * e, m.output_norm().data(), xn + i * e, e, c.rms_eps);
    }
    if (n == 1) {
      kernels::matvec(m.output(), xn, logits_out, pool_);
    } else {
      kernels::matmul(m.output(), xn, rows, logits_out, pool_);
    }
    std::copy(logits_out + (rows - 1) * vocab, logits_out + rows * vocab, logits_.data());
  } else {
    kernels::rmsnorm(x + (rows - 1) * e, m.output_norm().data(), last_.data(), e, c.rms_eps);
    kernels::matvec(m.output(), last_.data(), logits_.data(), pool_);
  }
}

}  // namespace squat
