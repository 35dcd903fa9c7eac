// The HTTP face of the server (cpp-httplib): OpenAI-compatible /v1/completions and
// /v1/chat/completions (server-sent events when "stream": true), /v1/models, /health and
// /metrics. Handlers parse and tokenize on the HTTP threads and hand generation to the
// scheduler; a client that disconnects cancels its generation.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "server/metrics.h"
#include "server/scheduler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace squat::server {

struct HttpOptions {
  std::string model_id;               // what /v1/models lists and responses name
  int chat_default_max_tokens = 256;  // chat requests without max_tokens (capped by the context)
  int threads = 64;                   // HTTP worker threads (a streaming request holds one)
};

class HttpServer {
 public:
  HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ChatTemplate chat_template,
             Metrics& metrics, HttpOptions options);
  ~HttpServer();

  // Binds host:port (port 0: any free port) and returns the port; squat::Error on failure.
  int bind(const std::string& host, int port);
  // Serves until stop() (from any thread).
  void listen();
  void stop();

 private:
  void routes();

  Scheduler& scheduler_;
  const Tokenizer& tokenizer_;
  ChatTemplate chat_template_;
  Metrics& metrics_;
  HttpOptions options_;
  std::atomic<uint64_t> next_id_{0};
  std::unique_ptr<httplib::Server> http_;
};

}  // namespace squat::server
