// The native part of the Python package `squat` (nanobind): the engine (model, tokenizer, one
// sequence's context), the KV-cache library (quantizers, one layer's store) and the stop filter.
// Arrays cross as NumPy arrays without copies: inputs must already be C-contiguous float32 of
// the stated shape (python/squat/_arrays.py checks that and says what was wrong before a call
// gets here; nanobind refuses anything else). Every call that computes for long releases the
// GIL; objects that hold state also hold a mutex, so two Python threads never run one store or
// context at once. squat::Error becomes ValueError (usage) or RuntimeError (runtime).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/fingerprint.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/stop_filter.h"
#include "model/store_cache.h"
#include "squat/kv_quant.h"
#include "squat/kvcache.h"
#include "tokenizer/tokenizer.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using squat::fail;
using squat::fail_usage;

template <std::size_t N>
using In = nb::ndarray<const float, nb::ndim<N>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<nb::numpy, float>;

// A new NumPy array that owns `data`.
Out to_numpy(std::vector<float>&& data, std::initializer_list<std::size_t> shape) {
  auto* owned = new std::vector<float>(std::move(data));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return Out(owned->data(), shape.size(), shape.begin(), owner);
}

// ---- CacheConfig ------------------------------------------------------------------------

// The library configuration from the options' values: kv::make_cache_config, the same
// translation and check the command line runs, so the same combinations are refused with the
// same messages (the Python class checks which options apply to the method, as the command
// line's check_flags does).
squat::kv::CacheConfig make_cache_config(const std::string& method, int k_bits, int v_bits,
                                         int group_size, int residual_length, int quant_group_size,
                                         int subspace_dim, double lambda,
                                         const std::string& key_quant, const std::string& key_rope,
                                         const std::string& query_rope, bool power_method,
                                         bool hadamard, int head_dim) {
  return squat::kv::make_cache_config({.method = method,
                                       .k_bits = k_bits,
                                       .v_bits = v_bits,
                                       .group_size = group_size,
                                       .residual_length = residual_length,
                                       .quant_group_size = quant_group_size,
                                       .subspace_dim = subspace_dim,
                                       .lambda = lambda,
                                       .key_quant = key_quant,
                                       .key_rope = key_rope,
                                       .query_rope = query_rope,
                                       .power_method = power_method,
                                       .hadamard = hadamard},
                                      head_dim);
}

// ---- squat quant on arrays --------------------------------------------------------------

// What `squat quant --keys K.npy [--queries Q.npy] --out K2.npy` computes, on arrays: the
// dequantized [n, d] array and the bytes the quantized chunk occupies. Same checks as the
// command (src/apps/quant_command.cpp), with the Python argument names.
std::tuple<Out, std::size_t> quantize_array(In<2> k, std::optional<In<2>> q,
                                            const std::string& method, int bits, int group_size,
                                            int quant_group_size, int subspace_dim, double lambda,
                                            const std::string& key_quant,
                                            const std::string& tensor) {
  namespace kv = squat::kv;
  if (method != "kivi" && method != "squat") {
    fail_usage("method must be 'kivi' or 'squat', got '{}'", method);
  }
  if (tensor != "keys" && tensor != "values") {
    fail_usage("tensor must be 'keys' or 'values', got '{}'", tensor);
  }
  if (key_quant != "per-channel" && key_quant != "per-token") {
    fail_usage("key_quant must be 'per-channel' or 'per-token', got '{}'", key_quant);
  }
  if (bits != 2 && bits != 4 && bits != 8) fail_usage("bits must be 2, 4 or 8, got {}", bits);
  const bool values = tensor == "values";
  const bool squat = method == "squat" && !values;
  const kv::GroupLayout layout = (values || key_quant == "per-token") ? kv::GroupLayout::PerToken
                                                                      : kv::GroupLayout::PerChannel;
  if (group_size <= 0) fail_usage("group_size must be positive, got {}", group_size);
  if (squat && quant_group_size < 0) {
    fail_usage("quant_group_size must be positive (0: automatic), got {}", quant_group_size);
  }
  if (subspace_dim < 0) fail_usage("subspace_dim must be >= 0, got {}", subspace_dim);
  if (!(lambda >= 0) || !std::isfinite(lambda)) {
    fail_usage("lambda_ must be finite and >= 0, got {}", lambda);
  }
  if (squat && !q) fail_usage("method='squat' needs the queries Q [rows, head_dim]");
  const std::size_t n = k.shape(0), d = k.shape(1);
  if (n == 0 || d == 0) fail_usage("K must be non-empty, got shape ({}, {})", n, d);
  if (q && (q->shape(0) == 0 || q->shape(1) != d)) {
    fail_usage("Q must be [rows, {}] like K's head_dim, got shape ({}, {})", d, q->shape(0),
               q->shape(1));
  }
  if (quant_group_size == 0) {
    quant_group_size = kv::default_quant_group_size(int(d), layout, group_size);
  }
  if (squat && d % std::size_t(quant_group_size) != 0) {
    fail_usage("head_dim {} is not a multiple of quant_group_size {}", d, quant_group_size);
  }
  if (layout == kv::GroupLayout::PerChannel && n % std::size_t(group_size) != 0) {
    fail_usage("K has {} tokens: per-channel quantization needs a multiple of group_size {}", n,
               group_size);
  }
  if (layout == kv::GroupLayout::PerToken && d % std::size_t(group_size) != 0) {
    fail_usage("head_dim {} is not a multiple of group_size {} (per-token groups)", d, group_size);
  }
  if (squat && layout == kv::GroupLayout::PerToken && quant_group_size % group_size != 0) {
    fail_usage("per-token SQuat needs quant_group_size {} to be a multiple of group_size {}",
               quant_group_size, group_size);
  }
  const float* kp = k.data();
  const float* qp = q ? q->data() : nullptr;
  const std::size_t q_rows = q ? q->shape(0) : 0;
  std::vector<float> khat(n * d);
  std::size_t storage = 0;
  {
    nb::gil_scoped_release unlocked;
    kv::QuantizedChunk chunk;
    if (squat) {
      kv::SubspaceOptions so;
      so.subspace_dim = subspace_dim;
      so.lambda = lambda;
      so.quant_group_size = quant_group_size;
      const kv::SquatState state = kv::SquatState::from_queries(qp, q_rows, int(d), so);
      chunk =
          kv::squat_quantize_chunk(kp, n, d, bits, group_size, layout, kv::ParamType::F16, state);
    } else {
      chunk = kv::quantize_chunk(kp, n, d, bits, group_size, layout, kv::ParamType::F16);
    }
    kv::dequantize_chunk(chunk, khat.data());
    storage = chunk.storage_bytes();
  }
  return {to_numpy(std::move(khat), {n, d}), storage};
}

// ---- One layer's store ------------------------------------------------------------------

class LayerStore {
 public:
  LayerStore(const squat::kv::CacheConfig& config, int n_kv_heads, int head_dim,
             std::vector<float> inv_freq, bool neox, int threads)
      : n_kv_(n_kv_heads), d_(head_dim) {
    namespace kv = squat::kv;
    if (n_kv_heads <= 0) fail_usage("n_kv_heads must be positive, got {}", n_kv_heads);
    config.validate(head_dim);
    std::shared_ptr<kv::RopeTable> rope;
    if (!inv_freq.empty()) {
      if (inv_freq.size() != std::size_t(head_dim / 2)) {
        fail_usage("inv_freq must hold head_dim/2 = {} frequencies, got {}", head_dim / 2,
                   inv_freq.size());
      }
      for (float f : inv_freq) {
        if (!std::isfinite(f)) fail_usage("inv_freq holds a non-finite value ({})", f);
      }
      rope = std::make_shared<kv::RopeTable>(
          kv::RopeSpec{std::move(inv_freq), neox ? kv::RopeLayout::Neox : kv::RopeLayout::Normal});
    } else if (config.key_rope == kv::KeyRope::Pre) {
      fail_usage(
          "keys stored before RoPE (key_rope='pre', the default of kivi and squat) need the "
          "rotary frequencies: give inv_freq (head_dim/2 floats), or key_rope='post'");
    }
    cache_ = std::make_unique<kv::LayerCache>(config, n_kv_heads, head_dim, std::move(rope));
    if (threads > 1) pool_ = std::make_unique<squat::ThreadPool>(threads);
  }

  int n_kv_heads() const { return n_kv_; }
  int head_dim() const { return d_; }

  void set_queries(In<3> q) {
    check_heads(q, "q", true);
    std::lock_guard lock(mu_);
    nb::gil_scoped_release unlocked;
    cache_->set_queries(q.data(), q.shape(0), int(q.shape(1)), pool_.get());
  }

  void append(In<3> k, In<3> v) {
    check_heads(k, "k", false);
    check_heads(v, "v", false);
    if (k.shape(0) != v.shape(0)) {
      fail_usage("k and v must hold the same number of tokens, got {} and {}", k.shape(0),
                 v.shape(0));
    }
    std::lock_guard lock(mu_);
    nb::gil_scoped_release unlocked;
    cache_->append(k.data(), v.data(), k.shape(0));
  }

  Out attend(In<3> q,
             std::optional<nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>>
                 positions) {
    check_heads(q, "q", true);
    const std::size_t n = q.shape(0);
    const int n_heads = int(q.shape(1));
    std::vector<int> pos(n);
    std::lock_guard lock(mu_);
    const std::size_t stored = cache_->tokens();
    if (positions) {
      if (positions->shape(0) != n) {
        fail_usage("positions must hold one position per query ({}), got {}", n,
                   positions->shape(0));
      }
      for (std::size_t i = 0; i < n; ++i) {
        const int p = (*positions)(i);
        if (p < 0) fail_usage("positions[{}] = {} is negative", i, p);
        pos[i] = p;
      }
    } else {
      // The last n stored tokens' positions: the usual case of queries of tokens just appended.
      if (stored < n) {
        fail_usage("{} queries but only {} tokens stored: give positions, or append first", n,
                   stored);
      }
      for (std::size_t i = 0; i < n; ++i) pos[i] = int(stored - n + i);
    }
    std::vector<float> out(n * std::size_t(n_heads) * std::size_t(d_));
    {
      nb::gil_scoped_release unlocked;
      cache_->attend(q.data(), n, n_heads, pos.data(), out.data(), pool_.get());
    }
    return to_numpy(std::move(out), {n, std::size_t(n_heads), std::size_t(d_)});
  }

  std::tuple<Out, Out> dequantize(int kv_head) const {
    if (kv_head < 0 || kv_head >= n_kv_) {
      fail_usage("kv_head {} is out of range (0..{})", kv_head, n_kv_ - 1);
    }
    std::lock_guard lock(mu_);
    const std::size_t n = cache_->tokens();
    std::vector<float> keys(n * std::size_t(d_)), values(n * std::size_t(d_));
    {
      nb::gil_scoped_release unlocked;
      cache_->dequantize(kv_head, keys.data(), values.data());
    }
    return {to_numpy(std::move(keys), {n, std::size_t(d_)}),
            to_numpy(std::move(values), {n, std::size_t(d_)})};
  }

  void save_subspace(const std::string& path) const {
    std::lock_guard lock(mu_);
    if (cache_->config().method != squat::kv::CacheMethod::Squat) {
      fail_usage("save_subspace: only a squat store has a subspace (method is {})",
                 squat::kv::to_string(cache_->config().method));
    }
    if (!cache_->has_states()) {
      fail_usage("save_subspace: no subspace yet (call set_queries with the prompt's queries)");
    }
    squat::kv::SquatStateFile::save(path, cache_->states());
  }

  void load_subspace(const std::string& path) {
    std::lock_guard lock(mu_);
    if (cache_->config().method != squat::kv::CacheMethod::Squat) {
      fail_usage("load_subspace: only a squat store uses a subspace (method is {})",
                 squat::kv::to_string(cache_->config().method));
    }
    cache_->set_states(squat::kv::SquatStateFile::load(path));
  }

  template <typename F>
  auto locked(F f) const {
    std::lock_guard lock(mu_);
    return f();
  }

  std::size_t tokens() const {
    return locked([&] { return cache_->tokens(); });
  }
  std::size_t bytes() const {
    return locked([&] { return cache_->bytes(); });
  }
  std::size_t key_bytes() const {
    return locked([&] { return cache_->key_bytes(); });
  }
  std::size_t value_bytes() const {
    return locked([&] { return cache_->value_bytes(); });
  }
  std::size_t state_bytes() const {
    return locked([&] { return cache_->state_bytes(); });
  }
  std::size_t allocated_bytes() const {
    return locked([&] { return cache_->allocated_bytes(); });
  }
  double bits_per_element() const {
    return locked([&] { return cache_->bits_per_element(); });
  }
  std::size_t quantized_keys() const {
    return locked([&] { return cache_->quantized_keys(); });
  }
  std::size_t quantized_values() const {
    return locked([&] { return cache_->quantized_values(); });
  }
  bool has_subspace() const {
    return locked([&] { return cache_->has_states(); });
  }
  void clear() {
    std::lock_guard lock(mu_);
    cache_->clear();
  }
  void reserve(std::size_t n) {
    std::lock_guard lock(mu_);
    cache_->reserve(n);
  }

 private:
  template <typename A>
  void check_heads(const A& a, const char* name, bool query) const {
    const std::size_t heads = a.shape(1);
    if (a.shape(2) != std::size_t(d_)) {
      fail_usage("{} must be [tokens, heads, {}] (head_dim {}), got last dimension {}", name, d_,
                 d_, a.shape(2));
    }
    if (a.shape(0) == 0) fail_usage("{} holds no tokens", name);
    if (query) {
      if (heads == 0 || heads % std::size_t(n_kv_) != 0) {
        fail_usage("{} has {} query heads: expected a multiple of the {} KV heads", name, heads,
                   n_kv_);
      }
    } else if (heads != std::size_t(n_kv_)) {
      fail_usage("{} must have {} KV heads, got {}", name, n_kv_, heads);
    }
  }

  int n_kv_, d_;
  std::unique_ptr<squat::kv::LayerCache> cache_;
  std::unique_ptr<squat::ThreadPool> pool_;
  mutable std::mutex mu_;
};

// ---- The engine -------------------------------------------------------------------------

class Engine {
 public:
  Engine(const std::string& path, int threads) {
    if (threads < 0) fail_usage("threads must be >= 0 (0: every core), got {}", threads);
    nb::gil_scoped_release unlocked;
    model_ = squat::Model::load(path);
    tokenizer_ = std::make_unique<squat::Tokenizer>(squat::Tokenizer::from_gguf(model_->file()));
    const int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
    pool_ = std::make_unique<squat::ThreadPool>(n);
    fingerprint_ = squat::model_fingerprint(model_->file());
  }

  const squat::Model& model() const { return *model_; }
  const squat::Tokenizer& tokenizer() const { return *tokenizer_; }
  squat::ThreadPool& pool() { return *pool_; }
  const std::string& fingerprint() const { return fingerprint_; }
  std::mutex& mutex() { return mu_; }  // one forward pass at a time over the shared pool

  std::vector<int32_t> tokenize(const std::string& text, bool add_special,
                                bool parse_special) const {
    return tokenizer_->encode(text, add_special, parse_special);
  }
  nb::bytes detokenize(const std::vector<int32_t>& ids, bool render_special) const {
    check_ids(ids);
    const std::string s = tokenizer_->decode(ids, render_special);
    return nb::bytes(s.data(), s.size());
  }
  nb::bytes token_bytes(int32_t id) const {
    check_ids({id});
    const std::string s = tokenizer_->token_to_piece(id);
    return nb::bytes(s.data(), s.size());
  }
  void check_ids(const std::vector<int32_t>& ids) const {
    const int vocab = model_->config().vocab_size;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab) {
        fail_usage("token id {} at index {} is outside the vocabulary (0..{})", ids[i], i,
                   vocab - 1);
      }
    }
  }

 private:
  std::unique_ptr<squat::Model> model_;
  std::unique_ptr<squat::Tokenizer> tokenizer_;
  std::unique_ptr<squat::ThreadPool> pool_;
  std::string fingerprint_;
  std::mutex mu_;
};

// One sequence: its context (scratch and cache) over an Engine's model. The Python Model keeps
// the Engine alive while sessions exist (nb::keep_alive).
class Session {
 public:
  Session(Engine& engine, const squat::kv::CacheConfig& config, int max_tokens, int batch)
      : engine_(engine) {
    if (max_tokens <= 0) fail_usage("max_tokens (context) must be positive, got {}", max_tokens);
    const squat::Model& m = engine.model();
    config.validate(m.config().head_dim);
    auto cache = std::make_unique<squat::StoreCache>(m.kv_shape(max_tokens), m.rope(), config, "",
                                                     engine.fingerprint(),
                                                     /*keep_subspace=*/true);
    cache_ = cache.get();
    context_ = std::make_unique<squat::InferenceContext>(m, std::move(cache), engine.pool(),
                                                         batch > 0 ? batch : max_tokens);
  }

  // Feeds tokens; returns the logits after the last one, or of every token ([n, vocab]).
  Out eval(const std::vector<int32_t>& tokens, bool all) {
    const std::size_t vocab = std::size_t(engine_.model().config().vocab_size);
    if (tokens.empty()) fail_usage("no tokens to evaluate");
    engine_.check_ids(tokens);
    std::vector<float> out;
    {
      nb::gil_scoped_release unlocked;
      std::lock_guard lock(engine_.mutex());
      if (all) {
        context_->eval(tokens, &out);
      } else {
        const float* logits = context_->eval(tokens);
        out.assign(logits, logits + vocab);
      }
    }
    if (all) return to_numpy(std::move(out), {tokens.size(), vocab});
    return to_numpy(std::move(out), {vocab});
  }

  int n_past() const { return context_->n_past(); }
  int max_tokens() const { return context_->max_tokens(); }
  std::size_t cache_bytes() const { return cache_->bytes(); }
  std::size_t cache_allocated_bytes() const { return cache_->store().allocated_bytes(); }
  double bits_per_element() const { return cache_->bits_per_element(); }
  void save_subspace(const std::string& path) const { cache_->save_subspace(path); }
  void reset() { context_->reset(); }

 private:
  Engine& engine_;
  squat::StoreCache* cache_ = nullptr;
  std::unique_ptr<squat::InferenceContext> context_;
};

// Token ids to bytes as they arrive (holds back incomplete UTF-8, drops SentencePiece's
// leading space), so the concatenation equals detokenize of all ids.
class PyStreamDecoder {
 public:
  explicit PyStreamDecoder(Engine& engine) : engine_(engine), decoder_(engine.tokenizer()) {}
  nb::bytes push(int32_t id) {
    engine_.check_ids({id});
    const std::string s = decoder_.push(id);
    return nb::bytes(s.data(), s.size());
  }
  nb::bytes finish() {
    const std::string s = decoder_.finish();
    return nb::bytes(s.data(), s.size());
  }

 private:
  Engine& engine_;
  squat::StreamDecoder decoder_;
};

class PySampler {
 public:
  PySampler(float temperature, int top_k, float top_p, float min_p, uint64_t seed)
      : sampler_(squat::SamplerParams{temperature, top_k, top_p, seed, min_p}) {}
  void observe(const std::vector<int32_t>& tokens) { sampler_.observe(tokens); }
  int32_t sample(In<1> logits) { return sampler_.sample(logits.data(), int(logits.shape(0))); }

 private:
  squat::Sampler sampler_;
};

}  // namespace

NB_MODULE(_squat, m) {
  m.doc() = "Native part of squat (see the squat package)";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const squat::Error& e) {
      PyErr_SetString(e.kind() == squat::ErrorKind::Usage ? PyExc_ValueError : PyExc_RuntimeError,
                      e.what());
    }
  });

  nb::class_<squat::kv::CacheConfig>(m, "NativeCacheConfig")
      .def_prop_ro("method",
                   [](const squat::kv::CacheConfig& c) { return squat::kv::to_string(c.method); })
      .def_prop_ro("key_bits", &squat::kv::CacheConfig::key_bits)
      .def_prop_ro("value_bits", &squat::kv::CacheConfig::value_bits)
      .def_ro("group_size", &squat::kv::CacheConfig::group_size)
      .def_ro("residual_length", &squat::kv::CacheConfig::residual_length)
      .def_ro("quant_group_size", &squat::kv::CacheConfig::quant_group_size)
      .def_ro("subspace_dim", &squat::kv::CacheConfig::subspace_dim)
      .def_ro("lambda_", &squat::kv::CacheConfig::lambda)
      .def_prop_ro("key_rope",
                   [](const squat::kv::CacheConfig& c) {
                     return c.key_rope == squat::kv::KeyRope::Pre ? "pre" : "post";
                   })
      .def_prop_ro("window", &squat::kv::CacheConfig::window)
      .def("describe", &squat::kv::CacheConfig::describe);

  m.def("make_cache_config", &make_cache_config, "method"_a, "k_bits"_a, "v_bits"_a, "group_size"_a,
        "residual_length"_a, "quant_group_size"_a, "subspace_dim"_a, "lambda_"_a, "key_quant"_a,
        "key_rope"_a, "query_rope"_a, "power_method"_a, "hadamard"_a, "head_dim"_a);

  m.def("quantize_array", &quantize_array, "k"_a, "q"_a.none(), "method"_a, "bits"_a,
        "group_size"_a, "quant_group_size"_a, "subspace_dim"_a, "lambda_"_a, "key_quant"_a,
        "tensor"_a);

  nb::class_<LayerStore>(m, "LayerStore")
      .def(nb::init<const squat::kv::CacheConfig&, int, int, std::vector<float>, bool, int>(),
           "config"_a, "n_kv_heads"_a, "head_dim"_a, "inv_freq"_a, "neox"_a, "threads"_a)
      .def_prop_ro("n_kv_heads", &LayerStore::n_kv_heads)
      .def_prop_ro("head_dim", &LayerStore::head_dim)
      .def("set_queries", &LayerStore::set_queries, "q"_a)
      .def("append", &LayerStore::append, "k"_a, "v"_a)
      .def("attend", &LayerStore::attend, "q"_a, "positions"_a.none())
      .def("dequantize", &LayerStore::dequantize, "kv_head"_a)
      .def("save_subspace", &LayerStore::save_subspace, "path"_a)
      .def("load_subspace", &LayerStore::load_subspace, "path"_a)
      .def_prop_ro("tokens", &LayerStore::tokens)
      .def_prop_ro("bytes", &LayerStore::bytes)
      .def_prop_ro("key_bytes", &LayerStore::key_bytes)
      .def_prop_ro("value_bytes", &LayerStore::value_bytes)
      .def_prop_ro("state_bytes", &LayerStore::state_bytes)
      .def_prop_ro("allocated_bytes", &LayerStore::allocated_bytes)
      .def_prop_ro("bits_per_element", &LayerStore::bits_per_element)
      .def_prop_ro("quantized_keys", &LayerStore::quantized_keys)
      .def_prop_ro("quantized_values", &LayerStore::quantized_values)
      .def_prop_ro("has_subspace", &LayerStore::has_subspace)
      .def("clear", &LayerStore::clear)
      .def("reserve", &LayerStore::reserve, "n_tokens"_a);

  nb::class_<Engine>(m, "Engine")
      .def(nb::init<const std::string&, int>(), "path"_a, "threads"_a)
      .def("tokenize", &Engine::tokenize, "text"_a, "add_special"_a, "parse_special"_a)
      .def("detokenize", &Engine::detokenize, "ids"_a, "render_special"_a)
      .def("token_bytes", &Engine::token_bytes, "id"_a)
      .def("is_eog", [](const Engine& e, int32_t id) { return e.tokenizer().is_eog(id); })
      .def_prop_ro("bos", [](const Engine& e) { return e.tokenizer().bos(); })
      .def_prop_ro("add_bos", [](const Engine& e) { return e.tokenizer().add_bos(); })
      .def_prop_ro("vocab_size", [](const Engine& e) { return e.model().config().vocab_size; })
      .def_prop_ro("n_layers", [](const Engine& e) { return e.model().config().n_layers; })
      .def_prop_ro("n_heads", [](const Engine& e) { return e.model().config().n_heads; })
      .def_prop_ro("n_kv_heads", [](const Engine& e) { return e.model().config().n_kv_heads; })
      .def_prop_ro("head_dim", [](const Engine& e) { return e.model().config().head_dim; })
      .def_prop_ro("context_length",
                   [](const Engine& e) { return e.model().config().context_length; })
      .def_prop_ro("architecture", [](const Engine& e) { return e.model().config().architecture; })
      .def_prop_ro("threads", [](Engine& e) { return e.pool().size(); })
      .def_prop_ro("fingerprint", &Engine::fingerprint);

  nb::class_<Session>(m, "Session")
      .def(nb::init<Engine&, const squat::kv::CacheConfig&, int, int>(), "engine"_a, "config"_a,
           "max_tokens"_a, "batch"_a, nb::keep_alive<1, 2>())
      .def("eval", &Session::eval, "tokens"_a, "all"_a)
      .def_prop_ro("n_past", &Session::n_past)
      .def_prop_ro("max_tokens", &Session::max_tokens)
      .def_prop_ro("cache_bytes", &Session::cache_bytes)
      .def_prop_ro("cache_allocated_bytes", &Session::cache_allocated_bytes)
      .def_prop_ro("bits_per_element", &Session::bits_per_element)
      .def("save_subspace", &Session::save_subspace, "path"_a)
      .def("reset", &Session::reset);

  nb::class_<PyStreamDecoder>(m, "StreamDecoder")
      .def(nb::init<Engine&>(), "engine"_a, nb::keep_alive<1, 2>())
      .def("push", &PyStreamDecoder::push, "id"_a)
      .def("finish", &PyStreamDecoder::finish);

  nb::class_<PySampler>(m, "Sampler")
      .def(nb::init<float, int, float, float, uint64_t>(), "temperature"_a, "top_k"_a, "top_p"_a,
           "min_p"_a, "seed"_a)
      .def("observe", &PySampler::observe, "tokens"_a)
      .def("sample", &PySampler::sample, "logits"_a);

  nb::class_<squat::StopFilter>(m, "StopFilter")
      .def(nb::init<std::vector<std::string>>(), "stops"_a)
      .def("add", &squat::StopFilter::add, "text"_a)
      .def("finish", &squat::StopFilter::finish)
      .def_prop_ro("stopped", &squat::StopFilter::stopped);
}
