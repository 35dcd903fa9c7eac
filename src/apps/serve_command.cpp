// `squat serve`: the OpenAI-compatible HTTP server (src/server) over one model, with continuous
// batching and admission by KV-cache memory. SIGINT/SIGTERM stop it cleanly.
#include <fmt/format.h>
#include <pthread.h>

#include <csignal>
#include <filesystem>
#include <memory>
#include <thread>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "core/error.h"
#include "server/admission.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"

namespace squat::apps {

namespace {

struct ServeOptions {
  ModelOptions model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string kv_budget = "1GiB";
  int max_seqs = 64;
  int queue = 64;
  std::string model_id;  // empty: the model file's name without .gguf
  int chat_max_tokens = 256;
};

void serve(const ServeOptions& options) {
  const ModelOptions& mo = options.model;
  mo.check_flags();
  if (!mo.save_subspace.empty()) {
    fail_usage("--save-subspace does not apply to serve (every request builds its own subspace)");
  }
  const std::size_t budget = server::parse_byte_size(options.kv_budget, "--kv-budget");

  // Signals are taken by one thread with sigwait; every thread made from here on inherits the
  // mask. A client that disconnects must not kill the server with SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<Model> model = Model::load(mo.model_path);
  const kv::CacheConfig cache_config = mo.cache_config(model->config().head_dim);
  const Tokenizer tokenizer = Tokenizer::from_gguf(model->file());
  ChatTemplate chat_template = ChatTemplate::from_gguf(model->file());
  if (!chat_template.note().empty()) fmt::print(stderr, "squat serve: {}\n", chat_template.note());
  const int threads =
      mo.threads > 0 ? mo.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(threads);

  server::SchedulerOptions so;
  so.max_sequences = options.max_seqs;
  so.budget = budget;
  so.queue_capacity = options.queue;
  so.prefill_chunk = mo.batch > 0 ? mo.batch : 512;
  so.context = mo.context;
  const server::CacheFootprint footprint = server::measure_cache_footprint(
      model->kv_shape(1), model->rope(), cache_config, pool, so.prefill_chunk);
  const Model& m = *model;
  server::CacheFactory caches = [&m, &mo](int capacity) { return make_cache(m, mo, capacity); };

  server::Metrics metrics(budget, options.max_seqs);
  server::Scheduler scheduler(m, tokenizer, pool, caches, footprint, so, metrics);
  server::HttpOptions ho;
  ho.model_id = options.model_id.empty()
                    ? std::filesystem::path(mo.model_path).stem().string()
                    : options.model_id;
  ho.chat_default_max_tokens = options.chat_max_tokens;
  // Each streaming or waiting request holds an HTTP thread; the rest serve /metrics etc.
  ho.threads = std::min(1024, options.max_seqs + options.queue + 8);
  server::HttpServer http(scheduler, tokenizer, chat_template, metrics, ho);
  const int port = http.bind(options.host, options.port);

  const double mib = double(1 << 20);
  fmt::print(stderr,
             "squat serve: {} with --kv {} ({}); cache per sequence {:.1f} KiB per token + "
             "{:.2f} MiB (32-token prompt) to {:.2f} MiB ({}-token prompt chunk); budget {:.1f} "
             "MiB, at most {} sequences, queue {}\n",
             ho.model_id, mo.kv, cache_config.describe(), footprint.per_token_bytes / 1024.0,
             double(footprint.fixed_bytes(32)) / mib,
             double(footprint.fixed_bytes(so.prefill_chunk)) / mib, so.prefill_chunk,
             double(budget) / mib, options.max_seqs, options.queue);
  fmt::print(stderr, "squat serve: listening on http://{}:{}\n", options.host, port);
  std::fflush(stderr);

  std::thread signal_waiter([&] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    fmt::print(stderr, "squat serve: signal {}, stopping\n", signal);
    http.stop();
  });
  http.listen();
  scheduler.stop();
  pthread_kill(signal_waiter.native_handle(), SIGTERM);  // no-op wait if a signal came already
  signal_waiter.join();
  fmt::print(stderr, "squat serve: stopped\n");
}

}  // namespace

void register_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server with continuous batching over a budgeted KV cache");
  add_model_options(*cmd, options->model);
  cmd->get_option("-b")->description(
      "Most prompt tokens fed per batched step, so a long prompt does not stall the others "
      "(default 0: 512)");
  cmd->add_option("--host", options->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", options->port, "Port to listen on (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--kv-budget", options->kv_budget,
                  "Memory for all sequences' KV caches, e.g. 1GiB, 256MiB, 64MB")
      ->capture_default_str();
  cmd->add_option("--max-seqs", options->max_seqs, "Most sequences decoded together")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--queue", options->queue,
                  "Most requests waiting for memory; beyond it: HTTP 503 with Retry-After")
      ->check(CLI::Range(0, 65536))
      ->capture_default_str();
  cmd->add_option("--model-id", options->model_id,
                  "Model name in /v1/models and responses (default: the file name)");
  cmd->add_option("--chat-max-tokens", options->chat_max_tokens,
                  "max_tokens of chat requests that give none")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->callback([options] { serve(*options); });
}

}  // namespace squat::apps
