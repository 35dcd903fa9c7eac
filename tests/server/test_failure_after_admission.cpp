// A generation that fails after admission (here: its cache cannot be made, as when memory runs
// out) must reach the client as an unmistakable error, not as HTTP 200: 500 with an error body
// for a whole response, an error event then [DONE] for a stream, and /metrics counts both as 500.
// The server runs in this process (the same parts `squat serve` wires together) so that the
// cache factory can be made to fail; requests go over a real loopback socket.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>

#include "core/thread_pool.h"
#include "model/model.h"
#include "server/admission.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "squat/kvcache.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace squat::server {
namespace {

const std::string kModel = SQUAT_TEST_MODEL;

// The sample of `name{labels}` in Prometheus text, or -1 when absent.
double sample(const std::string& text, const std::string& series) {
  const auto at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

TEST(ServeFailure, CacheThatCannotBeMadeIs500AndCountedAs500) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "default model not found";
  const std::unique_ptr<Model> model = Model::load(kModel);
  const Tokenizer tokenizer = Tokenizer::from_gguf(model->file());
  ThreadPool pool(2);
  kv::CacheConfig config;
  config.method = kv::CacheMethod::F16;
  const CacheFootprint footprint =
      measure_cache_footprint(model->kv_shape(1), model->rope(), config, pool, 64);
  int attempts = 0;
  CacheFactory failing = [&attempts](int) -> std::unique_ptr<AttentionCache> {
    ++attempts;  // only the scheduler's thread calls it
    throw std::runtime_error("out of memory making the cache (injected by the test)");
  };
  SchedulerOptions so;
  so.max_sequences = 4;
  so.budget = std::size_t(64) << 20;
  so.queue_capacity = 4;
  so.prefill_chunk = 64;
  so.context = 512;
  Metrics metrics(so.budget, so.max_sequences);
  Scheduler scheduler(*model, tokenizer, pool, failing, footprint, so, metrics);
  HttpOptions ho;
  ho.model_id = "test";
  HttpServer http(scheduler, tokenizer, ChatTemplate::from_gguf(model->file()), metrics, ho);
  const int port = http.bind("127.0.0.1", 0);
  std::thread listener([&http] { http.listen(); });

  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  const std::string whole = R"({"prompt":"Hello","max_tokens":4})";
  const auto answer = client.Post("/v1/completions", whole, "application/json");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 500) << answer->body;
  const auto error = nlohmann::json::parse(answer->body)["error"];
  EXPECT_EQ(error["type"], "server_error") << answer->body;
  EXPECT_NE(error["message"].get<std::string>().find("out of memory making the cache"),
            std::string::npos)
      << answer->body;

  // A stream's status line is sent before the generation starts: the failure is the last
  // event before [DONE], with no finish_reason that could pass for a normal end.
  const std::string streamed = R"({"prompt":"Hello","max_tokens":4,"stream":true})";
  const auto events = client.Post("/v1/completions", streamed, "application/json");
  ASSERT_TRUE(events);
  EXPECT_EQ(events->status, 200);
  const std::string& body = events->body;
  const auto error_at = body.find("data: {\"error\"");
  ASSERT_NE(error_at, std::string::npos) << body;
  EXPECT_NE(body.find("out of memory making the cache", error_at), std::string::npos) << body;
  EXPECT_EQ(body.substr(body.size() - 14), "data: [DONE]\n\n") << body;
  EXPECT_EQ(body.find("finish_reason"), std::string::npos) << body;

  const auto text = client.Get("/metrics");
  ASSERT_TRUE(text);
  EXPECT_EQ(sample(text->body, R"(squat_requests_total{endpoint="/v1/completions",status="500"})"),
            2)
      << text->body;
  EXPECT_EQ(sample(text->body, R"(squat_requests_total{endpoint="/v1/completions",status="200"})"),
            -1)
      << text->body;
  EXPECT_EQ(attempts, 2);

  // Both failures gave their reservation back: the budget is whole again (the gauges are
  // published by the scheduler's loop, so give it a moment).
  double reserved = -1;
  for (int i = 0; i < 100 && reserved != 0; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto again = client.Get("/metrics");
    ASSERT_TRUE(again);
    reserved = sample(again->body, "squat_cache_reserved_bytes");
  }
  EXPECT_EQ(reserved, 0);

  scheduler.drain(std::chrono::milliseconds(0));
  http.stop();
  listener.join();
}

}  // namespace
}  // namespace squat::server
