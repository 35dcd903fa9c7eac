// `squat bench` through the built binary (issue 6): the rows of every method and context, the
// median of the repeats, and with --bandwidth the roofline figures. Their arithmetic is checked
// against expectations computed here (the weight bytes from the GGUF tensor table, an fp16
// cache's bytes from its layout); speeds themselves are never compared to a threshold.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "gguf/gguf.h"
#include "run_shell.h"
#include "test_files.h"

namespace {

using squat::testing::read_json;
using squat::testing::temp_path;

using squat::testing::run_squat;

// What one decode step reads of the weights: every projection matrix of every layer, the
// output matrix (the token embedding when tied) and one row of the token embedding.
std::size_t expected_weight_bytes(const std::string& path) {
  const squat::gguf::File file = squat::gguf::File::open(path);
  std::size_t total = 0;
  const auto layers = file.get_uint("llama.block_count");
  for (uint64_t l = 0; l < layers; ++l) {
    for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                          "ffn_down"}) {
      total += file.tensor("blk." + std::to_string(l) + "." + m + ".weight").n_bytes;
    }
  }
  const auto& embd = file.tensor("token_embd.weight");
  const auto* output = file.find_tensor("output.weight");
  total += output ? output->n_bytes : embd.n_bytes;
  total += embd.n_bytes / embd.shape[1];
  return total;
}

double near(double expected) { return 1e-9 * std::max(1.0, std::abs(expected)); }

TEST(Bench, RowsMediansAndRooflineAreConsistent) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const std::string json_path = temp_path("bench.json");
  const int gen = 3, threads = 2;
  const auto run = run_squat(std::string("bench -m ") + SQUAT_TEST_MODEL +
                             " --kv f16,kivi,squat-2 --ctx 24,40 --gen " + std::to_string(gen) +
                             " --repeats 3 -t " + std::to_string(threads) +
                             " --bandwidth --bandwidth-mib 8 --bandwidth-passes 2 --json " +
                             json_path);
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_NE(run.output.find("memory read bandwidth:"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("roofline tok/s"), std::string::npos) << run.output;
  const nlohmann::json j = read_json(json_path);
  std::filesystem::remove(json_path);

  const auto& bw = j.at("bandwidth");
  EXPECT_EQ(bw.at("buffer_bytes").get<std::size_t>(), std::size_t(8) << 20);
  EXPECT_EQ(bw.at("threads").get<int>(), threads);
  const auto passes = bw.at("runs_bytes_per_s").get<std::vector<double>>();
  ASSERT_EQ(passes.size(), 2u);
  const double bandwidth = bw.at("bytes_per_s").get<double>();
  EXPECT_GT(bandwidth, 0);
  EXPECT_EQ(bandwidth, *std::max_element(passes.begin(), passes.end()));  // the best pass

  const std::size_t weights = expected_weight_bytes(SQUAT_TEST_MODEL);
  EXPECT_EQ(j.at("weight_bytes").get<std::size_t>(), weights);
  const auto& rows = j.at("rows");
  ASSERT_EQ(rows.size(), 6u);  // methods outer, contexts inner
  const char* methods[] = {"f16", "kivi", "squat-2"};
  const int contexts[] = {24, 40};
  // SmolLM2-135M: 30 layers x 3 KV heads x 64 channels, keys and values, 2 bytes each.
  const std::size_t f16_bytes_per_token = 30 * 3 * 64 * 2 * 2;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    SCOPED_TRACE(r.dump());
    EXPECT_EQ(r.at("kv").get<std::string>(), methods[i / 2]);
    const int ctx = contexts[i % 2];
    EXPECT_EQ(r.at("context").get<int>(), ctx);
    EXPECT_EQ(r.at("cache_tokens").get<int>(), ctx + gen);
    // The reported figure is the median of the three timed runs.
    auto runs = r.at("runs_decode_tokens_per_s").get<std::vector<double>>();
    ASSERT_EQ(runs.size(), 3u);
    std::sort(runs.begin(), runs.end());
    EXPECT_EQ(r.at("decode_tokens_per_s").get<double>(), runs[1]);
    auto prompt_runs = r.at("runs_prompt_tokens_per_s").get<std::vector<double>>();
    ASSERT_EQ(prompt_runs.size(), 3u);
    std::sort(prompt_runs.begin(), prompt_runs.end());
    EXPECT_EQ(r.at("prompt_tokens_per_s").get<double>(), prompt_runs[1]);
    EXPECT_GT(r.at("peak_rss_bytes").get<std::size_t>(), weights / 2);

    const std::size_t cache_bytes = r.at("cache_bytes").get<std::size_t>();
    const double cache_read = r.at("decode_cache_bytes_read").get<double>();
    if (i / 2 == 0) {
      // fp16: the mean of the cache after the prompt and after the last decoded token.
      EXPECT_EQ(cache_bytes, std::size_t(ctx + gen) * f16_bytes_per_token);
      EXPECT_DOUBLE_EQ(cache_read, 0.5 * double(std::size_t(2 * ctx + gen) * f16_bytes_per_token));
    } else {
      EXPECT_GT(cache_read, 0);
      EXPECT_LE(cache_read, double(cache_bytes));
    }
    EXPECT_EQ(r.at("weight_bytes").get<std::size_t>(), weights);
    EXPECT_EQ(r.at("logits_bytes").get<std::size_t>(), 49152u * sizeof(float));
    const double per_token = r.at("decode_bytes_per_token").get<double>();
    EXPECT_NEAR(per_token, double(weights) + cache_read + 49152.0 * sizeof(float), near(per_token));
    const double roofline = r.at("roofline_decode_tokens_per_s").get<double>();
    EXPECT_NEAR(roofline, bandwidth / per_token, near(roofline));
    const double fraction = r.at("roofline_fraction").get<double>();
    EXPECT_NEAR(fraction, r.at("decode_tokens_per_s").get<double>() / roofline, near(fraction));
  }
}

TEST(Bench, BandwidthOptionsNeedBandwidth) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const auto run =
      run_squat(std::string("bench -m ") + SQUAT_TEST_MODEL + " --ctx 8 --gen 1 --bandwidth-mib 8");
  EXPECT_EQ(run.status, 2) << run.output;
  EXPECT_NE(run.output.find("--bandwidth"), std::string::npos) << run.output;
}

TEST(Bench, WithoutBandwidthNoRooflineButBytesPerToken) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const std::string json_path = temp_path("plain.json");
  const auto run = run_squat(std::string("bench -m ") + SQUAT_TEST_MODEL +
                             " --kv f16 --ctx 8 --gen 1 --repeats 1 -t 1 --json " + json_path);
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_EQ(run.output.find("memory read bandwidth"), std::string::npos) << run.output;
  const nlohmann::json j = read_json(json_path);
  std::filesystem::remove(json_path);
  EXPECT_FALSE(j.contains("bandwidth"));
  const auto& row = j.at("rows").at(0);
  EXPECT_FALSE(row.contains("roofline_fraction"));
  EXPECT_GT(row.at("decode_bytes_per_token").get<double>(), row.at("weight_bytes").get<double>());
}

}  // namespace
