// Request bodies: every accepted field reaches the request; every bad one is refused with a
// 400 naming it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/request.h"

namespace squat::server {
namespace {

constexpr int kContext = 1024;

CompletionRequest completion(const std::string& body) {
  return parse_completion_request(body, Endpoint::Completions, kContext);
}
CompletionRequest chat(const std::string& body) {
  return parse_completion_request(body, Endpoint::ChatCompletions, kContext, 256);
}

// The field a refused body names (empty when none), or "accepted".
std::string refused_param(const std::string& body, Endpoint endpoint = Endpoint::Completions) {
  try {
    parse_completion_request(body, endpoint, kContext);
  } catch (const RequestError& e) {
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_EQ(e.type(), "invalid_request_error");
    EXPECT_FALSE(std::string(e.what()).empty());
    return e.param();
  }
  return "accepted";
}

TEST(Request, CompletionFieldsAndDefaults) {
  const CompletionRequest r = completion(R"({"model":"m","prompt":"Hello"})");
  EXPECT_EQ(r.prompt, "Hello");
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FALSE(r.seeded);
  EXPECT_FALSE(r.stream);
  EXPECT_TRUE(r.stop.empty());

  const CompletionRequest s = completion(
      R"({"prompt":["Hi"],"max_tokens":7,"temperature":0,"top_p":0.5,"top_k":3,"seed":42,
          "stop":["a","bc"],"stream":true,"stream_options":{"include_usage":true},"n":1,
          "user":"ignored","presence_penalty":0})");
  EXPECT_EQ(s.prompt, "Hi");
  EXPECT_EQ(s.max_tokens, 7);
  EXPECT_TRUE(s.max_tokens_given);
  EXPECT_FLOAT_EQ(s.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(s.sampling.top_p, 0.5f);
  EXPECT_EQ(s.sampling.top_k, 3);
  EXPECT_TRUE(s.seeded);
  EXPECT_EQ(s.sampling.seed, 42u);
  // llama.cpp's clients send seed -1 for "random": not the fixed seed 2^64 - 1.
  EXPECT_FALSE(completion(R"({"prompt":"x","seed":-1})").seeded);
  EXPECT_TRUE(completion(R"({"prompt":"x","seed":-2})").seeded);
  EXPECT_EQ(s.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(s.stream);
  EXPECT_TRUE(s.include_usage);
  EXPECT_EQ(completion(R"({"prompt":"x","stop":"END"})").stop, std::vector<std::string>{"END"});
}

TEST(Request, ChatMessagesAndDefaults) {
  const CompletionRequest r = chat(
      R"({"messages":[{"role":"system","content":"Be brief."},
                      {"role":"user","content":[{"type":"text","text":"Hi "},
                                                {"type":"text","text":"there"}]}]})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.max_tokens, 256);
  EXPECT_EQ(
      chat(R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":5})").max_tokens,
      5);
}

TEST(Request, MalformedBodies) {
  EXPECT_EQ(refused_param("{not json"), "");
  EXPECT_EQ(refused_param(""), "");
  EXPECT_EQ(refused_param("[1,2]"), "");
  EXPECT_EQ(refused_param(R"({"prompt":"x"} trailing)"), "");
}

TEST(Request, WrongTypesNameTheField) {
  EXPECT_EQ(refused_param(R"({})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":5})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":["a","b"]})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":[true]})"), "prompt[0]");
  EXPECT_EQ(refused_param(R"({"prompt":[7, "a"]})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":"x","model":3})"), "model");
  EXPECT_EQ(refused_param(R"({"prompt":"x","max_tokens":"8"})"), "max_tokens");
  EXPECT_EQ(refused_param(R"({"prompt":"x","max_tokens":2.5})"), "max_tokens");
  EXPECT_EQ(refused_param(R"({"prompt":"x","temperature":"hot"})"), "temperature");
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_k":1.5})"), "top_k");
  EXPECT_EQ(refused_param(R"({"prompt":"x","seed":"7"})"), "seed");
  EXPECT_EQ(refused_param(R"({"prompt":"x","stream":"yes"})"), "stream");
  EXPECT_EQ(refused_param(R"({"prompt":"x","stop":5})"), "stop");
  EXPECT_EQ(refused_param(R"({"prompt":"x","stop":["a",1]})"), "stop[1]");
  EXPECT_EQ(refused_param(R"({"prompt":"x","stream_options":{"include_usage":true}})"),
            "stream_options");
  const auto c = Endpoint::ChatCompletions;
  EXPECT_EQ(refused_param(R"({})", c), "messages");
  EXPECT_EQ(refused_param(R"({"messages":[]})", c), "messages");
  EXPECT_EQ(refused_param(R"({"messages":"hi"})", c), "messages");
  EXPECT_EQ(refused_param(R"({"messages":[5]})", c), "messages[0]");
  EXPECT_EQ(refused_param(R"({"messages":[{"content":"x"}]})", c), "messages[0].role");
  EXPECT_EQ(refused_param(R"({"messages":[{"role":"robot","content":"x"}]})", c),
            "messages[0].role");
  EXPECT_EQ(refused_param(R"({"messages":[{"role":"user"}]})", c), "messages[0].content");
  EXPECT_EQ(refused_param(R"({"messages":[{"role":"user","content":{"a":1}}]})", c),
            "messages[0].content");
  EXPECT_EQ(refused_param(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", c),
            "messages[0].content[0]");
}

// An integer beyond 64 bits is out of range, not "a fractional number" (as it was reported).
TEST(Request, HugeIntegersAreOutOfRange) {
  for (const char* body : {R"({"prompt":"x","max_tokens":123456789012345678901234567890})",
                           R"({"prompt":"x","seed":-1e30})"}) {
    try {
      completion(body);
      ADD_FAILURE() << "accepted " << body;
    } catch (const RequestError& e) {
      EXPECT_NE(std::string(e.what()).find("must be in ["), std::string::npos) << e.what();
    }
  }
  try {
    completion(R"({"prompt":"x","max_tokens":2.0})");
    ADD_FAILURE() << "accepted 2.0";
  } catch (const RequestError& e) {
    EXPECT_NE(std::string(e.what()).find("must be an integer"), std::string::npos) << e.what();
  }
}

TEST(Request, OutOfRangeValuesNameTheField) {
  EXPECT_EQ(refused_param(R"({"prompt":"x","max_tokens":0})"), "max_tokens");
  EXPECT_EQ(refused_param(R"({"prompt":"x","max_tokens":-3})"), "max_tokens");
  EXPECT_EQ(refused_param(R"({"prompt":"x","max_tokens":1025})"), "max_tokens");  // > context
  EXPECT_EQ(refused_param(R"({"prompt":"x","max_tokens":99999999999999999999})"), "max_tokens");
  EXPECT_EQ(refused_param(R"({"prompt":"x","temperature":-0.1})"), "temperature");
  EXPECT_EQ(refused_param(R"({"prompt":"x","temperature":1e300})"), "temperature");
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_p":0})"), "top_p");
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_p":1.5})"), "top_p");
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_k":-1})"), "top_k");
  EXPECT_EQ(refused_param(R"({"prompt":"x","stop":["a","b","c","d","e"]})"), "stop");
  EXPECT_EQ(refused_param(R"({"prompt":"x","stop":""})"), "stop");
  EXPECT_EQ(refused_param(R"({"prompt":"x","n":2})"), "n");
  EXPECT_EQ(refused_param(R"({"prompt":"x","n":0})"), "n");
}

TEST(Request, UnsupportedOptionsAreRefusedNotIgnored) {
  EXPECT_EQ(refused_param(R"({"prompt":"x","logprobs":2})"), "logprobs");
  EXPECT_EQ(refused_param(R"({"prompt":"x","echo":true})"), "echo");
  EXPECT_EQ(refused_param(R"({"prompt":"x","best_of":3})"), "best_of");
  EXPECT_EQ(refused_param(R"({"prompt":"x","logit_bias":{"5":1}})"), "logit_bias");
  EXPECT_EQ(refused_param(R"({"prompt":"x","suffix":"end"})"), "suffix");
  // Their neutral values are fine.
  EXPECT_EQ(refused_param(R"({"prompt":"x","logprobs":null,"echo":false,"best_of":1,
                              "logit_bias":{},"frequency_penalty":0})"),
            "accepted");
}

// The OpenAI API (and its client) send prompts as token ids too: [ids] or [[ids]].
TEST(Request, PromptAsTokenIds) {
  CompletionRequest r = completion(R"({"prompt":[1, 2, 300]})");
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 2, 300}));
  r = completion(R"({"prompt":[[5, 6]]})");
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{5, 6}));
  EXPECT_FALSE(completion(R"({"prompt":["text"]})").prompt_is_tokens);
  EXPECT_EQ(refused_param(R"({"prompt":[1, -2]})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":[1, 2.5]})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":[1, 3000000000]})"), "prompt");
  EXPECT_EQ(refused_param(R"({"prompt":[[1], [2]]})"), "prompt");
  // More ids than the context holds.
  std::string many = "[";
  for (int i = 0; i < kContext; ++i) many += (i ? ",1" : "1");
  EXPECT_EQ(refused_param(R"({"prompt":)" + many + "]}"), "prompt");
}

// Sampling numbers are checked as the 32-bit floats the sampler gets: 1e-300 passes (0, 1] as a
// double but is 0 as a float.
TEST(Request, SamplingNumbersCheckedInFloatPrecision) {
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_p":1e-300})"), "top_p");
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_p":1e-46})"), "top_p");
  EXPECT_EQ(refused_param(R"({"prompt":"x","top_p":1e-30})"), "accepted");
  EXPECT_FLOAT_EQ(completion(R"({"prompt":"x","top_p":1e-30})").sampling.top_p, 1e-30f);
}

TEST(Request, PenaltiesAndMinP) {
  const CompletionRequest r = completion(
      R"({"prompt":"x","presence_penalty":0.5,"frequency_penalty":-1,"min_p":0.05,"repeat_penalty":1.1})");
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -1.0f);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(r.sampling.repeat_penalty, 1.1f);
  EXPECT_FLOAT_EQ(completion(R"({"prompt":"x"})").sampling.repeat_penalty, 1.0f);
  EXPECT_EQ(refused_param(R"({"prompt":"x","presence_penalty":2.5})"), "presence_penalty");
  EXPECT_EQ(refused_param(R"({"prompt":"x","frequency_penalty":"a"})"), "frequency_penalty");
  EXPECT_EQ(refused_param(R"({"prompt":"x","min_p":1.5})"), "min_p");
  EXPECT_EQ(refused_param(R"({"prompt":"x","repeat_penalty":0})"), "repeat_penalty");
  EXPECT_EQ(refused_param(R"({"prompt":"x","repeat_penalty":1e-300})"), "repeat_penalty");
}

TEST(Request, ResponseFormatOtherThanTextIsRefused) {
  EXPECT_EQ(refused_param(R"({"prompt":"x","response_format":{"type":"json_object"}})"),
            "response_format");
  EXPECT_EQ(refused_param(R"({"prompt":"x","response_format":"json"})"), "response_format");
  EXPECT_EQ(refused_param(R"({"prompt":"x","response_format":{"type":"text"}})"), "accepted");
}

// Parsing JSON costs many times the body: nesting depth, the number of values and of messages
// are bounded while parsing.
TEST(Request, JsonShapeIsBounded) {
  const std::string deep =
      std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']');
  EXPECT_EQ(refused_param(R"({"prompt":"x","extra":)" + deep + "}"), "");
  const std::string ok_depth =
      std::string(kMaxJsonDepth - 1, '[') + std::string(kMaxJsonDepth - 1, ']');
  EXPECT_EQ(refused_param(R"({"prompt":"x","extra":)" + ok_depth + "}"), "accepted");
  std::string wide = "[";
  for (int i = 0; i <= max_json_values(kContext); ++i) wide += (i ? ",[]" : "[]");
  try {
    completion(R"({"prompt":"x","extra":)" + wide + "]}");
    ADD_FAILURE() << "accepted";
  } catch (const RequestError& e) {
    EXPECT_NE(std::string(e.what()).find("JSON values"), std::string::npos) << e.what();
  }
  std::string messages = "[";
  for (int i = 0; i <= kContext; ++i) {
    messages += std::string(i ? "," : "") + R"({"role":"user","content":"x"})";
  }
  EXPECT_EQ(refused_param(R"({"messages":)" + messages + "]}", Endpoint::ChatCompletions),
            "messages");
}

TEST(Request, ErrorBodyHasOpenAiShape) {
  const auto body = nlohmann::json::parse(
      error_body(RequestError(400, "invalid_request_error", "top_p", "'top_p' must be ...")));
  EXPECT_EQ(body["error"]["message"], "'top_p' must be ...");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "top_p");
  EXPECT_TRUE(
      nlohmann::json::parse(error_body("m", "server_error", ""))["error"]["param"].is_null());
}

}  // namespace
}  // namespace squat::server
