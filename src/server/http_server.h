// The HTTP face of the server (cpp-httplib over BoundedServer): OpenAI-compatible
// /v1/completions and /v1/chat/completions (server-sent events when "stream": true),
// /v1/models[/{id}], /health and /metrics. Every request is bounded before it costs memory or
// time: its bytes and time on the wire (transport.h), its decoded body (--max-body), the JSON
// it may hold (request.h) and how many bodies are parsed at once. Cross-origin requests are
// refused unless --cors-origin allows them; --api-key requires "Authorization: Bearer <key>"
// on everything but /health. Handlers parse and tokenize on the connection threads and hand
// generation to the scheduler; a client that disconnects cancels its generation.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <semaphore>
#include <string>
#include <vector>

#include "server/metrics.h"
#include "server/request.h"
#include "server/scheduler.h"
#include "server/transport.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace squat::server {

struct HttpOptions {
  std::string model_id;               // what /v1/models lists and responses name
  int chat_default_max_tokens = 256;  // chat requests without max_tokens (capped by the context)
  std::size_t max_body_bytes = std::size_t(1) << 20;  // --max-body: a body after decoding
  TransportLimits transport;  // --request-timeout, --max-connections (max_request_bytes is
                              // derived from max_body_bytes)
  std::string api_key;        // --api-key / SQUAT_API_KEY; empty: no key required
  std::vector<std::string> cors_origins;  // --cors-origin: allowed Origins ("*": any)
  int parse_slots = 4;                    // request bodies parsed as JSON at once
};

class HttpServer {
 public:
  HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ChatTemplate chat_template,
             Metrics& metrics, HttpOptions options);
  ~HttpServer();

  // Binds host:port (port 0: any free port) and returns the port; squat::Error on failure.
  int bind(const std::string& host, int port);
  // Serves until stop() (from any thread) and every connection has ended.
  void listen();
  // Stops accepting connections; idle ones close, those being answered finish (end the
  // scheduler's generations to end them).
  void stop();
  // Waits up to `limit` for responses being written to finish (before stop()).
  void wait_answered(std::chrono::milliseconds limit) { http_->wait_answered(limit); }

 private:
  void routes();
  void generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader& reader);
  std::string read_body(const httplib::Request& req, const httplib::ContentReader& reader) const;
  bool origin_allowed(const std::string& origin) const;
  bool authorized(const httplib::Request& req) const;
  std::string new_id(Endpoint endpoint);

  Scheduler& scheduler_;
  const Tokenizer& tokenizer_;
  ChatTemplate chat_template_;
  Metrics& metrics_;
  HttpOptions options_;
  std::counting_semaphore<1024> parse_slots_;
  std::unique_ptr<BoundedServer> http_;
};

}  // namespace squat::server
