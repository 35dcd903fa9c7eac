#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <malloc.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "core/process_memory.h"
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
    json choice = {{"index", 0},
                   {"logprobs", nullptr},
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
    json choice = {{"index", 0},
                   {"logprobs", nullptr},
                   {"finish_reason", to_string(generation->finish_reason())}};
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

// The status a generation's end answers with: 200, or for one that failed after admission 500
// (an error while generating), 503 (the server stopped first), 499 (the client left; nginx's
// code, seen only in the metrics).
int status_of(const Generation& g) {
  switch (g.finish_reason()) {
    case FinishReason::Error:
      return 500;
    case FinishReason::Shutdown:
      return 503;
    case FinishReason::Cancelled:
      return 499;
    default:
      return 200;
  }
}

std::string failure_body(const Generation& g) {
  return error_body(
      g.error().empty() ? "the generation was cancelled" : g.error(),
      g.finish_reason() == FinishReason::Shutdown ? "server_shutting_down" : "server_error", "");
}

// Only known endpoints get their own label, so a scanner cannot grow the metrics without end.
std::string endpoint_label(const std::string& path) {
  static const char* const known[] = {"/v1/completions", "/v1/chat/completions", "/v1/models",
                                      "/health", "/metrics"};
  for (const char* k : known)
    if (path == k) return k;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models";
  return "other";
}

// Streams a generation as server-sent events. A failed write means the client went away: the
// generation is cancelled (its cache freed at the scheduler's next step). The request is
// counted in the metrics when its outcome is known, before the last event is written; a stream
// that fails after admission ends with an error event and [DONE] and counts as 500/503.
void stream(httplib::Response& res, std::shared_ptr<Reply> reply, Metrics& metrics,
            std::string label) {
  auto first = std::make_shared<bool>(true);
  auto counted = std::make_shared<bool>(false);
  auto quiet_since = std::make_shared<Clock::time_point>(Clock::now());
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [reply, first, counted, quiet_since, &metrics, label](std::size_t, httplib::DataSink& sink) {
        std::string text;
        const bool done = reply->generation->take(text, kPoll);
        std::string out;
        if (!text.empty() || (*first && reply->chat() && !done)) {
          out += reply->event(text, "", *first);
          *first = false;
        }
        if (done) {
          const Generation& g = *reply->generation;
          if (g.failed()) {
            out += "data: " + failure_body(g) + "\n\n";
          } else {
            out += reply->event("", to_string(g.finish_reason()), *first);
            if (reply->include_usage) out += reply->usage_event();
          }
          out += "data: [DONE]\n\n";
          metrics.count_request(label, status_of(g));
          *counted = true;
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
      [reply, counted, &metrics, label](bool success) {
        if (success) return;
        reply->generation->cancel();
        if (!*counted) metrics.count_request(label, 499);
      });
}

// A whole JSON response: the connection thread waits for the end (watching for the client
// leaving, which cancels the work), so the status tells the outcome: 200, or 500/503 with an
// error body when the generation failed after admission.
void respond_whole(httplib::Response& res, const Reply& reply) {
  std::string text;
  bool cancelled = false;
  while (!reply.generation->take(text, kPoll)) {
    if (!cancelled && client_gone()) {
      reply.generation->cancel();
      cancelled = true;
    }
  }
  const Generation& g = *reply.generation;
  res.status = status_of(g);
  if (res.status == 200) {
    res.set_content(reply.whole(text), "application/json");
  } else {
    if (res.status == 503) res.set_header("Retry-After", "1");
    res.set_content(failure_body(g), "application/json");
  }
}

bool has_body(const httplib::Request& req) {
  return req.has_header("Transfer-Encoding") ||
         (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0");
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Length-independent comparison, so the key cannot be guessed byte by byte from timings.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= uint8_t(a[i] ^ b[i % std::max<std::size_t>(1, b.size())]);
  return diff == 0;
}

const char* status_text(int status) {
  switch (status) {
    case 400:
      return "malformed HTTP request (request line, headers or body framing)";
    case 413:
      return "the request body is too large";
    case 414:
      return "the request line is longer than 8192 bytes";
    case 416:
      return "unsatisfiable Range header";
    default:
      return nullptr;
  }
}

}  // namespace

HttpServer::HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ChatTemplate chat_template,
                       Metrics& metrics, HttpOptions options)
    : scheduler_(scheduler),
      tokenizer_(tokenizer),
      chat_template_(std::move(chat_template)),
      metrics_(metrics),
      options_(std::move(options)),
      parse_slots_(std::clamp(options_.parse_slots, 1, 1024)) {
  TransportLimits limits = options_.transport;
  // A chunked body's framing costs at most a few bytes per chunk; a compressed one is smaller
  // than what it decodes to, which read_body bounds.
  limits.max_request_bytes =
      limits.max_header_bytes + options_.max_body_bytes + options_.max_body_bytes / 4 + 4096;
  http_ = std::make_unique<BoundedServer>(limits);
  http_->on_refusal = [this](int status) { metrics_.count_request("other", status); };
  http_->set_write_timeout(
      std::chrono::duration_cast<std::chrono::seconds>(limits.write_timeout).count());
  routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind(const std::string& host, int port) {
  const bool ok =
      port == 0 ? (port = http_->bind_to_any_port(host)) > 0 : http_->bind_to_port(host, port);
  if (!ok)
    fail("cannot listen on {}:{} (address in use, or not an address of this machine)", host, port);
  return port;
}

void HttpServer::listen() { http_->listen_after_bind(); }

void HttpServer::stop() { http_->stop_serving(); }

bool HttpServer::origin_allowed(const std::string& origin) const {
  for (const std::string& o : options_.cors_origins)
    if (o == "*" || o == origin) return true;
  return false;
}

bool HttpServer::authorized(const httplib::Request& req) const {
  return same_secret(req.get_header_value("Authorization"), "Bearer " + options_.api_key);
}

std::string HttpServer::new_id(Endpoint endpoint) {
  thread_local std::mt19937_64 random(std::random_device{}());
  return fmt::format("{}-{:016x}{:08x}",
                     endpoint == Endpoint::ChatCompletions ? "chatcmpl" : "cmpl", random(),
                     uint32_t(random()));
}

std::string HttpServer::read_body(const httplib::Request& req,
                                  const httplib::ContentReader& reader) const {
  std::string body;
  bool too_large = false;
  const std::size_t limit = options_.max_body_bytes;
  const bool ok = reader([&](const char* data, std::size_t n) {
    if (body.size() + n > limit) {
      too_large = true;
      return false;
    }
    body.append(data, n);
    return true;
  });
  if (ok) return body;
  Connection* c = current_connection();
  if (c) c->close_after = true;  // the rest of the body is still on the wire
  if (too_large) {
    throw RequestError(413, "invalid_request_error", "",
                       fmt::format("the request body is larger than {} bytes after decoding "
                                   "(the server's --max-body)",
                                   limit));
  }
  if (c && c->refused_status != 0) {
    throw RequestError(c->refused_status, "invalid_request_error", "", c->refused_message);
  }
  const std::string encoding = req.get_header_value("Content-Encoding");
  throw RequestError(400, "invalid_request_error", "",
                     encoding.empty() ? "the request body could not be read (broken chunked "
                                        "encoding, or the client stopped sending)"
                                      : fmt::format("the request body could not be read or "
                                                    "decoded as Content-Encoding {}",
                                                    encoding));
}

void HttpServer::routes() {
  BoundedServer& http = *http_;
  // Counted before the response is written, so a client that reads /metrics right after its
  // answer finds it counted (streams count themselves when they end).
  http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (res.has_header("X-Squat-Counted")) {
      res.headers.erase("X-Squat-Counted");
      return;
    }
    metrics_.count_request(endpoint_label(req.path), res.status);
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    Connection* c = current_connection();
    if (c && c->refused_status != 0 && res.status == 400) {
      res.status = c->refused_status;
      res.body.clear();
      res.set_content(error_body(c->refused_message, "invalid_request_error", ""),
                      "application/json");
      return;
    }
    if (!res.body.empty()) return;
    if (res.status == 400 || res.status == 414) {
      // httplib could not parse the request line or headers: what follows on the connection
      // cannot be trusted to start a request (one answer per garbage line otherwise).
      if (c) c->close_after = true;
      res.set_header("Connection", "close");
    }
    const char* text = status_text(res.status);
    const std::string message = res.status == 404
                                    ? fmt::format("no endpoint {} {}", req.method, req.path)
                                : text ? std::string(text)
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

  // Before the body is read: who may ask (CORS, API key), and whether a body is acceptable at
  // all. A refused request's body is left unread and its connection closed after the answer.
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    using R = httplib::Server::HandlerResponse;
    http_->mark_handling();
    const bool body = has_body(req);
    auto refuse_with = [&](int status, const std::string& message) {
      res.status = status;
      res.set_content(error_body(message, "invalid_request_error", ""), "application/json");
      if (body) {
        if (Connection* c = current_connection()) c->close_after = true;
        res.set_header("Connection", "close");
      }
      return R::Handled;
    };
    // Framing that two parsers could read differently (request smuggling through a proxy):
    // several Content-Lengths that disagree, or one beside Transfer-Encoding (RFC 9112 6.3).
    if (body) {
      const auto lengths = req.headers.equal_range("Content-Length");
      for (auto it = lengths.first; it != lengths.second; ++it) {
        if (it->second != lengths.first->second) {
          return refuse_with(400, "the request has Content-Length headers that disagree");
        }
      }
      if (req.has_header("Transfer-Encoding") && req.has_header("Content-Length")) {
        return refuse_with(400,
                           "the request has both Content-Length and Transfer-Encoding: "
                           "send one of them");
      }
    }
    const std::string origin = req.get_header_value("Origin");
    if (!origin.empty()) {
      // Browsers send Origin on cross-origin requests (and on POSTs); a page elsewhere must
      // not be able to use a local server unless it was allowed.
      if (!origin_allowed(origin)) {
        return refuse_with(403, fmt::format("cross-origin requests from {} are refused; start "
                                            "the server with --cors-origin {} to allow them",
                                            origin, origin));
      }
      const bool any = std::find(options_.cors_origins.begin(), options_.cors_origins.end(), "*") !=
                       options_.cors_origins.end();
      res.set_header("Access-Control-Allow-Origin", any ? "*" : origin);
      res.set_header("Vary", "Origin");
    }
    if (req.method == "OPTIONS") {  // a CORS preflight (or a plain OPTIONS)
      res.status = 204;
      res.set_header("Allow", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Max-Age", "600");
      if (body) return refuse_with(400, "OPTIONS takes no request body");
      return R::Handled;
    }
    if (!options_.api_key.empty() && req.path != "/health" && !authorized(req)) {
      res.set_header("WWW-Authenticate", "Bearer");
      return refuse_with(401, req.has_header("Authorization")
                                  ? "the API key is wrong: send Authorization: Bearer <the "
                                    "server's --api-key or SQUAT_API_KEY>"
                                  : "this server needs an API key: send Authorization: Bearer "
                                    "<the server's --api-key or SQUAT_API_KEY>");
    }
    const bool generation = req.method == "POST" &&
                            (req.path == "/v1/completions" || req.path == "/v1/chat/completions");
    if (!generation) {
      if (!body) return R::Unhandled;
      const std::string label = endpoint_label(req.path);
      return refuse_with(label == "other" ? 404 : 405,
                         label == "other"
                             ? fmt::format("no endpoint {} {}", req.method, req.path)
                             : fmt::format("{} {} is not supported: {} takes GET without a body",
                                           req.method, req.path, req.path));
    }
    const std::string transfer = lower(req.get_header_value("Transfer-Encoding"));
    if (!transfer.empty() && transfer != "chunked") {
      return refuse_with(
          501, fmt::format("Transfer-Encoding {} is not supported (chunked only)", transfer));
    }
    if (transfer.empty() && !req.has_header("Content-Length")) {
      return refuse_with(411, "a request body needs Content-Length or chunked Transfer-Encoding");
    }
    if (transfer.empty()) {
      const std::string length = req.get_header_value("Content-Length");
      errno = 0;
      char* end = nullptr;
      const unsigned long long n = std::strtoull(length.c_str(), &end, 10);
      if (length.empty() || length.find_first_not_of("0123456789") != std::string::npos ||
          *end != '\0' || errno != 0) {
        return refuse_with(400, fmt::format("Content-Length '{}' is not a byte count", length));
      }
      if (n > options_.max_body_bytes) {
        return refuse_with(413, fmt::format("the request body has {} bytes, more than the "
                                            "server's --max-body of {} bytes",
                                            n, options_.max_body_bytes));
      }
    }
    const std::string encoding = lower(req.get_header_value("Content-Encoding"));
    if (!encoding.empty() && encoding != "identity" && encoding != "gzip" &&
        encoding != "deflate" && encoding != "br") {
      return refuse_with(415, fmt::format("Content-Encoding {} is not supported (gzip, deflate, "
                                          "br or none)",
                                          encoding));
    }
    if (req.is_multipart_form_data()) {
      return refuse_with(415,
                         "multipart form data is not accepted: send the request as a JSON "
                         "object (Content-Type: application/json)");
    }
    return R::Unhandled;
  });

  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  auto model_object = [this] {
    return json{
        {"id", options_.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "squat"}};
  };
  http.Get("/v1/models", [model_object](const httplib::Request&, httplib::Response& res) {
    const json out = {{"object", "list"}, {"data", json::array({model_object()})}};
    res.set_content(dump(out), "application/json");
  });
  http.Get(R"(/v1/models/(.+))", [this, model_object](const httplib::Request& req,
                                                      httplib::Response& res) {
    const std::string id = req.matches[1];
    if (id != options_.model_id) {
      res.status = 404;
      json body = json::parse(error_body(fmt::format("the model '{}' does not exist; this server "
                                                     "serves '{}'",
                                                     id, options_.model_id),
                                         "invalid_request_error", "model"));
      body["error"]["code"] = "model_not_found";
      res.set_content(dump(body), "application/json");
      return;
    }
    res.set_content(dump(model_object()), "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(resident_set_bytes(), peak_resident_set_bytes()),
                    "text/plain; version=0.0.4");
  });

  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res,
                                      const httplib::ContentReader& reader) {
    generate(Endpoint::Completions, req, res, reader);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res,
                                           const httplib::ContentReader& reader) {
    generate(Endpoint::ChatCompletions, req, res, reader);
  });
}

void HttpServer::generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res,
                          const httplib::ContentReader& reader) {
  const auto arrival = Clock::now();
  auto reply = std::make_shared<Reply>();
  try {
    std::string body = read_body(req, reader);
    const int context = scheduler_.options().context;
    CompletionRequest r;
    {
      // Parsing costs many times the body's size: only a few bodies at once, and large ones
      // give their memory back to the system afterwards.
      parse_slots_.acquire();
      try {
        r = parse_completion_request(body, endpoint, context, options_.chat_default_max_tokens);
      } catch (const RequestError& e) {
        parse_slots_.release();
        const std::string type = lower(req.get_header_value("Content-Type"));
        if (e.param().empty() && type.rfind("application/x-www-form-urlencoded", 0) == 0) {
          throw RequestError(e.status(), e.type(), "",
                             std::string(e.what()) +
                                 "; the body came as a form (curl -d sends one): it must be a "
                                 "JSON object, e.g. curl -H 'Content-Type: application/json' "
                                 "-d '{\"prompt\": \"Hello\"}'");
        }
        throw;
      }
      parse_slots_.release();
      if (body.size() > (std::size_t(256) << 10)) {
        std::string().swap(body);
        malloc_trim(0);
      }
    }
    const bool chat = endpoint == Endpoint::ChatCompletions;
    const char* param = chat ? "messages" : "prompt";
    GenerationJob job;
    try {
      if (chat) {
        // Message content is plain text: only the template's own delimiters become control
        // tokens, so a user cannot forge a system turn with "<|im_start|>system".
        job.prompt = tokenizer_.encode_chat(chat_template_.render(r.messages, true), true);
      } else if (r.prompt_is_tokens) {
        const std::size_t vocab = tokenizer_.vocab_size();
        for (std::size_t i = 0; i < r.prompt_tokens.size(); ++i) {
          if (std::size_t(r.prompt_tokens[i]) >= vocab) {
            refuse("prompt", fmt::format("'prompt' token id {} (item {}) is not in the "
                                         "vocabulary of {} tokens",
                                         r.prompt_tokens[i], i, vocab));
          }
        }
        job.prompt = std::move(r.prompt_tokens);
      } else {
        job.prompt = tokenizer_.encode(r.prompt, true, false);
      }
    } catch (const Error& e) {  // invalid UTF-8, a role the template cannot express
      refuse(param, e.what());
    }
    if (job.prompt.empty()) refuse(param, fmt::format("'{}' is empty after tokenization", param));
    // Without an explicit max_tokens, a long prompt gets what the context leaves.
    const int room = context - int(job.prompt.size());
    job.max_tokens = r.max_tokens_given ? r.max_tokens : std::max(1, std::min(r.max_tokens, room));
    job.sampling = r.sampling;
    if (!r.seeded) job.sampling.seed = std::random_device{}();
    job.stop = r.stop;
    job.ignore_eos = r.ignore_eos;
    reply->generation = scheduler_.submit(std::move(job), arrival);
    reply->endpoint = endpoint;
    reply->model = options_.model_id;  // the model that answers, whatever the client named
    reply->id = new_id(endpoint);
    reply->created = std::time(nullptr);
    reply->include_usage = r.include_usage;
    if (r.stream) {
      res.set_header("X-Squat-Counted", "1");  // the stream counts itself when it ends
      stream(res, reply, metrics_, endpoint_label(req.path));
    } else {
      respond_whole(res, *reply);
    }
  } catch (const RequestError& e) {
    send_error(res, e);
  }
}

}  // namespace squat::server
