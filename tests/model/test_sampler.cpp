#include <gtest/gtest.h>

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

}  // namespace
}  // namespace squat
