// End-to-end checks of the quality tools on the default model: `squat perplexity` compared with
// its own saved full-precision logits gives KL 0 and top-1 agreement 1; quantized caches give
// KL > 0, larger with fewer bits; `squat eval` resumes and reports; bad input is refused.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "run_shell.h"
#include "test_files.h"

namespace {

using squat::testing::read_json;
using squat::testing::temp_path;

using squat::testing::run_squat;

// `squat ARGS` with an environment assignment in front.
squat::testing::ShellResult run_squat_env(const std::string& env, const std::string& args) {
  return squat::testing::run_shell(env + " " + std::string(SQUAT_BINARY_DIR) + "/squat " + args +
                                   " 2>&1");
}
using Result = squat::testing::ShellResult;

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

// Problems decoded together through the batched decoder, with the f16 few-shot prefix
// computed once and replayed, give the same answers as one problem at a time, each prefilled
// whole; a second run over a longer range says it resumes and answers only the new problems.
TEST_F(Quality, Gsm8kBatchedWithPrefixCacheEqualsOneAtATime) {
  const std::string serial = temp_path("gsm8k-serial.jsonl");
  const std::string batched = temp_path("gsm8k-batched.jsonl");
  std::filesystem::remove(serial);
  std::filesystem::remove(batched);
  const std::string args = "eval gsm8k -m " + kModel + " -t 2 --data-dir " + SQUAT_SHARED_DATA +
                           " --max-tokens 24 --kv f16 ";
  Result r = run_squat(args + "--limit 3 --parallel 1 --no-prefix-cache --results " + serial);
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_squat(args + "--limit 2 --parallel 3 --results " + batched);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("resuming"), std::string::npos) << r.output;
  r = run_squat(args + "--limit 3 --parallel 3 --results " + batched);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(
      r.output.find("resuming from " + batched + ": 2 of 3 problems already answered, 1 to go"),
      std::string::npos)
      << r.output;
  auto outputs = [](const std::string& path) {
    std::map<int, std::string> by_id;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const auto row = nlohmann::json::parse(line);
      EXPECT_EQ(by_id.count(row.at("id").get<int>()), 0u) << "answered twice: " << line;
      by_id[row.at("id").get<int>()] = row.at("output").get<std::string>();
    }
    return by_id;
  };
  const auto a = outputs(serial), b = outputs(batched);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  std::filesystem::remove(serial);
  std::filesystem::remove(batched);
}

// Progress goes to a log as plain lines when stderr is not a terminal.
TEST_F(Quality, ProgressPrintsPlainLinesWhenPiped) {
  const std::string results = temp_path("gsm8k-progress.jsonl");
  std::filesystem::remove(results);
  const Result r =
      run_squat_env("SQUAT_PROGRESS_SECONDS=0",
                    "eval gsm8k -m " + kModel + " -t 2 --data-dir " + SQUAT_SHARED_DATA +
                        " --limit 2 --max-tokens 4 --results " + results);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("gsm8k f16: 1/2 |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gsm8k f16: 2/2 |"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\r'), std::string::npos) << r.output;
  std::filesystem::remove(results);
}

// Without --data-dir the data is found from the executable's location, whatever the working
// directory: above the build folder, where the tests' own data folder is.
TEST_F(Quality, Gsm8kFindsItsDataFromAnyWorkingDirectory) {
  namespace fs = std::filesystem;
  bool above = false;
  for (fs::path dir = fs::weakly_canonical(SQUAT_BINARY_DIR); !dir.empty();
       dir = dir.parent_path()) {
    above |= fs::exists(dir / "shared" / "data" / "gsm8k" / "test.jsonl");
    if (dir == dir.parent_path()) break;
  }
  const std::string results = temp_path("gsm8k-cwd.jsonl");
  std::filesystem::remove(results);
  const Result r = squat::testing::run_shell(
      "cd / && env -u SQUAT_DATA " + std::string(SQUAT_BINARY_DIR) + "/squat eval gsm8k -m " +
      kModel + " -t 2 --limit 1 --max-tokens 4 --results " + results + " 2>&1");
  if (above) {
    EXPECT_EQ(r.status, 0) << r.output;
  } else {
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("--data-dir"), std::string::npos) << r.output;
  }
  std::filesystem::remove(results);
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
