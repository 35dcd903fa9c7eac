// The OpenAI-style request bodies of /v1/completions and /v1/chat/completions: parsed and
// checked field by field, so a bad request gets one 4xx error naming the field and what was
// expected, in OpenAI's error shape {"error": {"message", "type", "param", "code"}}.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "model/sampler.h"
#include "tokenizer/chat_template.h"

namespace squat::server {

// A request the server refuses: HTTP status, OpenAI error type and the offending field (empty
// when the whole request is at fault).
class RequestError : public std::runtime_error {
 public:
  RequestError(int status, std::string type, std::string param, const std::string& message)
      : std::runtime_error(message),
        status_(status),
        type_(std::move(type)),
        param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }

 private:
  int status_;
  std::string type_, param_;
};

// 400 invalid_request_error naming `param`.
[[noreturn]] void refuse(const std::string& param, const std::string& message);

// The JSON body of an error response (param null when empty).
std::string error_body(const std::string& message, const std::string& type,
                       const std::string& param);
std::string error_body(const RequestError& error);

enum class Endpoint { Completions, ChatCompletions };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;                   // as the client named it (responses name the served model)
  std::string prompt;                  // completions
  std::vector<int32_t> prompt_tokens;  // completions given token ids (ids >= 0; vocab unchecked)
  bool prompt_is_tokens = false;
  std::vector<ChatMessage> messages;  // chat completions
  int max_tokens = 16;
  bool max_tokens_given = false;  // false: the default, which a long prompt may shorten
  SamplerParams sampling;
  bool seeded = false;  // false: the server draws a seed
  std::vector<std::string> stop;
  bool stream = false;
  bool ignore_eos = false;     // extension (as in vLLM and llama.cpp): always max_tokens tokens
  bool include_usage = false;  // stream_options.include_usage: a last chunk with token counts
};

// Defaults (OpenAI's): max_tokens 16 for completions, and for chat what the context leaves
// (capped at `chat_default_max_tokens`); temperature 1, top_p 1, no top_k. Throws RequestError
// for malformed JSON, JSON nested deeper than kMaxJsonDepth or holding more values than
// max_json_values(context_tokens), a field of the wrong type or out of range (sampling numbers
// checked as the 32-bit floats the sampler uses), n != 1, and options this server does not
// implement (logprobs, echo, best_of > 1, logit_bias, suffix, tools, response_format other
// than text). Penalties: presence/frequency in [-2, 2], repeat_penalty in (0, 10], min_p in
// [0, 1] (over the sampler's last 64 tokens, prompt included). `context_tokens`: the most a sequence may hold, the bound for max_tokens, for a
// prompt given as token ids and for the number of chat messages.
constexpr int kMaxJsonDepth = 16;
// Values (numbers, strings, arrays, objects...) a request body may hold: room for a prompt of
// token ids as long as the context, and then some.
int max_json_values(int context_tokens);

CompletionRequest parse_completion_request(const std::string& body, Endpoint endpoint,
                                           int context_tokens, int chat_default_max_tokens = 256);

}  // namespace squat::server
