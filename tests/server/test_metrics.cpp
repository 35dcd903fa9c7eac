// /metrics text: Prometheus exposition format with cumulative histogram buckets.
#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <vector>

#include "core/process_memory.h"
#include "server/metrics.h"

namespace squat::server {
namespace {

// Sample lines "name{labels} value" of a rendered text, keyed by everything before the value.
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

TEST(Histogram, BucketsAreCumulative) {
  Histogram h({0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 5.0, 50.0}) h.observe(v);
  std::string text;
  h.render(text, "x");
  const auto s = samples(text);
  EXPECT_EQ(s.at("x_bucket{le=\"0.1\"}"), 2);  // le is inclusive
  EXPECT_EQ(s.at("x_bucket{le=\"1\"}"), 3);
  EXPECT_EQ(s.at("x_bucket{le=\"10\"}"), 4);
  EXPECT_EQ(s.at("x_bucket{le=\"+Inf\"}"), 5);
  EXPECT_EQ(s.at("x_count"), 5);
  EXPECT_DOUBLE_EQ(s.at("x_sum"), 55.65);
}

TEST(Metrics, CountsGaugesAndHistograms) {
  Metrics m(1 << 20, 8);
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 400);
  m.count_rejection("queue_full");
  m.count_admitted(0.02);
  m.count_generation(10, 5, true, 0.3, 0.02, 0.4);
  m.count_generation(7, 0, true, 0, 0, 0.1);       // ended at once: no first token
  m.count_generation(4, 2, false, 0.1, 0.1, 0.3);  // cancelled: tokens, no latencies
  m.count_cancelled();
  m.count_step(3, 2);
  m.set_gauges({3, 2, 5000, 9000});
  m.set_gauges({1, 0, 100, 200});
  const std::string text = m.render(123456, 234567);
  const auto s = samples(text);
  EXPECT_EQ(s.at("squat_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 2);
  EXPECT_EQ(s.at("squat_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"), 1);
  EXPECT_EQ(s.at("squat_rejected_requests_total{reason=\"queue_full\"}"), 1);
  EXPECT_EQ(s.at("squat_prompt_tokens_total"), 21);
  EXPECT_EQ(s.at("squat_generated_tokens_total"), 7);
  EXPECT_EQ(s.at("squat_sequences_admitted_total"), 1);
  EXPECT_EQ(s.at("squat_sequences_cancelled_total"), 1);
  EXPECT_EQ(s.at("squat_active_sequences"), 1);
  EXPECT_EQ(s.at("squat_active_sequences_peak"), 3);
  EXPECT_EQ(s.at("squat_queue_length"), 0);
  EXPECT_EQ(s.at("squat_cache_bytes"), 100);
  EXPECT_EQ(s.at("squat_cache_reserved_bytes"), 200);
  EXPECT_EQ(s.at("squat_cache_budget_bytes"), 1 << 20);
  EXPECT_EQ(s.at("process_resident_memory_bytes"), 123456);
  EXPECT_EQ(s.at("process_resident_memory_peak_bytes"), 234567);
  EXPECT_EQ(s.at("squat_time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(s.at("squat_time_to_first_token_seconds_bucket{le=\"0.25\"}"), 0);
  EXPECT_EQ(s.at("squat_time_to_first_token_seconds_bucket{le=\"0.5\"}"), 1);
  EXPECT_EQ(s.at("squat_request_duration_seconds_count"), 2);
  // Every sample has its HELP and TYPE.
  EXPECT_NE(text.find("# TYPE squat_time_to_first_token_seconds histogram"), std::string::npos);
  EXPECT_NE(text.find("# TYPE squat_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("# TYPE squat_queue_length gauge"), std::string::npos);
}

// The kernel's accounting: the peak is at least the resident set now, and touching 64 MiB
// more raises it by about that much.
TEST(Metrics, ResidentSetAndItsPeakAreReadFromProc) {
  const std::size_t rss = resident_set_bytes();
  EXPECT_GT(rss, std::size_t(1) << 20);
  EXPECT_LT(rss, std::size_t(1) << 40);
  EXPECT_GE(peak_resident_set_bytes(), rss);
  {
    std::vector<char> block(std::size_t(64) << 20);
    volatile char* bytes = block.data();
    for (std::size_t i = 0; i < block.size(); i += 4096) bytes[i] = char(i);
  }
  EXPECT_GE(peak_resident_set_bytes(), rss + (std::size_t(56) << 20));
}

}  // namespace
}  // namespace squat::server
