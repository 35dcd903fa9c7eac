#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
#include "model/sampler.h"

namespace squat {
namespace {

TEST(Sampler, GreedyTakesTheLargestLogit) {
  Sampler sampler(SamplerParams{0.0f, 40, 0.95f, 1});
  const std::vector<float> logits{0.1f, 2.5f, -1.0f, 2.4f};
  EXPECT_EQ(sampler.sample(logits.data(), 4), 1);
  EXPECT_EQ(Sampler::argmax(logits.data(), 4), 1);
}

TEST(Sampler, TopKOfOneIsGreedyAtAnyTemperature) {
  Sampler sampler(SamplerParams{5.0f, 1, 1.0f, 3});
  const std::vector<float> logits{0.0f, 0.3f, 0.2f};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sampler.sample(logits.data(), 3), 1);
}

TEST(Sampler, SameSeedSameDraws) {
  const std::vector<float> logits{1.0f, 1.1f, 0.9f, 1.05f, 0.7f};
  Sampler a(SamplerParams{1.0f, 0, 1.0f, 42}), b(SamplerParams{1.0f, 0, 1.0f, 42});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(logits.data(), 5), b.sample(logits.data(), 5));
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  // logits log(1), log(2), log(3): probabilities 1/6, 2/6, 3/6 at temperature 1.
  const std::vector<float> logits{0.0f, 0.6931472f, 1.0986123f};
  Sampler sampler(SamplerParams{1.0f, 0, 1.0f, 9});
  std::map<int, int> counts;
  const int draws = 60000;
  for (int i = 0; i < draws; ++i) counts[sampler.sample(logits.data(), 3)]++;
  EXPECT_NEAR(counts[0] / double(draws), 1.0 / 6, 0.01);
  EXPECT_NEAR(counts[1] / double(draws), 2.0 / 6, 0.01);
  EXPECT_NEAR(counts[2] / double(draws), 3.0 / 6, 0.01);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // Probabilities 0.5, 0.3, 0.2 (as logits of their logs); top_p 0.75 keeps the first two.
  const std::vector<float> logits{-0.6931472f, -1.2039728f, -1.6094379f};
  Sampler sampler(SamplerParams{1.0f, 0, 0.75f, 5});
  std::map<int, int> counts;
  for (int i = 0; i < 20000; ++i) counts[sampler.sample(logits.data(), 3)]++;
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 20000.0, 0.5 / 0.8, 0.02);
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler(SamplerParams{-1.0f, 40, 0.9f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{1.0f, -3, 0.9f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{1.0f, 40, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerParams{1.0f, 40, 1.5f, 0}), Error);
}

// Hand-computed: history {0, 1, 1, 7(out of vocab)}, repeat 2, presence 0.5, frequency 0.25.
// token 0 (logit 2, once):   2 / 2 - 0.5 - 0.25     = 0.25
// token 1 (logit -1, twice): -1 * 2 - 0.5 - 2 * 0.25 = -3
// tokens 2, 3 unseen: unchanged.
TEST(Sampler, PenaltiesFollowTheHandComputedValues) {
  SamplerParams p{0.0f, 0, 1.0f, 1};
  p.repeat_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  Sampler sampler(p);
  const std::vector<int32_t> seen{0, 1, 1, 7};
  sampler.observe(seen);
  std::vector<float> logits{2.0f, -1.0f, 0.5f, 1.0f};
  sampler.penalize(logits.data(), 4);
  EXPECT_FLOAT_EQ(logits[0], 0.25f);
  EXPECT_FLOAT_EQ(logits[1], -3.0f);
  EXPECT_FLOAT_EQ(logits[2], 0.5f);
  EXPECT_FLOAT_EQ(logits[3], 1.0f);
  // Greedy now picks token 3 (1.0 > 0.5 > 0.25), where the raw logits pick token 0.
  const std::vector<float> raw{2.0f, -1.0f, 0.5f, 1.0f};
  EXPECT_EQ(sampler.sample(raw.data(), 4), 3);
  // The pick is remembered: token 3 is penalized next time (1 / 2 - 0.5 - 0.25 = -0.25), so
  // token 2 (0.5) wins.
  EXPECT_EQ(sampler.sample(raw.data(), 4), 2);
}

TEST(Sampler, PenaltiesOnlyLookAtTheLastNTokens) {
  SamplerParams p{0.0f, 0, 1.0f, 1};
  p.presence_penalty = 2.0f;
  p.penalty_last_n = 2;
  Sampler sampler(p);
  const std::vector<int32_t> seen{0, 2, 2};  // token 0 has left the window of 2
  sampler.observe(seen);
  std::vector<float> logits{1.0f, 1.0f, 1.0f};
  sampler.penalize(logits.data(), 3);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);
  EXPECT_FLOAT_EQ(logits[1], 1.0f);
  EXPECT_FLOAT_EQ(logits[2], -1.0f);
}

TEST(Sampler, DefaultParametersPenalizeNothing) {
  Sampler sampler(SamplerParams{});
  EXPECT_FALSE(sampler.penalties_active());
  const std::vector<int32_t> seen{0, 0, 0};
  sampler.observe(seen);
  std::vector<float> logits{1.0f, -1.0f};
  sampler.penalize(logits.data(), 2);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);
  EXPECT_FLOAT_EQ(logits[1], -1.0f);
}

// Probabilities 0.5, 0.3, 0.15, 0.05; min_p 0.2 keeps p >= 0.1: the first three, renormalized.
// At temperature 2 the cut is the same (it is made before temperature): tempered, the last
// token's ratio to the first would be sqrt(0.1) = 0.32 > 0.2 and it would survive.
TEST(Sampler, MinPCutsRelativeToTheMostLikelyTokenBeforeTemperature) {
  const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplerParams p{1.0f, 0, 1.0f, 11};
  p.min_p = 0.2f;
  Sampler sampler(p);
  std::map<int, int> counts;
  const int draws = 40000;
  for (int i = 0; i < draws; ++i) counts[sampler.sample(logits.data(), 4)]++;
  EXPECT_EQ(counts[3], 0);
  EXPECT_NEAR(counts[0] / double(draws), 0.5 / 0.95, 0.015);
  EXPECT_NEAR(counts[1] / double(draws), 0.3 / 0.95, 0.015);
  EXPECT_NEAR(counts[2] / double(draws), 0.15 / 0.95, 0.015);

  p.temperature = 2.0f;
  Sampler hot(p);
  counts.clear();
  for (int i = 0; i < draws; ++i) counts[hot.sample(logits.data(), 4)]++;
  EXPECT_EQ(counts[3], 0);
  // Tempered weights sqrt(0.5), sqrt(0.3), sqrt(0.15).
  const double w0 = std::sqrt(0.5), w1 = std::sqrt(0.3), w2 = std::sqrt(0.15);
  EXPECT_NEAR(counts[0] / double(draws), w0 / (w0 + w1 + w2), 0.015);
  EXPECT_NEAR(counts[2] / double(draws), w2 / (w0 + w1 + w2), 0.015);
}

TEST(Sampler, BannedTokensAreNeverSampled) {
  const std::vector<float> logits{5.0f, 0.0f, 4.0f};
  Sampler greedy(SamplerParams{0.0f, 0, 1.0f, 1});
  greedy.ban(0);
  EXPECT_EQ(greedy.sample(logits.data(), 3), 2);
  Sampler hot(SamplerParams{3.0f, 0, 1.0f, 2});
  hot.ban(0);
  for (int i = 0; i < 500; ++i) EXPECT_NE(hot.sample(logits.data(), 3), 0);
}

TEST(Sampler, RejectsBadPenaltiesAndMinP) {
  auto with = [](auto set) {
    SamplerParams p;
    set(p);
    return p;
  };
  EXPECT_THROW(Sampler(with([](SamplerParams& p) { p.min_p = -0.1f; })), Error);
  EXPECT_THROW(Sampler(with([](SamplerParams& p) { p.min_p = 1.5f; })), Error);
  EXPECT_THROW(Sampler(with([](SamplerParams& p) { p.repeat_penalty = 0.0f; })), Error);
  EXPECT_THROW(Sampler(with([](SamplerParams& p) { p.presence_penalty = 3.0f; })), Error);
  EXPECT_THROW(Sampler(with([](SamplerParams& p) { p.frequency_penalty = -2.5f; })), Error);
  EXPECT_THROW(Sampler(with([](SamplerParams& p) { p.penalty_last_n = -1; })), Error);
  EXPECT_NO_THROW(Sampler(with([](SamplerParams& p) { p.repeat_penalty = 1.3f; })));
}

}  // namespace
}  // namespace squat
