#include "apps/model_options.h"

#include <thread>

#include "core/error.h"
#include "model/full_cache.h"

namespace squat::apps {

void add_model_options(CLI::App& cmd, ModelOptions& options) {
  cmd.add_option("-m,--model", options.model_path, "GGUF model file")->required();
  cmd.add_option("-t,--threads", options.threads, "Threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd.add_option("-c,--context", options.context, "Context size in tokens (prompt + output)")
      ->check(CLI::Range(1, 1 << 20));
  cmd.add_option("-b,--batch", options.batch, "Prompt tokens per forward batch")
      ->check(CLI::Range(1, 8192));
  cmd.add_option("--kv", options.kv, "KV cache storage: f32 or f16")
      ->check(CLI::IsMember({"f32", "f16"}));
}

LoadedModel load_model(const ModelOptions& options) {
  LoadedModel loaded;
  loaded.model = Model::load(options.model_path);
  loaded.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_gguf(loaded.model->file()));
  const int threads = options.threads > 0 ? options.threads
                                          : int(std::max(1u, std::thread::hardware_concurrency()));
  loaded.pool = std::make_unique<ThreadPool>(threads);
  loaded.context = make_context(*loaded.model, options, *loaded.pool, options.context);
  return loaded;
}

std::unique_ptr<InferenceContext> make_context(const Model& model, const ModelOptions& options,
                                               ThreadPool& pool, int max_tokens) {
  const auto storage =
      options.kv == "f32" ? FullPrecisionCache::Storage::F32 : FullPrecisionCache::Storage::F16;
  auto cache =
      std::make_unique<FullPrecisionCache>(model.kv_shape(max_tokens), model.rope(), storage);
  return std::make_unique<InferenceContext>(model, std::move(cache), pool, options.batch);
}

}  // namespace squat::apps
