#include "apps/model_options.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "core/error.h"
#include "model/fingerprint.h"
#include "model/store_cache.h"

namespace squat::apps {

namespace {

// Cache flags that mean something only for some methods; giving one to another method is
// refused rather than silently ignored.
struct MethodFlag {
  const char* flag;
  bool kivi, squat;
};
constexpr MethodFlag kMethodFlags[] = {
    {"--k-bits", true, true},
    {"--v-bits", true, true},
    {"--residual-length", true, true},
    {"--key-quant", true, true},
    {"--quant-group-size", false, true},
    {"--subspace-dim", false, true},
    {"--lambda", false, true},
    {"--query-rope", false, true},
    {"--power-method", false, true},
    {"--save-subspace", false, true},
    {"--load-subspace", false, true},
};

}  // namespace

kv::CacheConfig ModelOptions::cache_config(int head_dim) const {
  kv::CacheOptions o;
  o.method = kv::to_string(kv);
  o.k_bits = k_bits;
  o.v_bits = v_bits;
  o.group_size = group_size;
  o.residual_length = residual_length;
  o.quant_group_size = quant_group_size;
  o.subspace_dim = subspace_dim;
  o.lambda = lambda;
  o.key_quant = key_quant;
  o.key_rope = key_rope;
  o.query_rope = query_rope;
  o.power_method = power_method;
  o.hadamard = hadamard;
  return kv::make_cache_config(o, head_dim);
}

void add_model_options(CLI::App& cmd, ModelOptions& options, std::vector<std::string>* kv_list) {
  cmd.add_option("-m,--model", options.model_path, "GGUF model file")->required();
  cmd.add_option("-t,--threads", options.threads, "Threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd.add_option("-c,--context,--ctx-size", options.context,
                 "Context size in tokens (prompt + output)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  // bench has its own --batch (sequences decoded together); its prompts go in batches of 512.
  if (!kv_list) {
    cmd.add_option("-b,--batch,--batch-size", options.batch,
                   "Prompt tokens per forward batch: activation buffers are sized by it, not by "
                   "the prompt (0: the whole prompt in one batch)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
  }

  auto* group = cmd.add_option_group("KV cache", "How the KV cache is stored");
  std::vector<std::string> names;  // the methods' names, from the library's one list
  for (kv::CacheMethod m : kv::kCacheMethods) names.emplace_back(kv::to_string(m));
  if (kv_list) {
    std::vector<std::string> entries = names;  // and kivi-N / squat-N, which set both widths
    for (kv::CacheMethod m : kv::kCacheMethods) {
      if (!kv::has_residual_window(m)) continue;
      for (const char* bits : {"-2", "-4", "-8"})
        entries.push_back(kv::to_string(m) + std::string(bits));
    }
    group
        ->add_option("--kv", *kv_list,
                     "Cache methods, comma-separated: f32, f16, int8, int4, kivi, squat, and "
                     "kivi-2/-4/-8, squat-2/-4/-8 (both bit widths set)")
        ->delimiter(',')
        ->check(CLI::IsMember(entries))
        ->capture_default_str();
  } else {
    group
        ->add_option_function<std::string>(
            "--kv", [&options](const std::string& name) { options.kv = kv::parse_method(name); },
            "Cache method: f32, f16, int8, int4, kivi, squat")
        ->check(CLI::IsMember(names))
        ->type_name("TEXT")
        ->default_str(kv::to_string(options.kv));
  }
  group->add_option("--k-bits", options.k_bits, "kivi/squat: bits per key (2, 4 or 8)")
      ->capture_default_str();
  group->add_option("--v-bits", options.v_bits, "kivi/squat: bits per value (2, 4 or 8)")
      ->capture_default_str();
  group
      ->add_option("--group-size", options.group_size,
                   "Tokens per per-channel key group; channels per value/per-token group")
      ->capture_default_str();
  group
      ->add_option("--residual-length", options.residual_length,
                   "kivi/squat: recent tokens kept in full precision (multiple of the group size)")
      ->capture_default_str();
  group
      ->add_option("--quant-group-size", options.quant_group_size,
                   "squat: channels per block of the block-sequential key quantizer")
      ->capture_default_str();
  group
      ->add_option("--subspace-dim", options.subspace_dim,
                   "squat: dimension r of the prompt's query subspace")
      ->capture_default_str();
  group->add_option("--lambda", options.lambda, "squat: weight of the query subspace in the metric")
      ->capture_default_str();
  group
      ->add_option("--key-quant", options.key_quant,
                   "kivi/squat: key groups per-channel or per-token")
      ->check(CLI::IsMember({"per-channel", "per-token"}))
      ->capture_default_str();
  group
      ->add_option("--key-rope", options.key_rope,
                   "Store keys before or after RoPE (default: pre for kivi/squat, post otherwise)")
      ->check(CLI::IsMember({"pre", "post"}));
  group
      ->add_option("--query-rope", options.query_rope,
                   "squat: build the subspace from queries after or before RoPE")
      ->check(CLI::IsMember({"after", "before"}))
      ->capture_default_str();
  group->add_flag("--power-method", options.power_method,
                  "squat: block power iteration instead of a thin SVD for the subspace");
  group->add_flag("--hadamard", options.hadamard,
                  "Rotate values by a normalized Hadamard matrix before quantizing them");
  group->add_option("--save-subspace", options.save_subspace,
                    "squat: write the prompt's subspace (all layers and KV heads) to FILE");
  group
      ->add_option("--load-subspace", options.load_subspace,
                   "squat: use the subspace in FILE instead of computing it from the prompt")
      ->check(CLI::ExistingFile);

  options.command = &cmd;
}

void add_llama_flags(CLI::App& cmd, ModelOptions& options) {
  auto* group = cmd.add_option_group("llama.cpp flags", "Accepted with llama.cpp's meaning");
  group
      ->add_option("--n-gpu-layers,--gpu-layers", options.gpu_layers,
                   "-ngl: accepted and ignored (squat runs on the CPU)")
      ->check(CLI::Range(-1, 1 << 20));
  group
      ->add_option("--threads-batch", options.threads_batch,
                   "-tb: threads for the prompt; used as -t when -t is not given")
      ->check(CLI::Range(1, 1024));
  group
      ->add_option("--flash-attn", options.flash_attn,
                   "-fa [on|off|auto]: attention here is always fused (online softmax)")
      ->expected(0, 1)
      ->default_str("on")
      ->check(CLI::IsMember({"on", "off", "auto", ""}));
  const auto cache_types = CLI::IsMember({"f32", "f16", "q8_0", "q4_0"});
  group
      ->add_option("--cache-type-k", options.cache_type_k,
                   "-ctk: f32, f16, q8_0 (= --kv int8), q4_0 (= --kv int4)")
      ->check(cache_types);
  group
      ->add_option("--cache-type-v", options.cache_type_v,
                   "-ctv: as -ctk; keys and values share one method here")
      ->check(cache_types);
}

void apply_llama_flags(ModelOptions& options) {
  const CLI::App* cmd = options.command;
  if (!cmd) return;
  auto given = [&](const char* flag) { return cmd->count(flag) > 0; };
  if (given("--n-gpu-layers")) {
    fmt::print(stderr,
               "note: -ngl/--n-gpu-layers has no effect: this build of squat runs on the "
               "CPU only\n");
  }
  if (given("--threads-batch")) {
    if (!given("--threads")) {
      options.threads = options.threads_batch;
    } else if (options.threads != options.threads_batch) {
      fmt::print(stderr,
                 "note: squat uses one thread pool for prompt and decode: -t {} is used, "
                 "-tb {} ignored\n",
                 options.threads, options.threads_batch);
    }
  }
  if (given("--flash-attn") && options.flash_attn == "off") {
    fmt::print(stderr, "note: -fa off has no effect: squat's attention is always fused\n");
  }
  const std::string k = options.cache_type_k, v = options.cache_type_v;
  if (k.empty() && v.empty()) return;
  if (!k.empty() && !v.empty() && k != v) {
    fail_usage(
        "-ctk {} and -ctv {} differ, but squat stores keys and values with one method; "
        "give one type (or --kv)",
        k, v);
  }
  if (given("--kv")) fail_usage("-ctk/-ctv and --kv both choose the cache method; give one");
  const std::string type = k.empty() ? v : k;
  options.kv = type == "q8_0"   ? kv::CacheMethod::Int8
               : type == "q4_0" ? kv::CacheMethod::Int4
                                : kv::parse_method(type);
}

void ModelOptions::check_flags(const std::vector<kv::CacheMethod>& methods) const {
  if (!command) return;
  const std::vector<kv::CacheMethod> given =
      methods.empty() ? std::vector<kv::CacheMethod>{kv} : methods;
  std::string list;
  for (kv::CacheMethod m : given) list += (list.empty() ? "" : ",") + std::string(kv::to_string(m));
  for (const MethodFlag& f : kMethodFlags) {
    if (command->count(f.flag) == 0) continue;
    bool applies = false;
    for (kv::CacheMethod m : given) {
      applies |= (m == kv::CacheMethod::Kivi && f.kivi) || (m == kv::CacheMethod::Squat && f.squat);
    }
    if (!applies) {
      fail_usage("{} does not apply to --kv {} (it is for {})", f.flag, list,
                 f.kivi ? "kivi and squat" : "squat");
    }
  }
  if (command->count("--group-size") > 0) {
    bool applies = false;
    for (kv::CacheMethod m : given) applies |= kv::is_quantized(m);
    if (!applies)
      fail_usage("--group-size does not apply to full-precision caches (--kv {})", list);
  }
  // A loaded subspace was built when it was saved; these flags would be silently ignored.
  if (!load_subspace.empty()) {
    for (const char* flag : {"--subspace-dim", "--lambda", "--query-rope", "--power-method"}) {
      if (command->count(flag) > 0) {
        fail_usage("{} does not apply with --load-subspace (the subspace comes from the file)",
                   flag);
      }
    }
  }
  if (!save_subspace.empty() && !load_subspace.empty()) {
    fail_usage("--save-subspace and --load-subspace exclude each other");
  }
}

namespace {

// The subspace is saved after generation; a path that cannot be written would otherwise be
// reported only after all the work was done.
void refuse_unwritable_subspace_path(const std::string& path) {
  if (path.empty()) return;
  const std::filesystem::path target(path);
  const std::filesystem::path dir =
      target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    fail_usage("--save-subspace {}: the folder {} does not exist", path, dir.string());
  }
  if (std::filesystem::is_directory(target, error)) {
    fail_usage("--save-subspace {}: is a folder, expected a file name", path);
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    fail_usage("--save-subspace {}: the folder {} is not writable", path, dir.string());
  }
}

}  // namespace

LoadedModel load_model(const ModelOptions& options) {
  LoadedModel loaded;
  options.check_flags();
  refuse_unwritable_subspace_path(options.save_subspace);
  loaded.model = Model::load(options.model_path);
  options.cache_config(loaded.model->config().head_dim);  // refuse bad cache flags early
  loaded.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_gguf(loaded.model->file()));
  const int threads = options.threads > 0 ? options.threads
                                          : int(std::max(1u, std::thread::hardware_concurrency()));
  loaded.pool = std::make_unique<ThreadPool>(threads);
  loaded.context = make_context(*loaded.model, options, *loaded.pool, options.context);
  return loaded;
}

std::unique_ptr<AttentionCache> make_cache(const Model& model, const ModelOptions& options,
                                           int max_tokens,
                                           std::shared_ptr<kv::RopeTable> shared_rope) {
  return std::make_unique<StoreCache>(
      model.kv_shape(max_tokens), model.rope(), options.cache_config(model.config().head_dim),
      options.load_subspace, model_fingerprint(model.file()),
      /*keep_subspace=*/!options.save_subspace.empty(), std::move(shared_rope));
}

std::unique_ptr<InferenceContext> make_context(const Model& model, const ModelOptions& options,
                                               ThreadPool& pool, int max_tokens) {
  auto cache = make_cache(model, options, max_tokens);
  const int batch = options.batch > 0 ? options.batch : max_tokens;
  return std::make_unique<InferenceContext>(model, std::move(cache), pool, batch);
}

void save_subspace_if_asked(const ModelOptions& options, const InferenceContext& context) {
  if (options.save_subspace.empty()) return;
  context.cache().save_subspace(options.save_subspace);
}

}  // namespace squat::apps
