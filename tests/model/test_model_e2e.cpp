// End-to-end checks on the default model (SQUAT_TEST_MODEL): generation, batched versus
// token-by-token prompt processing, and agreement with llama.cpp (a committed fixture).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/generate.h"
#include "model/model.h"
#include "model/store_cache.h"
#include "tokenizer/tokenizer.h"

namespace squat {
namespace {

class DefaultModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(SQUAT_TEST_MODEL)) return;
    model_ = Model::load(SQUAT_TEST_MODEL).release();
    tokenizer_ = new Tokenizer(Tokenizer::from_gguf(model_->file()));
    pool_ = new ThreadPool(2);
  }
  static void TearDownTestSuite() {
    delete pool_;
    delete tokenizer_;
    delete model_;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model not found at '" SQUAT_TEST_MODEL "'";
  }
  // An fp16 cache of post-RoPE keys (llama.cpp's default), or fp32.
  static std::unique_ptr<InferenceContext> make_context(
      int max_tokens, int batch = 256, kv::CacheMethod method = kv::CacheMethod::F16) {
    kv::CacheConfig config;
    config.method = method;
    config.key_rope = kv::KeyRope::Post;
    auto cache = std::make_unique<StoreCache>(model_->kv_shape(max_tokens), model_->rope(), config);
    return std::make_unique<InferenceContext>(*model_, std::move(cache), *pool_, batch);
  }
  static std::string greedy(const std::string& prompt, int n) {
    auto context = make_context(512);
    Sampler sampler(SamplerParams{0.0f, 0, 1.0f, 0});
    std::string out;
    generate(*context, *tokenizer_, tokenizer_->encode(prompt, true, false), n, sampler,
             [&](int32_t t) {
               out += tokenizer_->token_to_piece(t);
               return true;
             });
    return out;
  }

  static Model* model_;
  static Tokenizer* tokenizer_;
  static ThreadPool* pool_;
};

Model* DefaultModel::model_ = nullptr;
Tokenizer* DefaultModel::tokenizer_ = nullptr;
ThreadPool* DefaultModel::pool_ = nullptr;

TEST_F(DefaultModel, ReadsTheConfiguration) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
}

TEST_F(DefaultModel, CapitalOfFranceIsParis) {
  const std::string text = greedy("The capital of France is", 12);
  EXPECT_NE(text.find("Paris"), std::string::npos) << text;
}

TEST_F(DefaultModel, BatchedPromptEqualsTokenByToken) {
  const std::vector<int32_t> prompt = tokenizer_->encode(
      "In 1905 Albert Einstein published four papers that changed physics: the photoelectric "
      "effect, Brownian motion, special relativity and the equivalence of mass and energy.",
      true, false);
  ASSERT_GT(prompt.size(), 30u);
  auto batched = make_context(256, 16);  // several batches of 16
  std::vector<float> all;
  batched->eval(prompt, &all);
  auto single = make_context(256);
  const std::size_t vocab = std::size_t(model_->config().vocab_size);
  double worst = 0;
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    const float* logits = single->eval(std::span<const int32_t>(&prompt[i], 1));
    for (std::size_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, double(std::fabs(logits[v] - all[i * vocab + v])));
    }
    EXPECT_EQ(Sampler::argmax(logits, int(vocab)), Sampler::argmax(&all[i * vocab], int(vocab)))
        << "position " << i;
  }
  // The same attention code reads the same fp16 cache either way; only the order of the
  // matrix products' work differs.
  EXPECT_LT(worst, 1e-3) << "largest logit difference between batched and single-token runs";
}

// llama.cpp (llama-cpp-python, the independent peer) on the same model: tokens, next-token
// logits after each prompt and 64 greedy tokens (scripts/make-llamacpp-fixture made the file).
nlohmann::json load_llamacpp_fixture() {
  std::ifstream in(std::string(SQUAT_SOURCE_DIR) + "/tests/fixtures/llamacpp/smollm2_q4_1.json");
  return nlohmann::json::parse(in);
}

// Both engines multiply Q4_1 weights with activations quantized to 8 bits per block of 32.
// That rounding is discontinuous, and this model's residual stream carries outliers in the
// tens of thousands, so a last-bit difference anywhere moves logits by a few tenths. llama.cpp
// also rounds queries and attention weights to fp16 inside attention, where we stay in fp32
// (with plain float matrix products instead, our logits sit within 0.2 of llama.cpp's on the
// short prompt). The tolerances are set for that noise, on logits spanning 10-35: every top-20
// logit within 1.0 and their mean difference under 0.4.
constexpr double kMaxLogitDifference = 1.0;
constexpr double kMeanLogitDifference = 0.4;
// Greedy tokens are compared step by step along llama.cpp's own sequence (each step is fed
// llama.cpp's token). A step where we pick another token is accepted only where llama.cpp's
// top two logits were within this (twice the per-logit noise above: both can move).
constexpr double kNearTie = 1.0;
// And at least this share of all steps must pick llama.cpp's token.
constexpr double kMinGreedyAgreement = 0.95;

TEST_F(DefaultModel, MatchesLlamaCppTokensLogitsAndGreedyText) {
  const nlohmann::json fixture = load_llamacpp_fixture();
  ASSERT_GE(fixture["cases"].size(), 5u);
  int steps = 0, agreed = 0;
  for (const auto& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::vector<int32_t> expected_tokens = c["prompt_tokens"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->encode(c["prompt"].get<std::string>(), true, c["special"].get<bool>()),
              expected_tokens);

    auto context = make_context(2048);
    const float* logits = context->eval(expected_tokens);
    double worst = 0, total = 0;
    for (const auto& pair : c["top_logits"]) {
      const double difference =
          std::fabs(double(logits[pair[0].get<int>()]) - pair[1].get<double>());
      worst = std::max(worst, difference);
      total += difference;
    }
    const double mean = total / double(c["top_logits"].size());
    EXPECT_LT(worst, kMaxLogitDifference) << "largest top-20 logit difference to llama.cpp";
    EXPECT_LT(mean, kMeanLogitDifference) << "mean top-20 logit difference to llama.cpp";
    std::printf("[ note ] %s: %zu prompt tokens, top-20 logit difference max %.4f mean %.4f\n",
                c["name"].get<std::string>().c_str(), expected_tokens.size(), worst, mean);

    const std::vector<int32_t> expected_text = c["generated_tokens"].get<std::vector<int32_t>>();
    const int vocab = model_->config().vocab_size;
    for (std::size_t step = 0; step < expected_text.size(); ++step) {
      const int32_t ours = Sampler::argmax(logits, vocab);
      ++steps;
      if (ours == expected_text[step]) {
        ++agreed;
      } else {
        const auto& top2 = c["steps"][step];
        const double gap = top2[0][1].get<double>() - top2[1][1].get<double>();
        EXPECT_LT(gap, kNearTie) << "step " << step << ": we pick " << ours << ", llama.cpp "
                                 << expected_text[step] << " with a top-2 gap of " << gap;
        std::printf("[ note ] %s: step %zu picks another token; llama.cpp's top-2 gap %.4f\n",
                    c["name"].get<std::string>().c_str(), step, gap);
      }
      logits = context->eval(std::span<const int32_t>(&expected_text[step], 1));
    }
  }
  std::printf("[ note ] greedy agreement with llama.cpp: %d of %d steps\n", agreed, steps);
  EXPECT_GE(agreed, kMinGreedyAgreement * steps);
}

}  // namespace
}  // namespace squat
