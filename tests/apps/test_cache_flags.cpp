// The KV-cache flags of `squat run` and `squat bench` (issue 4), through the built binary:
// every flag changes what it claims (cache bytes exactly as the layout of docs/SQUAT.md §1
// predicts, or the generated text), and bad values or impossible combinations are refused
// with exit status 2 (usage) or 1 (a bad file) and a message naming the problem.
// The expected bytes are computed here from the flush rules and the byte layout, not asked
// from the library: codes bit-packed, an fp16 scale and minimum per group, fp16 residual.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "run_shell.h"
#include "squat/kv_quant.h"
#include "test_files.h"

namespace {

using squat::testing::read_file;
using squat::testing::temp_path;

// SmolLM2-135M: 30 layers, 3 KV heads of 64 channels.
constexpr std::size_t kLayers = 30, kKvHeads = 3, kDim = 64, kVocab = 49152;

struct Result {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

Result squat(const std::string& args) {
  const std::string err_path = temp_path("stderr.txt");
  const squat::testing::ShellResult run = squat::testing::run_shell(
      std::string(SQUAT_BINARY_DIR) + "/squat " + args + " 2>" + err_path);
  Result result{run.status, run.output, read_file(err_path)};
  std::filesystem::remove(err_path);
  return result;
}

std::string model() { return std::string(" -m ") + SQUAT_TEST_MODEL + " "; }

// A prompt of about 45 tokens, so keys cross the 32-token residual window.
const std::string kPrompt =
    "\"The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with "
    "a single step. All that glitters is not gold, and every cloud has a silver lining.\"";

struct RunResult {
  std::string text;
  nlohmann::json stats;
};

// Greedy run of `n` tokens with the given cache flags; fails the test when it does not exit 0.
RunResult run(const std::string& flags, int n = 8) {
  const std::string stats = temp_path("stats.json");
  const Result r =
      squat("run" + model() + "-t 2 -c 128 --temp 0 --no-display-prompt -n " + std::to_string(n) +
            " -p " + kPrompt + " --stats-json " + stats + " " + flags);
  EXPECT_EQ(r.status, 0) << flags << "\n" << r.err;
  RunResult out;
  out.text = r.out;
  if (r.status == 0) out.stats = nlohmann::json::parse(read_file(stats));
  std::filesystem::remove(stats);
  return out;
}

struct Layout {
  std::string kv = "kivi";
  int k_bits = 2, v_bits = 2, group = 32, residual = 32;
  bool per_token_keys = false;
};

std::size_t packed(std::size_t codes, int bits) { return (codes * std::size_t(bits) + 7) / 8; }

// Per-token groups of `group` channels for n tokens of one head: codes + fp16 scale and min.
std::size_t per_token_bytes(std::size_t n, int bits, int group) {
  const std::size_t groups = n * (kDim / std::size_t(group));
  return groups * (packed(std::size_t(group), bits) + 2 * 2);
}

// Bytes of the whole cache after `n` tokens (all layers and KV heads).
std::size_t expected_bytes(const Layout& l, std::size_t n) {
  std::size_t head = 0;
  if (l.kv == "f32") {
    head = n * kDim * 4 * 2;
  } else if (l.kv == "f16") {
    head = n * kDim * 2 * 2;
  } else if (l.kv == "int8" || l.kv == "int4") {
    head = 2 * per_token_bytes(n, l.kv == "int8" ? 8 : 4, l.group);
  } else {
    // Keys leave the window in whole chunks of R; values one at a time, the last R stay.
    const std::size_t r = std::size_t(l.residual);
    const std::size_t keys_q = n / r * r;
    const std::size_t values_q = n > r ? n - r : 0;
    const std::size_t keys = l.per_token_keys ? per_token_bytes(keys_q, l.k_bits, l.group)
                                              // per-channel: token rows of d packed codes; a scale
                                              // and min per channel per group of G tokens
                                              : keys_q * packed(kDim, l.k_bits) +
                                                    keys_q / std::size_t(l.group) * kDim * 4;
    head = keys + (n - keys_q) * kDim * 2 + per_token_bytes(values_q, l.v_bits, l.group) +
           (n - values_q) * kDim * 2;
  }
  return head * kLayers * kKvHeads;
}

void expect_layout(const RunResult& r, const Layout& l, const std::string& what) {
  if (r.stats.is_null()) return;
  const std::size_t n = r.stats["cache_tokens"].get<std::size_t>();
  const std::size_t bytes = r.stats["cache_bytes"].get<std::size_t>();
  EXPECT_EQ(bytes, expected_bytes(l, n)) << what << ", " << n << " tokens";
  EXPECT_DOUBLE_EQ(r.stats["bits_per_element"].get<double>(),
                   double(bytes) * 8.0 / double(n * kLayers * kKvHeads * kDim * 2))
      << what;
  EXPECT_EQ(r.stats["fp16_cache_bytes"].get<std::size_t>(), n * kLayers * kKvHeads * kDim * 4);
}

class CacheFlags : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  }
};

TEST_F(CacheFlags, EveryMethodStoresWhatTheLayoutPredicts) {
  for (const char* kv : {"f32", "f16", "int8", "int4", "kivi", "squat"}) {
    const RunResult r = run(std::string("--kv ") + kv);
    ASSERT_FALSE(r.stats.is_null()) << kv;
    EXPECT_GT(r.stats["cache_tokens"].get<int>(), 40) << "the prompt must cross the window";
    Layout l;
    l.kv = kv;
    expect_layout(r, l, kv);
  }
}

TEST_F(CacheFlags, BitsGroupSizeWindowAndKeyLayoutChangeTheBytesAsPredicted) {
  const std::size_t default_bytes = run("--kv kivi").stats["cache_bytes"].get<std::size_t>();
  struct Case {
    std::string flags;
    Layout layout;
  };
  std::vector<Case> cases;
  Layout l;
  l.k_bits = 4;
  cases.push_back({"--kv kivi --k-bits 4", l});
  l = {};
  l.v_bits = 8;
  cases.push_back({"--kv kivi --v-bits 8", l});
  l = {};
  l.group = 16;
  cases.push_back({"--kv kivi --group-size 16", l});
  l = {};
  l.residual = 64;
  cases.push_back({"--kv kivi --residual-length 64", l});
  l = {};
  l.per_token_keys = true;
  cases.push_back({"--kv squat --key-quant per-token", l});
  for (const Case& c : cases) {
    const RunResult r = run(c.flags);
    expect_layout(r, c.layout, c.flags);
    // Per-token and per-channel key groups hold the same number of groups (n*d/G) and so the
    // same bytes; what per-token changes is the stored keys (test_cache_methods).
    if (!r.stats.is_null() && !c.layout.per_token_keys) {
      EXPECT_NE(r.stats["cache_bytes"].get<std::size_t>(), default_bytes) << c.flags;
    }
  }
  l = {};
  l.kv = "int8";
  l.group = 16;
  expect_layout(run("--kv int8 --group-size 16"), l, "int8 --group-size 16");
}

// λ = 0, r = 0 or a single SQuat block (g = head_dim) leave nothing to correct: SQuat is KIVI.
TEST_F(CacheFlags, SquatWithNothingToCorrectGeneratesWhatKiviGenerates) {
  const RunResult kivi = run("--kv kivi", 24);
  ASSERT_FALSE(kivi.text.empty());
  for (const char* flags : {"--lambda 0", "--subspace-dim 0", "--quant-group-size 64"}) {
    const RunResult r = run(std::string("--kv squat ") + flags, 24);
    EXPECT_EQ(r.text, kivi.text) << flags;
    EXPECT_EQ(r.stats["cache_bytes"], kivi.stats["cache_bytes"]) << flags;
  }
}

TEST_F(CacheFlags, SavedSubspaceReproducesTheGeneration) {
  const std::string file = temp_path("subspace.squatst");
  std::filesystem::remove(file);
  const RunResult saved = run("--kv squat --save-subspace " + file, 24);
  ASSERT_TRUE(std::filesystem::exists(file));
  // 30 layers x 3 KV heads, each with P (64 x 64 doubles) and H_1..H_3 (16t x 16 doubles).
  EXPECT_GT(std::filesystem::file_size(file), kLayers * kKvHeads * 64 * 64 * 8);
  const RunResult loaded = run("--kv squat --load-subspace " + file, 24);
  EXPECT_EQ(loaded.text, saved.text);
  EXPECT_EQ(loaded.stats["cache_bytes"], saved.stats["cache_bytes"]);
  // The file's block size is part of it: another --quant-group-size is refused.
  const Result other_block = squat(
      "run" + model() + "-p hi -n 1 --kv squat --quant-group-size 32 --load-subspace " + file);
  EXPECT_EQ(other_block.status, 2) << other_block.err;
  EXPECT_NE(other_block.err.find("does not match"), std::string::npos) << other_block.err;
  // The file names the model it was made for (its fingerprint).
  std::string tag;
  squat::kv::SquatStateFile::load(file, &tag);
  EXPECT_NE(tag.find("(llama, 272 tensors, weights "), std::string::npos) << tag;
  std::filesystem::remove(file);
}

// Same shape, another model: refused by the fingerprint, not silently used.
TEST_F(CacheFlags, SubspaceFileOfAnotherModelIsRefused) {
  const std::string file = temp_path("other_model.squatst");
  const std::string other = "model 'Other' (llama, 272 tensors, weights 0123456789abcdef)";
  squat::kv::SquatStateFile::save(
      file,
      std::vector<squat::kv::SquatState>(kLayers * kKvHeads,
                                         squat::kv::SquatState::identity(64, 32)),
      other);
  const Result r = squat("run" + model() + "-p hi -n 1 --kv squat --load-subspace " + file);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("was made for " + other + ", not for model '"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, "");
  std::filesystem::remove(file);
}

// Files made for another model: other layer count, other head dimension.
TEST_F(CacheFlags, SubspaceFileOfAnotherShapeIsRefused) {
  struct Case {
    std::size_t states;
    int head_dim, block;
    int status;
    std::string message;
  };
  const Case cases[] = {
      {29 * kKvHeads, 64, 32, 1, "30 layers"},  // one layer short
      {kLayers * kKvHeads, 32, 16, 2, "head_dim 32"},
      {kLayers * 2, 64, 32, 1, "3 KV heads"},
  };
  for (const Case& c : cases) {
    const std::string file = temp_path("other_shape.squatst");
    squat::kv::SquatStateFile::save(
        file, std::vector<squat::kv::SquatState>(
                  c.states, squat::kv::SquatState::identity(c.head_dim, c.block)));
    const Result r = squat("run" + model() + "-p hi -n 1 --kv squat --load-subspace " + file);
    EXPECT_EQ(r.status, c.status) << c.message << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "") << "refused before generating";
    std::filesystem::remove(file);
  }
}

TEST_F(CacheFlags, BadValuesAndCombinationsAreRefused) {
  const std::string exists = temp_path("exists.txt");
  std::ofstream(exists) << "x";
  struct Case {
    std::string flags, message;
  };
  const Case cases[] = {
      {"--kv f8", "--kv"},
      {"--kv kivi --k-bits 3", "k_bits must be 2, 4 or 8"},
      {"--kv squat --v-bits 1", "v_bits must be 2, 4 or 8"},
      {"--kv kivi --group-size 48", "group_size 48 must divide head_dim 64"},
      {"--kv int4 --group-size 0", "group_size must be positive"},
      {"--kv kivi --residual-length 48", "residual_length 48 must be a positive multiple"},
      {"--kv kivi --group-size 16 --residual-length 40", "multiple of group_size 16"},
      {"--kv squat --quant-group-size 48", "quant_group_size 48 must divide head_dim 64"},
      {"--kv squat --key-quant per-token --group-size 32 --quant-group-size 16",
       "multiple of group_size"},
      {"--kv squat --subspace-dim -1", "subspace_dim"},
      {"--kv squat --lambda -1", "lambda"},
      {"--kv squat --lambda nan", "lambda"},
      {"--kv kivi --key-quant per-row", "--key-quant"},
      {"--kv kivi --key-rope middle", "--key-rope"},
      {"--kv kivi --hadamard=bogus", "--hadamard"},
      {"--kv squat --power-method=maybe", "--power-method"},
      {"--kv squat --query-rope sideways", "--query-rope"},
      {"--kv f16 --k-bits 4", "--k-bits does not apply to --kv f16"},
      {"--kv int8 --residual-length 64", "--residual-length does not apply"},
      {"--kv f16 --group-size 16", "--group-size does not apply"},
      {"--kv kivi --lambda 0.1", "--lambda does not apply to --kv kivi"},
      {"--kv kivi --power-method", "--power-method does not apply"},
      {"--kv kivi --quant-group-size 16", "--quant-group-size does not apply"},
      {"--kv kivi --save-subspace x.squatst", "--save-subspace does not apply"},
      {"--kv squat --save-subspace /nonexistent/dir/s.squatst", "does not exist"},
      {"--kv squat --save-subspace /", "is a folder"},
      {"--kv squat --load-subspace /nonexistent/file", "--load-subspace"},
      {"--kv squat --load-subspace " + exists + " --save-subspace y", "exclude each other"},
      {"--kv squat --load-subspace " + exists + " --lambda 0.1", "--lambda does not apply with"},
      {"--kv squat --load-subspace " + exists + " --power-method", "--power-method does not"},
  };
  for (const Case& c : cases) {
    const Result r = squat("run" + model() + "-p hi -n 1 " + c.flags);
    EXPECT_EQ(r.status, 2) << c.flags << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.flags << "\n" << r.err;
    EXPECT_EQ(r.out, "") << c.flags;
  }
  // A file that is not a subspace file: a runtime error naming it.
  const Result r = squat("run" + model() + "-p hi -n 1 --kv squat --load-subspace " + exists);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find(exists), std::string::npos) << r.err;
  std::filesystem::remove(exists);
}

// bench --kv takes a list; kivi-N/squat-N set both bit widths; every row's bytes as predicted.
TEST_F(CacheFlags, BenchReportsEveryMethodOfTheList) {
  const std::string json = temp_path("bench.json");
  const Result r = squat("bench" + model() +
                         "-t 2 --kv f16,int4,kivi-2,squat-4,kivi --k-bits 8 --v-bits 4 --ctx 40 "
                         "--gen 2 --repeats 1 --json " +
                         json);
  ASSERT_EQ(r.status, 0) << r.err;
  const nlohmann::json out = nlohmann::json::parse(read_file(json));
  std::filesystem::remove(json);
  ASSERT_EQ(out["rows"].size(), 5u);
  Layout f16, int4, kivi2, squat4, kivi84;
  f16.kv = "f16";
  int4.kv = "int4";
  squat4.k_bits = squat4.v_bits = 4;
  kivi84.k_bits = 8;
  kivi84.v_bits = 4;
  const Layout layouts[] = {f16, int4, kivi2, squat4, kivi84};
  const char* names[] = {"f16", "int4", "kivi-2", "squat-4", "kivi"};
  for (std::size_t i = 0; i < 5; ++i) {
    const nlohmann::json& row = out["rows"][i];
    EXPECT_EQ(row["kv"], names[i]);
    const std::size_t n = row["cache_tokens"].get<std::size_t>();
    EXPECT_EQ(n, 42u) << "40 prompt tokens + 2 decoded";
    const std::size_t bytes = row["cache_bytes"].get<std::size_t>();
    EXPECT_EQ(bytes, expected_bytes(layouts[i], n)) << names[i];
    EXPECT_DOUBLE_EQ(row["bytes_per_token"].get<double>(), double(bytes) / double(n));
    EXPECT_DOUBLE_EQ(row["ratio_to_f16"].get<double>(),
                     double(bytes) / double(expected_bytes(f16, n)));
    EXPECT_GT(row["peak_rss_bytes"].get<std::size_t>(), 0u);
    EXPECT_GT(row["decode_tokens_per_s"].get<double>(), 0.0);
  }
  // Bits that kivi-N already sets, an unknown width, a flag no listed method takes.
  for (const char* flags : {"--kv kivi-2 --k-bits 4", "--kv kivi-3", "--kv f16,int8 --lambda 0"}) {
    const Result bad = squat("bench" + model() + "--ctx 8 --gen 1 " + flags);
    EXPECT_EQ(bad.status, 2) << flags << "\n" << bad.err;
  }
}

// bench --batch N: N sequences of the same length, each with its own cache, decoded together;
// bytes are N times one sequence's, the weights' share of a decoded token 1/N.
TEST_F(CacheFlags, BenchBatchRowsHoldEverySequencesCache) {
  const std::string json = temp_path("bench_batch.json");
  const Result r = squat("bench" + model() +
                         "-t 2 --kv f16,squat-2 --ctx 40 --batch 1,3 --gen 2 --repeats 1 --json " +
                         json);
  ASSERT_EQ(r.status, 0) << r.err;
  const nlohmann::json out = nlohmann::json::parse(read_file(json));
  std::filesystem::remove(json);
  ASSERT_EQ(out["rows"].size(), 4u);
  Layout f16, squat2;
  f16.kv = "f16";
  for (std::size_t i = 0; i < 4; ++i) {
    const nlohmann::json& row = out["rows"][i];
    const int batch = i % 2 ? 3 : 1;
    EXPECT_EQ(row["kv"], i < 2 ? "f16" : "squat-2");
    EXPECT_EQ(row["batch"], batch);
    EXPECT_EQ(row["cache_tokens"], 42u) << "per sequence: 40 prompt tokens + 2 decoded";
    const std::size_t one = expected_bytes(i < 2 ? f16 : squat2, 42);
    EXPECT_EQ(row["cache_bytes"], batch * one);
    EXPECT_EQ(row["fp16_cache_bytes"], batch * expected_bytes(f16, 42));
    EXPECT_DOUBLE_EQ(row["bytes_per_token"].get<double>(), double(one) / 42.0);
    const double per_token = (row["weight_bytes"].get<double>() +
                              row["decode_cache_bytes_read"].get<double>() +
                              row["logits_bytes"].get<double>()) /
                             batch;
    EXPECT_DOUBLE_EQ(row["decode_bytes_per_token"].get<double>(), per_token);
    EXPECT_EQ(row["logits_bytes"], batch * kVocab * sizeof(float)) << "one logits row per sequence";
    EXPECT_GT(row["decode_tokens_per_s"].get<double>(), 0.0);
  }
  // bench feeds whole prompts: the prompt-chunk flag -b of run is not one of its flags.
  const std::pair<const char*, const char*> refused[] = {
      {"--batch 0", "--batch values must be 1..256"},
      {"--batch 257", "--batch values must be 1..256"},
      {"-b 4", "-b"}};
  for (const auto& [flags, message] : refused) {
    const Result bad = squat("bench" + model() + "--ctx 8 --gen 1 " + flags);
    EXPECT_EQ(bad.status, 2) << flags << "\n" << bad.err;
    EXPECT_NE(bad.err.find(message), std::string::npos) << bad.err;
  }
}

}  // namespace
