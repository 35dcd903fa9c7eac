#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "server/request.h"

namespace squat::server {

using nlohmann::json;

namespace {

// Generated text may hold any bytes a token decodes to; invalid UTF-8 becomes U+FFFD rather
// than an exception.
std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const RequestError& e) {
  res.status = e.status();
  if (e.status() == 503) res.set_header("Retry-After", "1");
  res.set_content(error_body(e), "application/json");
}

// A generation in flight, from the HTTP side: its identity and how to format its output.
struct Reply {
  std::shared_ptr<Generation> generation;
  Endpoint endpoint;
  std::string id, model;
  std::time_t created;
  bool include_usage;
  bool chat() const { return endpoint == Endpoint::ChatCompletions; }

  json usage() const {
    const int p = generation->prompt_tokens(), c = generation->completion_tokens();
    return {{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}};
  }
  json base(const char* object) const {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}};
  }
  // One server-sent event with new text (finish_reason null) or the end (reason set).
  std::string event(const std::string& text, const std::string& finish_reason, bool first) const {
    json out = base(chat() ? "chat.completion.chunk" : "text_completion");
    json choice = {{"index", 0}, {"logprobs", nullptr},
                   {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
    if (chat()) {
      json delta = json::object();
      if (first) delta["role"] = "assistant";
      if (!text.empty() || (first && finish_reason.empty())) delta["content"] = text;
      choice["delta"] = delta;
    } else {
      choice["text"] = text;
    }
    out["choices"] = json::array({choice});
    return "data: " + dump(out) + "\n\n";
  }
  std::string usage_event() const {
    json out = base(chat() ? "chat.completion.chunk" : "text_completion");
    out["choices"] = json::array();
    out["usage"] = usage();
    return "data: " + dump(out) + "\n\n";
  }
  std::string whole(const std::string& text) const {
    json out = base(chat() ? "chat.completion" : "text_completion");
    json choice = {{"index", 0}, {"logprobs", nullptr},
                   {"finish_reason", generation->finish_reason()}};
    if (chat()) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      choice["text"] = text;
    }
    out["choices"] = json::array({choice});
    out["usage"] = usage();
    return dump(out);
  }
};

constexpr auto kPoll = std::chrono::milliseconds(100);
constexpr auto kHeartbeat = std::chrono::seconds(1);

// Streams a generation as server-sent events. A failed write means the client went away: the
// generation is cancelled (its cache freed at the scheduler's next step).
void stream(httplib::Response& res, std::shared_ptr<Reply> reply) {
  auto first = std::make_shared<bool>(true);
  auto quiet_since = std::make_shared<Clock::time_point>(Clock::now());
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [reply, first, quiet_since](std::size_t, httplib::DataSink& sink) {
        std::string text;
        const bool done = reply->generation->take(text, kPoll);
        std::string out;
        if (!text.empty() || (*first && reply->chat() && !done)) {
          out += reply->event(text, "", *first);
          *first = false;
        }
        if (done) {
          const Generation& g = *reply->generation;
          if (g.finish_reason() == "error") {
            out += "data: " + error_body(g.error(), "server_error", "") + "\n\n";
          } else {
            out += reply->event("", g.finish_reason(), *first);
            if (reply->include_usage) out += reply->usage_event();
          }
          out += "data: [DONE]\n\n";
        } else if (out.empty() && Clock::now() - *quiet_since > kHeartbeat) {
          out = ": waiting\n\n";  // an SSE comment: detects a client gone while queued
        }
        if (!out.empty()) {
          *quiet_since = Clock::now();
          if (!sink.write(out.data(), out.size())) {
            reply->generation->cancel();
            return false;
          }
        }
        if (done) sink.done();
        return true;
      },
      [reply](bool success) {
        if (!success) reply->generation->cancel();
      });
}

// A whole JSON response. While it is being generated a space is written every second (JSON
// allows leading whitespace): a failed write shows the client left, and cancels the work.
void respond_whole(httplib::Response& res, std::shared_ptr<Reply> reply) {
  auto text = std::make_shared<std::string>();
  auto quiet_since = std::make_shared<Clock::time_point>(Clock::now());
  res.set_chunked_content_provider(
      "application/json",
      [reply, text, quiet_since](std::size_t, httplib::DataSink& sink) {
        const bool done = reply->generation->take(*text, kPoll);
        std::string out;
        if (done) {
          const Generation& g = *reply->generation;
          out = g.finish_reason() == "error" ? error_body(g.error(), "server_error", "")
                                             : reply->whole(*text);
        } else if (Clock::now() - *quiet_since > kHeartbeat) {
          out = " ";
          *quiet_since = Clock::now();
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          reply->generation->cancel();
          return false;
        }
        if (done) sink.done();
        return true;
      },
      [reply](bool success) {
        if (!success) reply->generation->cancel();
      });
}

}  // namespace

HttpServer::HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer,
                       ChatTemplate chat_template, Metrics& metrics, HttpOptions options)
    : scheduler_(scheduler),
      tokenizer_(tokenizer),
      chat_template_(std::move(chat_template)),
      metrics_(metrics),
      options_(std::move(options)),
      http_(std::make_unique<httplib::Server>()) {
  const std::size_t threads = std::size_t(std::max(4, options_.threads));
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(std::size_t(8) << 20);
  routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind(const std::string& host, int port) {
  const bool ok = port == 0 ? (port = http_->bind_to_any_port(host)) > 0
                            : http_->bind_to_port(host, port);
  if (!ok) fail("cannot listen on {}:{} (address in use, or not an address of this machine)", host,
                port);
  return port;
}

void HttpServer::listen() { http_->listen_after_bind(); }

void HttpServer::stop() { http_->stop(); }

void HttpServer::routes() {
  httplib::Server& http = *http_;
  // Only known endpoints get their own label, so a scanner cannot grow the metrics without end.
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    static const char* const known[] = {"/v1/completions", "/v1/chat/completions", "/v1/models",
                                        "/health", "/metrics"};
    std::string endpoint = "other";
    for (const char* k : known)
      if (req.path == k) endpoint = k;
    metrics_.count_request(endpoint, res.status);
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string message =
        res.status == 404 ? fmt::format("no endpoint {} {}", req.method, req.path)
                          : fmt::format("HTTP {}", res.status);
    res.set_content(error_body(message, "invalid_request_error", ""), "application/json");
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string message = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          message = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(error_body(message, "server_error", ""), "application/json");
      });

  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const json out = {{"object", "list"},
                      {"data", json::array({{{"id", options_.model_id},
                                             {"object", "model"},
                                             {"created", 0},
                                             {"owned_by", "squat"}}})}};
    res.set_content(dump(out), "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(resident_set_bytes()), "text/plain; version=0.0.4");
  });

  auto generate = [this](Endpoint endpoint) {
    return [this, endpoint](const httplib::Request& req, httplib::Response& res) {
      const auto arrival = Clock::now();
      auto reply = std::make_shared<Reply>();
      try {
        const int context = scheduler_.options().context;
        CompletionRequest r = parse_completion_request(req.body, endpoint, context,
                                                       options_.chat_default_max_tokens);
        const bool chat = endpoint == Endpoint::ChatCompletions;
        const char* param = chat ? "messages" : "prompt";
        GenerationJob job;
        try {
          const std::string text = chat ? chat_template_.apply(r.messages, true) : r.prompt;
          job.prompt = tokenizer_.encode(text, true, chat);
        } catch (const Error& e) {  // invalid UTF-8, a role the template cannot express
          refuse(param, e.what());
        }
        if (job.prompt.empty()) refuse(param, fmt::format("'{}' is empty after tokenization", param));
        // Without an explicit max_tokens, a long prompt gets what the context leaves.
        const int room = context - int(job.prompt.size());
        job.max_tokens =
            r.max_tokens_given ? r.max_tokens : std::max(1, std::min(r.max_tokens, room));
        job.sampling = r.sampling;
        if (!r.seeded) job.sampling.seed = std::random_device{}();
        job.stop = r.stop;
        job.ignore_eos = r.ignore_eos;
        reply->generation = scheduler_.submit(std::move(job), arrival);
        reply->endpoint = endpoint;
        reply->model = r.model.empty() ? options_.model_id : r.model;
        reply->id = fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", next_id_.fetch_add(1) + 1);
        reply->created = std::time(nullptr);
        reply->include_usage = r.include_usage;
        if (r.stream) {
          stream(res, reply);
        } else {
          respond_whole(res, reply);
        }
      } catch (const RequestError& e) {
        send_error(res, e);
      }
    };
  };
  http.Post("/v1/completions", generate(Endpoint::Completions));
  http.Post("/v1/chat/completions", generate(Endpoint::ChatCompletions));
}

}  // namespace squat::server
