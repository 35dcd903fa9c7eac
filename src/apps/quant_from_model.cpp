#include "apps/quant_from_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/files.h"
#include "core/npy.h"
#include "kernels/ops.h"
#include "model/store_cache.h"
#include "squat/kv_quant.h"
#include "squat/rope.h"

namespace squat::apps {

KeyError key_error(const float* k, const float* khat, std::size_t n, std::size_t d, const float* q,
                   std::size_t q_rows) {
  KeyError r;
  double se = 0;
  for (std::size_t i = 0; i < n * d; ++i) {
    const double e = double(khat[i]) - double(k[i]);
    se += e * e;
  }
  r.mse = se / double(n * d);
  if (q == nullptr) return r;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < q_rows; ++i) {
    const float* qi = q + i * d;
    for (std::size_t t = 0; t < n; ++t) {
      double dot = 0, err = 0;
      for (std::size_t c = 0; c < d; ++c) {
        dot += double(qi[c]) * double(k[t * d + c]);
        err += double(qi[c]) * (double(khat[t * d + c]) - double(k[t * d + c]));
      }
      num += err * err;
      den += dot * dot;
    }
  }
  r.logit = den > 0 ? std::sqrt(num / den) : 0.0;
  return r;
}

namespace {

// Wraps the cache the run uses and keeps a copy of every layer's raw keys and of the queries
// (the model hands them over only when a cache asks, so this one always asks).
class CaptureCache final : public ForwardingCache {
 public:
  CaptureCache(std::unique_ptr<AttentionCache> inner, const KvShape& shape)
      : ForwardingCache(std::move(inner)),
        shape_(shape),
        keys_(std::size_t(shape.n_layers)),
        q_before_(std::size_t(shape.n_layers)),
        q_after_(std::size_t(shape.n_layers)) {}

  bool wants_queries(int) const override { return true; }
  void observe_queries(int layer, const float* q_before_rope, const float* q_after_rope, int n,
                       ThreadPool& pool) override {
    const std::size_t len = std::size_t(n) * std::size_t(shape_.n_heads * shape_.head_dim);
    auto& b = q_before_[std::size_t(layer)];
    auto& a = q_after_[std::size_t(layer)];
    b.insert(b.end(), q_before_rope, q_before_rope + len);
    a.insert(a.end(), q_after_rope, q_after_rope + len);
    if (inner_->wants_queries(layer)) {
      inner_->observe_queries(layer, q_before_rope, q_after_rope, n, pool);
    }
  }
  void on_append(int layer, const float* k, const float* /*v*/, int n) override {
    auto& dst = keys_[std::size_t(layer)];
    dst.insert(dst.end(), k, k + std::size_t(n) * std::size_t(shape_.n_kv_heads * shape_.head_dim));
  }

  // [tokens, n_kv_heads, head_dim] and [tokens, n_heads, head_dim] per layer.
  const std::vector<float>& keys(int layer) const { return keys_[std::size_t(layer)]; }
  const std::vector<float>& queries(int layer, bool after_rope) const {
    return (after_rope ? q_after_ : q_before_)[std::size_t(layer)];
  }

 private:
  KvShape shape_;
  std::vector<std::vector<float>> keys_, q_before_, q_after_;
};

std::string read_prompt(const FromModelOptions& o) {
  if (o.prompt.empty() == o.prompt_file.empty()) {
    fail_usage("quant --from-model: give the prompt with exactly one of -p/--prompt or -f/--file");
  }
  if (!o.prompt.empty()) return o.prompt;
  return read_text_file(o.prompt_file, "prompt file");
}

struct HeadResult {
  KeyError kivi, squat;
};

}  // namespace

void run_quant_from_model(FromModelOptions o) {
  ModelOptions& mo = o.model;
  const CLI::App& cmd = *mo.command;
  if (cmd.count("--kv") == 0) mo.kv = kv::CacheMethod::Squat;
  if (!kv::has_residual_window(mo.kv)) {
    fail_usage(
        "quant --from-model compares KIVI and SQuat keys: --kv must be kivi or squat, got {}",
        kv::to_string(mo.kv));
  }
  // Only key quantization is analysed; flags about values or the cache's life would be ignored.
  for (const char* flag :
       {"--v-bits", "--residual-length", "--hadamard", "--save-subspace", "--load-subspace"}) {
    if (cmd.count(flag) > 0) {
      fail_usage("{} does not apply to quant --from-model (it analyses the keys of one prompt)",
                 flag);
    }
  }
  mo.check_flags();
  if (!o.dump_dir.empty() && !std::filesystem::is_directory(o.dump_dir)) {
    fail("--dump-dir '{}' is not an existing directory", o.dump_dir);
  }
  const std::string text = read_prompt(o);

  std::unique_ptr<Model> model = Model::load(mo.model_path);
  const ModelConfig& mc = model->config();
  const kv::CacheConfig cfg = mo.cache_config(mc.head_dim);
  for (int l : o.layers) {
    if (l < 0 || l >= mc.n_layers) {
      fail_usage("--layers: there is no layer {} (the model has {} layers, 0-{})", l, mc.n_layers,
                 mc.n_layers - 1);
    }
  }
  std::vector<int> layers = o.layers;
  if (layers.empty()) {
    for (int l = 0; l < mc.n_layers; ++l) layers.push_back(l);
  }
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());

  const Tokenizer tokenizer = Tokenizer::from_gguf(model->file());
  const std::vector<int32_t> prompt = tokenizer.encode(text, true, false);
  const int n = int(prompt.size());
  if (n > mo.context) {
    fail("the prompt has {} tokens but the context holds {} (raise -c/--context)", n, mo.context);
  }
  const std::size_t G = std::size_t(cfg.group_size);
  const bool per_channel = cfg.key_quant == kv::GroupLayout::PerChannel;
  // Per-channel groups span group_size tokens: only whole groups are quantized (as the cache does).
  const std::size_t n_keys = per_channel ? std::size_t(n) / G * G : std::size_t(n);
  if (n_keys == 0) {
    fail_usage("the prompt has {} tokens; per-channel key groups need at least --group-size {}", n,
               G);
  }

  const int threads =
      mo.threads > 0 ? mo.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(threads);
  const KvShape shape = model->kv_shape(n);
  auto capture = std::make_unique<CaptureCache>(
      std::make_unique<StoreCache>(shape, model->rope(), cfg), shape);
  CaptureCache& cap = *capture;
  InferenceContext context(*model, std::move(capture), pool, mo.batch > 0 ? mo.batch : n);
  context.eval(prompt);

  const std::size_t d = std::size_t(mc.head_dim);
  const int n_kv = mc.n_kv_heads, n_rep = mc.n_heads / mc.n_kv_heads;
  const bool post_rope = cfg.key_rope == kv::KeyRope::Post;
  const bool q_after = cfg.query_rope == kv::QueryRope::After;
  kv::SubspaceOptions so;
  so.subspace_dim = cfg.subspace_dim;
  so.lambda = cfg.lambda;
  so.quant_group_size = cfg.quant_group_size;
  so.power_method = cfg.power_method;
  so.power_iterations = cfg.power_iterations;
  const RopeSpec rope = model->rope();
  const auto rope_layout = rope.neox ? RopeLayout::Neox : RopeLayout::Normal;

  struct Dump {
    std::string path;
    std::vector<float> data;
    std::vector<std::size_t> shape;
  };
  std::vector<Dump> dumps;
  std::vector<std::vector<HeadResult>> results;
  for (int l : layers) {
    const std::vector<float>& k_all = cap.keys(l);
    const std::vector<float>& q_all = cap.queries(l, q_after);
    std::vector<HeadResult> heads(static_cast<std::size_t>(n_kv));
    for (int h = 0; h < n_kv; ++h) {
      std::vector<float> k(n_keys * d);
      for (std::size_t t = 0; t < n_keys; ++t) {
        const float* src = k_all.data() + (t * std::size_t(n_kv) + std::size_t(h)) * d;
        std::copy(src, src + d, k.data() + t * d);
        if (post_rope) {
          rope_rotate(k.data() + t * d, d, (long long)t, rope.inv_freq.data(), rope_layout);
        }
      }
      // GQA: the n_rep query heads of this KV head stacked as (query head, token) rows.
      const std::size_t rows = std::size_t(n_rep) * std::size_t(n);
      std::vector<float> q(rows * d);
      for (int r = 0; r < n_rep; ++r) {
        for (int i = 0; i < n; ++i) {
          const float* src =
              q_all.data() +
              (std::size_t(i) * std::size_t(mc.n_heads) + std::size_t(h * n_rep + r)) * d;
          std::copy(src, src + d,
                    q.data() + (std::size_t(r) * std::size_t(n) + std::size_t(i)) * d);
        }
      }
      std::vector<float> khat(n_keys * d);
      const kv::QuantizedChunk kivi = kv::quantize_chunk(
          k.data(), n_keys, d, cfg.k_bits, cfg.group_size, cfg.key_quant, kv::ParamType::F16);
      kv::dequantize_chunk(kivi, khat.data());
      heads[std::size_t(h)].kivi = key_error(k.data(), khat.data(), n_keys, d, q.data(), rows);
      const kv::SquatState state = kv::SquatState::from_queries(q.data(), rows, int(d), so);
      const kv::QuantizedChunk sq =
          kv::squat_quantize_chunk(k.data(), n_keys, d, cfg.k_bits, cfg.group_size, cfg.key_quant,
                                   kv::ParamType::F16, state);
      kv::dequantize_chunk(sq, khat.data());
      heads[std::size_t(h)].squat = key_error(k.data(), khat.data(), n_keys, d, q.data(), rows);
      if (!o.dump_dir.empty()) {
        const std::string base =
            (std::filesystem::path(o.dump_dir) / fmt::format("layer_{}_head_{}_", l, h)).string();
        dumps.push_back({base + "keys.npy", std::move(k), {n_keys, d}});
        dumps.push_back({base + "queries.npy", std::move(q), {rows, d}});
      }
    }
    results.push_back(std::move(heads));
  }

  const char* layout_name = per_channel ? "per-channel" : "per-token";
  fmt::print(
      "quant --from-model: {} | prompt {} tokens, {} keys quantized ({} groups of {}) | keys "
      "{}-RoPE, queries {} RoPE ({} query heads per KV head)\n",
      std::filesystem::path(mo.model_path).filename().string(), n, n_keys, layout_name, G,
      post_rope ? "post" : "pre", q_after ? "after" : "before", n_rep);
  fmt::print("bits {} | squat: block {}, subspace {}, lambda {}{}\n", cfg.k_bits,
             cfg.quant_group_size, cfg.subspace_dim, cfg.lambda,
             cfg.power_method ? ", power method" : "");
  fmt::print(
      "logit error = |Q(K^-K)^T|_F / |QK^T|_F per KV head (as `squat quant` reports it), "
      "mean over the layer's {} KV heads\n",
      n_kv);
  fmt::print("{:>5}  {:>12}  {:>12}  {:>10}  {:>12}  {:>12}\n", "layer", "kivi logit",
             "squat logit", "squat/kivi", "kivi mse", "squat mse");
  nlohmann::json js;
  js["model"] = std::filesystem::path(mo.model_path).filename().string();
  js["prompt_tokens"] = n;
  js["keys_quantized"] = n_keys;
  js["bits"] = cfg.k_bits;
  js["group_size"] = cfg.group_size;
  js["key_quant"] = layout_name;
  js["quant_group_size"] = cfg.quant_group_size;
  js["subspace_dim"] = cfg.subspace_dim;
  js["lambda"] = cfg.lambda;
  js["power_method"] = cfg.power_method;
  js["key_rope"] = post_rope ? "post" : "pre";
  js["query_rope"] = q_after ? "after" : "before";
  js["n_kv_heads"] = n_kv;
  js["queries_per_kv_head"] = n_rep;
  js["layers"] = nlohmann::json::array();
  double all[4] = {0, 0, 0, 0};
  for (std::size_t i = 0; i < layers.size(); ++i) {
    double m[4] = {0, 0, 0, 0};
    nlohmann::json jh = nlohmann::json::array();
    for (const HeadResult& hr : results[i]) {
      m[0] += hr.kivi.logit / n_kv;
      m[1] += hr.squat.logit / n_kv;
      m[2] += hr.kivi.mse / n_kv;
      m[3] += hr.squat.mse / n_kv;
      jh.push_back({{"kivi_logit_error", hr.kivi.logit},
                    {"squat_logit_error", hr.squat.logit},
                    {"kivi_key_mse", hr.kivi.mse},
                    {"squat_key_mse", hr.squat.mse}});
    }
    for (int j = 0; j < 4; ++j) all[j] += m[j] / double(layers.size());
    fmt::print("{:>5}  {:>12.4e}  {:>12.4e}  {:>10.3f}  {:>12.4e}  {:>12.4e}\n", layers[i], m[0],
               m[1], m[0] > 0 ? m[1] / m[0] : 0.0, m[2], m[3]);
    js["layers"].push_back({{"layer", layers[i]},
                            {"kivi_logit_error", m[0]},
                            {"squat_logit_error", m[1]},
                            {"kivi_key_mse", m[2]},
                            {"squat_key_mse", m[3]},
                            {"heads", jh}});
  }
  fmt::print("{:>5}  {:>12.4e}  {:>12.4e}  {:>10.3f}  {:>12.4e}  {:>12.4e}\n", "mean", all[0],
             all[1], all[0] > 0 ? all[1] / all[0] : 0.0, all[2], all[3]);
  js["mean"] = {{"kivi_logit_error", all[0]},
                {"squat_logit_error", all[1]},
                {"kivi_key_mse", all[2]},
                {"squat_key_mse", all[3]}};
  for (const Dump& dump : dumps) npy::write_f32(dump.path, dump.data.data(), dump.shape);
  if (!dumps.empty()) fmt::print("wrote {} .npy files to {}\n", dumps.size(), o.dump_dir);
  if (!o.json.empty()) {
    write_file_atomically(o.json, js.dump(1) + "\n");
    fmt::print("wrote {}\n", o.json);
  }
}

}  // namespace squat::apps
