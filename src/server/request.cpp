#include "server/request.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace squat::server {

using nlohmann::json;

void refuse(const std::string& param, const std::string& message) {
  throw RequestError(400, "invalid_request_error", param, message);
}

std::string error_body(const std::string& message, const std::string& type,
                       const std::string& param) {
  const json body = {{"error",
                      {{"message", message},
                       {"type", type},
                       {"param", param.empty() ? json(nullptr) : json(param)},
                       {"code", nullptr}}}};
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string error_body(const RequestError& error) {
  return error_body(error.what(), error.type(), error.param());
}

namespace {

const char* type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a fractional number";
    default:
      return "a number";
  }
}

// The field's value, or nullptr when absent or null (both mean "use the default").
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number_in(const json& body, const char* name, double low, double high, double fallback,
                 bool low_open = false) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) {
    refuse(name, fmt::format("'{}' must be a number, got {}", name, type_name(*v)));
  }
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < low || x > high || (low_open && x == low)) {
    refuse(name, fmt::format("'{}' must be in {}{}, {}], got {}", name, low_open ? "(" : "[", low,
                             high, v->dump()));
  }
  return x;
}

int64_t integer_in(const json& body, const char* name, int64_t low, int64_t high,
                   int64_t fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number_integer()) {
    // An integer too large for 64 bits is parsed as a float: say it is out of range.
    const double x = v->is_number_float() ? v->get<double>() : 0.5;
    if (x == std::floor(x) && (x < double(low) || x > double(high))) {
      refuse(name, fmt::format("'{}' must be in [{}, {}], got {}", name, low, high, v->dump()));
    }
    refuse(name, fmt::format("'{}' must be an integer, got {}", name, type_name(*v)));
  }
  // Unsigned values beyond int64 come back as huge unsigned numbers: compare as such.
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(high)) {
    refuse(name, fmt::format("'{}' must be in [{}, {}], got {}", name, low, high, v->dump()));
  }
  const int64_t x = v->get<int64_t>();
  if (x < low || x > high) {
    refuse(name, fmt::format("'{}' must be in [{}, {}], got {}", name, low, high, x));
  }
  return x;
}

// A sampling parameter: checked as the float the sampler gets, so a double that passes the
// range but rounds outside it (top_p 1e-300 -> 0) is refused here, not in the middle of a step.
float float_in(const json& body, const char* name, float low, float high, float fallback,
               bool low_open = false) {
  const double x = number_in(body, name, low, high, fallback, low_open);
  const float f = float(x);
  if (!std::isfinite(f) || f < low || f > high || (low_open && f == low)) {
    refuse(name, fmt::format("'{}' must be in {}{}, {}] as a 32-bit float; {} rounds to {}", name,
                             low_open ? "(" : "[", low, high, field(body, name)->dump(), f));
  }
  return f;
}

bool boolean(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) {
    refuse(name, fmt::format("'{}' must be true or false, got {}", name, type_name(*v)));
  }
  return v->get<bool>();
}

std::string text_of(const json& v, const std::string& param) {
  if (!v.is_string()) {
    refuse(param, fmt::format("'{}' must be a string, got {}", param, type_name(v)));
  }
  return v.get<std::string>();
}

std::vector<std::string> stop_strings(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 4) {
      refuse("stop", fmt::format("'stop' takes at most 4 strings, got {}", v->size()));
    }
    for (std::size_t i = 0; i < v->size(); ++i) {
      stops.push_back(text_of((*v)[i], fmt::format("stop[{}]", i)));
    }
  } else {
    refuse("stop",
           fmt::format("'stop' must be a string or an array of strings, got {}", type_name(*v)));
  }
  for (const std::string& s : stops) {
    if (s.empty() || s.size() > 256) {
      refuse("stop", fmt::format("each stop string must have 1 to 256 bytes, got {}", s.size()));
    }
  }
  return stops;
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    refuse(param, fmt::format("'{}' must be a string or an array of text parts, got {}", param,
                              type_name(content)));
  }
  std::string text;
  for (std::size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string where = fmt::format("{}[{}]", param, i);
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text")) {
      refuse(where, fmt::format("'{}' must be {{\"type\": \"text\", \"text\": ...}}; only text "
                                "content is supported",
                                where));
    }
    text += text_of(part["text"], where + ".text");
  }
  return text;
}

std::vector<ChatMessage> chat_messages(const json& body, int max_messages) {
  const json* v = field(body, "messages");
  if (!v) refuse("messages", "'messages' is required: an array of {role, content} objects");
  if (!v->is_array() || v->empty()) {
    refuse("messages", fmt::format("'messages' must be a non-empty array of {{role, content}} "
                                   "objects, got {}",
                                   v->is_array() ? "an empty array" : type_name(*v)));
  }
  if (v->size() > std::size_t(max_messages)) {
    refuse("messages", fmt::format("'messages' holds {} messages; a conversation that fits the "
                                   "context of {} tokens has fewer",
                                   v->size(), max_messages));
  }
  std::vector<ChatMessage> messages;
  for (std::size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) {
      refuse(where, fmt::format("'{}' must be an object, got {}", where, type_name(m)));
    }
    if (!m.contains("role")) refuse(where + ".role", fmt::format("'{}.role' is required", where));
    const std::string role = text_of(m["role"], where + ".role");
    if (role != "system" && role != "user" && role != "assistant" && role != "developer") {
      refuse(where + ".role",
             fmt::format("'{}.role' must be system, developer, user or assistant, got '{}'", where,
                         role));
    }
    if (!m.contains("content") || m["content"].is_null()) {
      refuse(where + ".content", fmt::format("'{}.content' is required", where));
    }
    messages.push_back(
        {role == "developer" ? "system" : role, message_content(m["content"], where + ".content")});
  }
  return messages;
}

// Options of the OpenAI API this server does not implement: refused unless left at their
// neutral value, so a client never silently gets something other than it asked for.
void refuse_unsupported(const json& body, Endpoint endpoint) {
  if (const json* v = field(body, "logprobs")) {
    if (!(v->is_boolean() && !v->get<bool>())) {
      refuse("logprobs", "'logprobs' is not supported by this server");
    }
  }
  if (boolean(body, "echo", false)) refuse("echo", "'echo' is not supported by this server");
  if (integer_in(body, "best_of", 1, 1 << 20, 1) != 1) {
    refuse("best_of", "only best_of = 1 is supported");
  }
  if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty())) {
    refuse("logit_bias", "'logit_bias' is not supported by this server");
  }
  if (const json* v = field(body, "suffix"); v && endpoint == Endpoint::Completions) {
    refuse("suffix", "'suffix' is not supported by this server");
  }
  if (const json* v = field(body, "tools"); v && !(v->is_array() && v->empty())) {
    refuse("tools", "'tools' is not supported by this server");
  }
  if (const json* v = field(body, "response_format")) {
    if (!v->is_object() || v->value("type", json()) != "text") {
      refuse("response_format",
             "'response_format' is not supported by this server: only {\"type\": \"text\"} "
             "(no JSON mode or schema)");
    }
  }
}

// A prompt of token ids: [1, 2, 3], or [[1, 2, 3]] (one prompt of a batch).
bool token_prompt(const json& p, int context_tokens, std::vector<int32_t>& out) {
  const json* ids = &p;
  if (p.size() == 1 && p[0].is_array()) ids = &p[0];
  if (ids->empty() || !(*ids)[0].is_number()) return false;
  if (int64_t(ids->size()) >= context_tokens) {
    refuse("prompt", fmt::format("the prompt has {} tokens but a sequence holds at most {} "
                                 "(prompt and output together; the server's -c/--context)",
                                 ids->size(), context_tokens));
  }
  for (std::size_t i = 0; i < ids->size(); ++i) {
    const json& id = (*ids)[i];
    if (!id.is_number_integer() ||
        (id.is_number_integer() && !id.is_number_unsigned() && id.get<int64_t>() < 0) ||
        (id.is_number_unsigned() && id.get<uint64_t>() > uint64_t(INT32_MAX))) {
      refuse("prompt", fmt::format("'prompt' as token ids must hold non-negative integers; "
                                   "item {} is {}",
                                   i, id.dump()));
    }
    out.push_back(int32_t(id.get<int64_t>()));
  }
  return true;
}

}  // namespace

int max_json_values(int context_tokens) { return 4 * std::max(context_tokens, 1024); }

namespace {

// The body as JSON, refused before it costs more than its bounds allow: nesting depth and the
// number of values are checked while parsing, not after.
json parse_bounded(const std::string& text, int context_tokens) {
  const int max_values = max_json_values(context_tokens);
  int values = 0;
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json&) {
    if (depth > kMaxJsonDepth) {
      refuse("", fmt::format("the request body nests JSON deeper than {} levels", kMaxJsonDepth));
    }
    if (event == json::parse_event_t::value || event == json::parse_event_t::object_start ||
        event == json::parse_event_t::array_start) {
      if (++values > max_values) {
        refuse("", fmt::format("the request body holds more than {} JSON values (a prompt of "
                               "token ids may hold up to the context of {} tokens)",
                               max_values, context_tokens));
      }
    }
    return true;
  };
  try {
    return json::parse(text, check);
  } catch (const json::exception& e) {
    refuse("", fmt::format("the request body is not valid JSON ({})", e.what()));
  }
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& text, Endpoint endpoint,
                                           int context_tokens, int chat_default_max_tokens) {
  const json body = parse_bounded(text, context_tokens);
  if (!body.is_object()) {
    refuse("", fmt::format("the request body must be a JSON object, got {}", type_name(body)));
  }
  CompletionRequest r;
  r.endpoint = endpoint;
  if (const json* v = field(body, "model")) r.model = text_of(*v, "model");

  if (endpoint == Endpoint::Completions) {
    const json* p = field(body, "prompt");
    if (!p) refuse("prompt", "'prompt' is required: the text to continue");
    if (p->is_array() && token_prompt(*p, context_tokens, r.prompt_tokens)) {
      r.prompt_is_tokens = true;
    } else if (p->is_array()) {
      if (p->size() != 1) {
        refuse("prompt", fmt::format("'prompt' as an array must hold exactly one string (send one "
                                     "request per prompt), got {} items",
                                     p->size()));
      }
      r.prompt = text_of((*p)[0], "prompt[0]");
    } else {
      r.prompt = text_of(*p, "prompt");
    }
  } else {
    r.messages = chat_messages(body, context_tokens);
  }

  const int default_max = endpoint == Endpoint::Completions
                              ? std::min(16, context_tokens)
                              : std::min(chat_default_max_tokens, context_tokens);
  const char* max_name =
      field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  r.max_tokens = int(integer_in(body, max_name, 1, context_tokens, default_max));
  r.max_tokens_given = field(body, max_name) != nullptr;

  r.sampling.temperature = float_in(body, "temperature", 0.0f, 2.0f, 1.0f);
  r.sampling.top_p = float_in(body, "top_p", 0.0f, 1.0f, 1.0f, true);
  r.sampling.top_k = int(integer_in(body, "top_k", 0, 1 << 30, 0));
  // OpenAI's penalties, and llama.cpp's min_p and repeat_penalty (extensions).
  r.sampling.presence_penalty = float_in(body, "presence_penalty", -2.0f, 2.0f, 0.0f);
  r.sampling.frequency_penalty = float_in(body, "frequency_penalty", -2.0f, 2.0f, 0.0f);
  r.sampling.min_p = float_in(body, "min_p", 0.0f, 1.0f, 0.0f);
  r.sampling.repeat_penalty = float_in(body, "repeat_penalty", 0.0f, 10.0f, 1.0f, true);
  if (field(body, "seed")) {
    const int64_t seed = integer_in(body, "seed", std::numeric_limits<int64_t>::min(),
                                    std::numeric_limits<int64_t>::max(), 0);
    // -1 is llama.cpp's "random seed" (its server's default): the server draws one.
    r.seeded = seed != -1;
    if (r.seeded) r.sampling.seed = uint64_t(seed);
  }
  if (integer_in(body, "n", 1, 1 << 20, 1) != 1) {
    refuse("n", "only n = 1 is supported: send one request per completion");
  }
  r.stop = stop_strings(body);
  r.stream = boolean(body, "stream", false);
  r.ignore_eos = boolean(body, "ignore_eos", false);
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object()) {
      refuse("stream_options",
             fmt::format("'stream_options' must be an object, got {}", type_name(*v)));
    }
    if (!r.stream) refuse("stream_options", "'stream_options' needs \"stream\": true");
    r.include_usage = boolean(*v, "include_usage", false);
  }
  refuse_unsupported(body, endpoint);
  return r;
}

}  // namespace squat::server
