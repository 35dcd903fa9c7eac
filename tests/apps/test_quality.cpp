// End-to-end checks of the quality tools on the default model: `squat perplexity` compared with
// its own saved full-precision logits gives KL 0 and top-1 agreement 1; quantized caches give
// KL > 0, larger with fewer bits; `squat eval` resumes and reports; bad input is refused.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "run_shell.h"

namespace {

using squat::testing::run_squat;
using Result = squat::testing::ShellResult;

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("squat_quality_" + name)).string();
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

const std::string kModel = SQUAT_TEST_MODEL;
const std::string kText = std::string(SQUAT_SHARED_DATA) + "/wikitext-2-test.txt";

class Quality : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "default model not found";
    if (!std::filesystem::exists(kText)) GTEST_SKIP() << kText << " not found";
  }
  // Two windows of 128 tokens: 126 scored tokens, each read through the cache.
  std::string perplexity(const std::string& extra) {
    return "perplexity -m " + kModel + " -f " + kText + " -t 2 -c 128 --chunks 2 " + extra;
  }
};

TEST_F(Quality, PerplexityKlAgainstItselfIsZeroAndGrowsWithFewerBits) {
  const std::string base = temp_path("f16.logits");
  const std::string json = temp_path("ppl.json");
  Result r = run_squat(perplexity("--kv f16 --save-logits " + base + " --json " + json));
  ASSERT_EQ(r.status, 0) << r.output;
  const double f16_ppl = read_json(json).at("perplexity").get<double>();
  EXPECT_GT(f16_ppl, 1.0);
  EXPECT_LT(f16_ppl, 1000.0);
  EXPECT_EQ(read_json(json).at("scored_tokens").get<int>(), 126);

  auto kl_run = [&](const std::string& kv) {
    const Result run =
        run_squat(perplexity("--kv " + kv + " --kl-base " + base + " --json " + json));
    EXPECT_EQ(run.status, 0) << run.output;
    return read_json(json);
  };
  const nlohmann::json self = kl_run("f16");
  EXPECT_EQ(self.at("kl_mean").get<double>(), 0.0);
  EXPECT_EQ(self.at("kl_p99").get<double>(), 0.0);
  EXPECT_EQ(self.at("top1_agreement").get<double>(), 1.0);
  EXPECT_EQ(self.at("delta_perplexity").get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(self.at("perplexity").get<double>(), f16_ppl);

  const double int8 = kl_run("int8").at("kl_mean").get<double>();
  const double int4 = kl_run("int4").at("kl_mean").get<double>();
  const double kivi4 = kl_run("kivi --k-bits 4 --v-bits 4").at("kl_mean").get<double>();
  const nlohmann::json kivi2 = kl_run("kivi --k-bits 2 --v-bits 2");
  EXPECT_GT(int8, 0.0);
  EXPECT_LT(int8, int4);
  EXPECT_LT(kivi4, kivi2.at("kl_mean").get<double>());
  EXPECT_LT(int8, kivi2.at("kl_mean").get<double>());
  EXPECT_LT(kivi2.at("top1_agreement").get<double>(), 1.0);
  EXPECT_LT(kivi2.at("bits_per_element").get<double>(), 16.0);
  std::filesystem::remove(base);
  std::filesystem::remove(json);
}

TEST_F(Quality, KlBaseMustMatchTheRun) {
  const std::string base = temp_path("mismatch.logits");
  ASSERT_EQ(run_squat(perplexity("--save-logits " + base)).status, 0);
  // Another window length: refused, naming the file.
  Result r = run_squat("perplexity -m " + kModel + " -f " + kText +
                       " -t 2 -c 64 --chunks 2 --kl-base " + base);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(base), std::string::npos) << r.output;
  // Not a logits file.
  r = run_squat(perplexity("--kl-base " + kText));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("not a logits file"), std::string::npos) << r.output;
  std::filesystem::remove(base);
}

TEST_F(Quality, PerplexityUsageErrors) {
  EXPECT_EQ(run_squat(perplexity("--save-logits a --kl-base b")).status, 2);
  EXPECT_EQ(run_squat(perplexity("--block 0")).status, 2);
  EXPECT_EQ(run_squat(perplexity("--prefix 127")).status, 2);
  EXPECT_EQ(run_squat("perplexity -m " + kModel + " -f /nonexistent.txt").status, 1);
}

TEST_F(Quality, Gsm8kResumesFromItsResultsFile) {
  const std::string results = temp_path("gsm8k.jsonl");
  const std::string json = temp_path("gsm8k.json");
  std::filesystem::remove(results);
  const std::string args = "eval gsm8k -m " + kModel + " -t 2 --data-dir " + SQUAT_SHARED_DATA +
                           " --limit 1 --max-tokens 8 --kv kivi --results " + results + " --json " +
                           json;
  Result r = run_squat(args);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json first = read_json(json);
  EXPECT_EQ(first.at("problems").get<int>(), 1);
  EXPECT_EQ(first.at("method").get<std::string>(), "kivi-k2v2-g32-r32");
  // The second run answers nothing again: the results file keeps one line.
  r = run_squat(args);
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(results);
  int lines = 0;
  for (std::string line; std::getline(in, line);) lines += !line.empty();
  EXPECT_EQ(lines, 1);
  EXPECT_EQ(read_json(json).at("correct"), first.at("correct"));
  std::filesystem::remove(results);
  std::filesystem::remove(json);
}

TEST_F(Quality, PasskeyReportsEveryCell) {
  const std::string json = temp_path("passkey.json");
  const Result r = run_squat("eval passkey -m " + kModel +
                             " -t 2 --lengths 128,256 --depths 0,100 --trials 1 --json " + json);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json out = read_json(json);
  ASSERT_EQ(out.at("cells").size(), 4u);
  for (const auto& cell : out.at("cells")) {
    EXPECT_EQ(cell.at("trials").get<int>(), 1);
    EXPECT_LE(cell.at("prompt_tokens").get<int>(), cell.at("length").get<int>());
    EXPECT_GT(cell.at("prompt_tokens").get<int>(), cell.at("length").get<int>() / 2);
  }
  EXPECT_EQ(run_squat("eval passkey -m " + kModel + " --depths 101").status, 2);
  std::filesystem::remove(json);
}

}  // namespace
