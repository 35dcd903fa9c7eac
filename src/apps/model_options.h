// Flags shared by every subcommand that runs a model (run, chat, bench, ...), parsed by one
// function so they are spelled, documented and checked the same way everywhere.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "model/model.h"
#include "squat/kvcache.h"
#include "tokenizer/tokenizer.h"

namespace squat::apps {

struct ModelOptions {
  std::string model_path;
  int threads = 0;     // 0: every core
  int context = 4096;  // tokens the cache holds
  int batch = 512;     // prompt tokens per forward batch; 0: the whole prompt at once
  // KV cache.
  kv::CacheMethod kv = kv::CacheMethod::F16;
  int k_bits = 2, v_bits = 2;
  int group_size = 32;
  int residual_length = 32;
  // 0: automatic, kv::default_quant_group_size (64 from head_dim 128 on, else head_dim/4).
  int quant_group_size = 0;
  int subspace_dim = 20;
  double lambda = 0.001;
  std::string key_quant = "per-channel";
  std::string key_rope;  // "pre" or "post"; empty: pre for kivi/squat, post otherwise
  std::string query_rope = "after";
  bool power_method = false;
  bool hadamard = false;
  std::string save_subspace;
  std::string load_subspace;
  const CLI::App* command = nullptr;  // set by add_model_options: which flags were given
  // llama.cpp's flags, accepted with their meaning where squat has one (add_llama_flags).
  int gpu_layers = 0;        // -ngl: squat runs on the CPU, noted and ignored
  int threads_batch = 0;     // -tb: one pool serves prompt and decode
  std::string flash_attn;    // -fa: attention is always fused (online softmax)
  std::string cache_type_k;  // -ctk/-ctv: f32, f16, q8_0 (int8), q4_0 (int4)
  std::string cache_type_v;

  // Refuses cache flags that the chosen method would ignore, and conflicting flags. With
  // `methods` (bench's list), a flag is accepted when it applies to at least one of them.
  void check_flags(const std::vector<kv::CacheMethod>& methods = {}) const;

  // The library configuration these flags describe; refuses impossible combinations.
  kv::CacheConfig cache_config(int head_dim) const;
};

// With `kv_list`, --kv takes a comma-separated list of methods written there (bench), where
// kivi-2/-4/-8 and squat-2/-4/-8 also set both bit widths; otherwise --kv is one method.
void add_model_options(CLI::App& cmd, ModelOptions& options,
                       std::vector<std::string>* kv_list = nullptr);

// llama.cpp's -ngl/--n-gpu-layers, -tb/--threads-batch, -fa/--flash-attn and
// -ctk/-ctv (--cache-type-k/-v), for the commands llama-cli users reach for (run, chat).
// main() rewrites llama.cpp's single-dash long names (-ngl, -ctk, ...) to these long ones.
void add_llama_flags(CLI::App& cmd, ModelOptions& options);

// Maps the llama.cpp flags that were given onto squat's (-ctk q8_0 -> --kv int8, -tb -> -t
// when -t is absent) and prints a one-line note on stderr for those without an effect here.
void apply_llama_flags(ModelOptions& options);

// Everything a command needs to run a model: loaded once, used for one sequence.
struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<InferenceContext> context;
};

// Validates the options, loads the model and tokenizer and makes the context and its cache.
LoadedModel load_model(const ModelOptions& options);

// A fresh cache of `max_tokens` tokens as the options ask for (method, subspace file; a saved
// subspace is tagged with, and a loaded one checked against, the model's fingerprint). SQuat
// keeps its full subspace (P and H) only when --save-subspace asks for it. `shared_rope`: a
// RoPE table shared by many caches (StoreCache::shared_rope_table), as the server's are.
std::unique_ptr<AttentionCache> make_cache(const Model& model, const ModelOptions& options,
                                           int max_tokens,
                                           std::shared_ptr<kv::RopeTable> shared_rope = nullptr);

// A fresh context of `max_tokens` tokens with the cache the options ask for.
std::unique_ptr<InferenceContext> make_context(const Model& model, const ModelOptions& options,
                                               ThreadPool& pool, int max_tokens);

// Writes the SQuat subspace of a context's cache when --save-subspace was given.
void save_subspace_if_asked(const ModelOptions& options, const InferenceContext& context);

}  // namespace squat::apps
