// `squat serve`: the OpenAI-compatible HTTP server (src/server) over one model, with continuous
// batching and admission by KV-cache memory. SIGINT/SIGTERM stop it cleanly.
#include <fmt/format.h>
#include <pthread.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "core/error.h"
#include "model/store_cache.h"
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
  std::string max_body = "1MiB";
  double request_timeout = 10;
  double shutdown_grace = 10;
  int max_connections = 0;  // 0: max-seqs + queue + 64
  std::string api_key;      // or SQUAT_API_KEY
  std::vector<std::string> cors_origins;
};

bool loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

void serve(const ServeOptions& options) {
  const ModelOptions& mo = options.model;
  mo.check_flags();
  if (!mo.save_subspace.empty()) {
    fail_usage("--save-subspace does not apply to serve (every request builds its own subspace)");
  }
  const std::size_t budget = server::parse_byte_size(options.kv_budget, "--kv-budget");
  const std::size_t max_body = server::parse_byte_size(options.max_body, "--max-body");
  if (max_body < 1024)
    fail_usage("--max-body {} is below 1 KiB: no request would fit", options.max_body);
  if (!(options.request_timeout > 0 && options.request_timeout <= 3600)) {
    fail_usage("--request-timeout must be in (0, 3600] seconds, got {}", options.request_timeout);
  }
  if (!(options.shutdown_grace >= 0 && options.shutdown_grace <= 3600)) {
    fail_usage("--shutdown-grace must be in [0, 3600] seconds, got {}", options.shutdown_grace);
  }
  std::string api_key = options.api_key;
  if (api_key.empty()) {
    if (const char* env = std::getenv("SQUAT_API_KEY")) api_key = env;
  }

  // Signals are taken by one thread with sigwait; every thread made from here on inherits the
  // mask. A client that disconnects must not kill the server with SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGUSR1);
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
  // Pre-RoPE keys: one cos/sin table for every position of the context, shared by all
  // sequences (768 bytes per position at head_dim 64, which each sequence would otherwise
  // hold per token), so the budget is charged only for what differs per sequence.
  const std::shared_ptr<kv::RopeTable> rope_table =
      StoreCache::shared_rope_table(model->rope(), cache_config, so.context);
  const server::CacheFootprint footprint =
      server::measure_cache_footprint(model->kv_shape(1), model->rope(), cache_config, pool,
                                      so.prefill_chunk, /*shared_rope=*/rope_table != nullptr);
  // A budget that cannot hold even the smallest sequence would start a server that answers
  // every request with 400: refuse it now.
  const std::size_t smallest = footprint.bytes_for(1, 2);
  if (smallest > budget) {
    fail_usage(
        "--kv-budget {} admits no sequence: the smallest (a 1-token prompt and 1 token "
        "out) needs {:.2f} MiB with --kv {}; give at least that",
        options.kv_budget, double(smallest) / double(1 << 20), kv::to_string(mo.kv));
  }
  const Model& m = *model;
  server::CacheFactory caches = [&m, &mo, rope_table](int capacity) {
    return make_cache(m, mo, capacity, rope_table);
  };

  server::Metrics metrics(budget, options.max_seqs);
  server::Scheduler scheduler(m, tokenizer, pool, caches, footprint, so, metrics);
  server::HttpOptions ho;
  ho.model_id = options.model_id.empty() ? std::filesystem::path(mo.model_path).stem().string()
                                         : options.model_id;
  ho.chat_default_max_tokens = options.chat_max_tokens;
  ho.max_body_bytes = max_body;
  ho.api_key = api_key;
  ho.cors_origins = options.cors_origins;
  ho.transport.request_timeout =
      std::chrono::milliseconds(int64_t(options.request_timeout * 1000.0 + 0.5));
  // Each streaming or waiting request holds a connection thread; the rest serve /health,
  // /metrics and clients still sending (the oldest of those is dropped when none is left).
  ho.transport.max_connections = options.max_connections > 0
                                     ? options.max_connections
                                     : std::min(4096, options.max_seqs + options.queue + 64);
  server::HttpServer http(scheduler, tokenizer, chat_template, metrics, ho);
  // Before binding, so the warning is seen even when the address cannot be had.
  if (api_key.empty() && !loopback(options.host)) {
    fmt::print(stderr,
               "squat serve: warning: listening on {} without --api-key: anyone who can reach "
               "this address can run generations (set --api-key or SQUAT_API_KEY)\n",
               options.host);
  }
  const int port = http.bind(options.host, options.port);

  const double mib = double(1 << 20);
  fmt::print(stderr,
             "squat serve: {} with --kv {} ({}); cache per sequence {:.1f} KiB per token + "
             "{:.2f} MiB (32-token prompt) to {:.2f} MiB ({}-token prompt chunk); budget {:.1f} "
             "MiB, at most {} sequences, queue {}\n",
             ho.model_id, kv::to_string(mo.kv), cache_config.describe(),
             footprint.per_token_bytes / 1024.0, double(footprint.fixed_bytes(32)) / mib,
             double(footprint.fixed_bytes(so.prefill_chunk)) / mib, so.prefill_chunk,
             double(budget) / mib, options.max_seqs, options.queue);
  fmt::print(stderr, "squat serve: listening on http://{}:{}\n", options.host, port);
  std::fflush(stderr);

  std::thread signal_waiter([&] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    if (signal == SIGUSR1) return;  // the server stopped by itself
    fmt::print(stderr, "squat serve: signal {}, stopping (up to {:g} s for running requests)\n",
               signal, options.shutdown_grace);
    std::fflush(stderr);
    // New requests get 503; running generations get the grace period, then every open
    // response ends with an error its client can recognise; then the connections close.
    // (httplib cuts off streams once stopped, so their last events are written first.)
    scheduler.drain(std::chrono::milliseconds(int64_t(options.shutdown_grace * 1000.0)));
    http.wait_answered(std::chrono::seconds(5));
    http.stop();
  });
  http.listen();
  scheduler.stop();
  pthread_kill(signal_waiter.native_handle(), SIGUSR1);  // no-op wait if a signal came already
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
  cmd->add_option("--max-body", options->max_body,
                  "Largest request body accepted, after gzip/deflate/br decoding (HTTP 413 "
                  "beyond)")
      ->capture_default_str();
  cmd->add_option("--request-timeout", options->request_timeout,
                  "Seconds a client may take to send a whole request, headers and body (HTTP "
                  "408 beyond)")
      ->capture_default_str();
  cmd->add_option("--max-connections", options->max_connections,
                  "Most open connections (each has a thread); when all are taken the one "
                  "waiting longest for its request is dropped (default: max-seqs + queue + 64)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--shutdown-grace", options->shutdown_grace,
                  "On SIGTERM/SIGINT, seconds running requests may take to finish before they "
                  "end with an error")
      ->capture_default_str();
  cmd->add_option("--api-key", options->api_key,
                  "Require 'Authorization: Bearer KEY' on every endpoint but /health (default: "
                  "$SQUAT_API_KEY; none if unset)");
  cmd->add_option("--cors-origin", options->cors_origins,
                  "Allow cross-origin (browser) requests from this Origin, e.g. "
                  "http://localhost:3000 (repeatable; * for any). Others get 403")
      ->allow_extra_args(false);
  cmd->callback([options] { serve(*options); });
}

}  // namespace squat::apps
