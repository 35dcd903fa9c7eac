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

#include "model/full_cache.h"
#include "model/generate.h"
#include "model/model.h"
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
  static std::unique_ptr<InferenceContext> make_context(int max_tokens, int batch = 256) {
    auto cache = std::make_unique<FullPrecisionCache>(model_->kv_shape(max_tokens), model_->rope(),
                                                      FullPrecisionCache::Storage::F16);
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
  EXPECT_LT(worst, 0.05) << "largest logit difference between batched and single-token runs";
}

}  // namespace
}  // namespace squat
