// Continuous batching must not change what a sequence computes: several sequences decoded
// together in one batched step (each with its own cache and SQuat subspace, prompts of
// different lengths, prefill mixed with decode rows) give the tokens and logits each gives
// decoded alone through InferenceContext.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/batch_decode.h"
#include "model/sampler.h"
#include "model/store_cache.h"
#include "tokenizer/tokenizer.h"

namespace squat {
namespace {

struct Trace {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // before each sampled token
};

class BatchDecode : public ::testing::TestWithParam<kv::CacheMethod> {
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
  static std::unique_ptr<StoreCache> cache(int capacity) {
    kv::CacheConfig config;
    config.method = GetParam();
    config.quant_group_size = 32;
    config.key_rope = config.quantized() ? kv::KeyRope::Pre : kv::KeyRope::Post;
    return std::make_unique<StoreCache>(model_->kv_shape(capacity), model_->rope(), config);
  }
  static std::vector<float> copy(const float* logits) {
    return std::vector<float>(logits, logits + model_->config().vocab_size);
  }

  // Greedy decoding of one prompt alone (the engine's single-sequence path).
  static Trace alone(const std::vector<int32_t>& prompt, int steps) {
    InferenceContext context(*model_, cache(256), *pool_, 256);
    Trace t;
    const float* logits = context.eval(prompt);
    for (int i = 0; i < steps; ++i) {
      t.logits.push_back(copy(logits));
      t.tokens.push_back(Sampler::argmax(logits, model_->config().vocab_size));
      if (i + 1 < steps) logits = context.eval({&t.tokens.back(), 1});
    }
    return t;
  }

  static Model* model_;
  static Tokenizer* tokenizer_;
  static ThreadPool* pool_;
};

Model* BatchDecode::model_ = nullptr;
Tokenizer* BatchDecode::tokenizer_ = nullptr;
ThreadPool* BatchDecode::pool_ = nullptr;

TEST_P(BatchDecode, SameTokensAndLogitsAsEachSequenceAlone) {
  const std::vector<std::string> texts = {
      "The capital of France is",
      "Water boils at a temperature of",
      "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
      "Once upon a time, in a small village at the edge of a great forest, there lived an old "
      "woodcutter and his three children. Every morning the woodcutter",
  };
  const int steps = 40;  // past one residual window (32): quantized tokens are attended to
  std::vector<std::vector<int32_t>> prompts;
  std::vector<Trace> expected;
  for (const std::string& text : texts) {
    prompts.push_back(tokenizer_->encode(text, true, false));
    expected.push_back(alone(prompts.back(), steps));
  }

  // The first two sequences start together; the others join after a few steps (their prompt
  // prefilled in the same batch as the others' decode rows), as in the server.
  const std::vector<int> join_at = {0, 0, 3, 7};
  BatchDecoder decoder(*model_, *pool_, 4 + 256);
  std::vector<std::unique_ptr<BatchSequence>> seqs;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    seqs.push_back(std::make_unique<BatchSequence>(cache(256)));
  }
  std::vector<Trace> got(texts.size());
  const int vocab = model_->config().vocab_size;
  int max_rows_seen = 0;
  for (int step = 0; step < steps + 7; ++step) {
    std::vector<BatchInput> inputs;
    std::vector<std::size_t> who;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      if (step < join_at[i] || int(got[i].tokens.size()) >= steps) continue;
      if (step == join_at[i]) {
        inputs.push_back({seqs[i].get(), prompts[i], true});
      } else {
        inputs.push_back({seqs[i].get(), {&got[i].tokens.back(), 1}, true});
      }
      who.push_back(i);
    }
    if (inputs.empty()) break;
    max_rows_seen = std::max(max_rows_seen, int(inputs.size()));
    const float* logits = decoder.eval(inputs);
    for (std::size_t j = 0; j < who.size(); ++j) {
      const float* l = logits + j * std::size_t(vocab);
      got[who[j]].logits.push_back(copy(l));
      got[who[j]].tokens.push_back(Sampler::argmax(l, vocab));
    }
  }
  EXPECT_EQ(max_rows_seen, 4) << "all four sequences shared steps";

  for (std::size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(got[i].tokens, expected[i].tokens) << "sequence " << i;
    ASSERT_EQ(got[i].logits.size(), expected[i].logits.size());
    for (std::size_t s = 0; s < got[i].logits.size(); ++s) {
      double max_diff = 0, max_abs = 0;
      for (int v = 0; v < vocab; ++v) {
        max_diff = std::max(max_diff, double(std::abs(got[i].logits[s][std::size_t(v)] -
                                                      expected[i].logits[s][std::size_t(v)])));
        max_abs = std::max(max_abs, double(std::abs(expected[i].logits[s][std::size_t(v)])));
      }
      // Same arithmetic up to summation order (matrix-matrix vs matrix-vector products).
      EXPECT_LE(max_diff, 1e-3 * std::max(1.0, max_abs)) << "sequence " << i << " step " << s;
    }
    EXPECT_EQ(seqs[i]->n_past(), int(prompts[i].size()) + steps - 1);
  }
}

TEST_P(BatchDecode, RefusesBadSteps) {
  BatchDecoder decoder(*model_, *pool_, 8);
  BatchSequence seq(cache(4));
  const std::vector<int32_t> nine(9, 1), five(5, 1), bad = {-1};
  EXPECT_THROW(decoder.eval(std::vector<BatchInput>{}), Error);
  EXPECT_THROW(decoder.eval(std::vector<BatchInput>{{&seq, nine, true}}), Error);  // > max rows
  EXPECT_THROW(decoder.eval(std::vector<BatchInput>{{&seq, five, true}}), Error);  // > capacity
  EXPECT_THROW(decoder.eval(std::vector<BatchInput>{{&seq, bad, true}}), Error);
  EXPECT_EQ(seq.n_past(), 0) << "a refused step feeds nothing";
}

INSTANTIATE_TEST_SUITE_P(Methods, BatchDecode,
                         ::testing::Values(kv::CacheMethod::F16, kv::CacheMethod::Squat),
                         [](const auto& info) { return std::string(kv::to_string(info.param)); });

}  // namespace
}  // namespace squat
