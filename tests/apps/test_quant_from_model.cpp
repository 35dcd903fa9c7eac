// `squat quant --from-model` on the default model: the keys and queries it dumps, fed to plain
// `squat quant --keys --queries` (the offline path), reproduce the per-layer numbers it prints;
// lambda 0 makes SQuat equal KIVI; bad input is refused with one message and leaves no file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/npy.h"
#include "run_shell.h"
#include "test_files.h"

namespace {

using squat::testing::read_json;

using squat::testing::run_squat;
using Result = squat::testing::ShellResult;
namespace fs = std::filesystem;

const std::string kModel = SQUAT_TEST_MODEL;
const std::string kText = std::string(SQUAT_SHARED_DATA) + "/wikitext-2-test.txt";

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("squat_from_model_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// The first `chars` characters of WikiText-2 as a prompt file.
std::string prompt_file(const fs::path& dir, std::size_t chars) {
  std::ifstream in(kText, std::ios::binary);
  std::string text(chars, '\0');
  in.read(text.data(), std::streamsize(chars));
  const std::string path = (dir / "prompt.txt").string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

double metric(const std::string& out, const std::string& label) {
  const std::size_t p = out.find(label);
  if (p == std::string::npos) return NAN;
  return std::stod(out.substr(p + label.size()));
}

class FromModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel)) GTEST_SKIP() << "default model not found";
    if (!fs::exists(kText)) GTEST_SKIP() << kText << " not found";
  }
};

TEST_F(FromModel, DumpedArraysReproduceThePerLayerNumbers) {
  const fs::path dir = temp_dir("dump");
  const std::string json = (dir / "layers.json").string();
  const std::string prompt = prompt_file(dir, 500);
  Result r = run_squat("quant --from-model -m " + kModel + " -f " + prompt +
                       " -t 2 --layers 0,17 --dump-dir " + dir.string() + " --json " + json);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json j = read_json(json);
  const int n = j.at("prompt_tokens").get<int>();
  ASSERT_GT(n, 64);
  // Per-channel groups of 32 tokens: only whole groups are quantized.
  EXPECT_EQ(j.at("keys_quantized").get<int>(), n / 32 * 32);
  EXPECT_EQ(j.at("quant_group_size").get<int>(), 16);  // automatic: head_dim / 4 below 128
  ASSERT_EQ(j.at("layers").size(), 2u);

  for (const nlohmann::json& layer : j.at("layers")) {
    const int l = layer.at("layer").get<int>();
    double kivi_logit = 0, squat_logit = 0, kivi_mse = 0, squat_mse = 0;
    const int heads = 3;  // SmolLM2-135M: 3 KV heads of 3 query heads each, head_dim 64
    for (int h = 0; h < heads; ++h) {
      const std::string base = (dir / ("layer_" + std::to_string(l) + "_head_" +
                                        std::to_string(h) + "_"))
                                   .string();
      const squat::npy::Array k = squat::npy::read(base + "keys.npy");
      const squat::npy::Array q = squat::npy::read(base + "queries.npy");
      EXPECT_EQ(k.shape, (std::vector<std::size_t>{std::size_t(n / 32 * 32), 64}));
      EXPECT_EQ(q.shape, (std::vector<std::size_t>{std::size_t(3 * n), 64}));
      const std::string args = "quant --keys " + base + "keys.npy --queries " + base +
                               "queries.npy --bits 2 --group-size 32 --out " +
                               (dir / "out.npy").string();
      const Result kivi = run_squat(args + " --method kivi");
      ASSERT_EQ(kivi.status, 0) << kivi.output;
      const Result sq = run_squat(args + " --method squat --quant-group-size 16 "
                                         "--subspace-dim 20 --lambda 0.001");
      ASSERT_EQ(sq.status, 0) << sq.output;
      kivi_logit += metric(kivi.output, "relative logit error: ") / heads;
      squat_logit += metric(sq.output, "relative logit error: ") / heads;
      kivi_mse += metric(kivi.output, "key mse: ") / heads;
      squat_mse += metric(sq.output, "key mse: ") / heads;
    }
    // The offline tool prints 7 significant digits.
    auto near = [](double got, double want) { return std::abs(got - want) <= 2e-6 * want; };
    EXPECT_TRUE(near(kivi_logit, layer.at("kivi_logit_error").get<double>())) << l;
    EXPECT_TRUE(near(squat_logit, layer.at("squat_logit_error").get<double>())) << l;
    EXPECT_TRUE(near(kivi_mse, layer.at("kivi_key_mse").get<double>())) << l;
    EXPECT_TRUE(near(squat_mse, layer.at("squat_key_mse").get<double>())) << l;
    EXPECT_GT(kivi_logit, 0.0);
  }
  // The printed table has the same numbers as the JSON's mean row.
  EXPECT_NE(r.output.find("mean"), std::string::npos) << r.output;
}

TEST_F(FromModel, LambdaZeroMakesSquatEqualKivi) {
  const fs::path dir = temp_dir("lambda0");
  const std::string json = (dir / "layers.json").string();
  Result r = run_squat("quant --from-model -m " + kModel + " -f " + prompt_file(dir, 300) +
                       " -t 2 --layers 3 --lambda 0 --json " + json);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json layer = read_json(json).at("layers").at(0);
  EXPECT_EQ(layer.at("squat_logit_error").get<double>(), layer.at("kivi_logit_error").get<double>());
  EXPECT_EQ(layer.at("squat_key_mse").get<double>(), layer.at("kivi_key_mse").get<double>());
}

TEST_F(FromModel, RefusesBadInputWithoutWritingFiles) {
  const fs::path dir = temp_dir("bad");
  const std::string prompt = prompt_file(dir, 300);
  const fs::path out = dir / "out";
  fs::create_directories(out);
  const std::string json = (dir / "never.json").string();
  const std::string ok = "quant --from-model -m " + kModel + " -f " + prompt + " -t 2 ";
  struct Case {
    std::string args;
    int status;
    std::string says;
  };
  const std::vector<Case> cases{
      {ok + "--dump-dir " + (dir / "missing").string(), 1, "not an existing directory"},
      {ok + "--layers 30", 2, "no layer 30"},
      {ok + "--layers 0,-1", 2, "no layer -1"},
      {ok + "--kv int8", 2, "--kv must be kivi or squat"},
      {ok + "--v-bits 4", 2, "--v-bits does not apply"},
      {ok + "--keys x.npy", 2, "--keys does not apply with --from-model"},
      {ok + "--k-bits 3", 2, "bits"},
      {"quant --from-model -f " + prompt, 2, "needs -m"},
      {"quant --from-model -m " + kModel + " -t 2", 2, "exactly one of -p/--prompt or -f/--file"},
      {"quant --from-model -m " + kModel + " -p hi -t 2", 2, "at least --group-size 32"},
      {"quant --from-model -m " + (dir / "missing.gguf").string() + " -p hi", 1, "missing.gguf"},
      {"quant --keys x.npy --out y.npy -m " + kModel, 2, "applies only with --from-model"},
  };
  for (const Case& c : cases) {
    const bool own_dir = c.args.find("--dump-dir") != std::string::npos;
    const Result rr =
        run_squat(c.args + (own_dir ? "" : " --dump-dir " + out.string()) + " --json " + json);
    EXPECT_EQ(rr.status, c.status) << c.args << "\n" << rr.output;
    EXPECT_NE(rr.output.find(c.says), std::string::npos) << c.args << "\n" << rr.output;
    EXPECT_FALSE(fs::exists(json)) << c.args;
    EXPECT_TRUE(fs::is_empty(out)) << c.args;
  }
}

}  // namespace
