// apps/stats against worked examples.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "apps/stats.h"

namespace squat::apps {
namespace {

TEST(Stats, MeanAndStandardErrorOfTheMean) {
  // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample variance 32/7, standard error sqrt(32/7/8).
  const std::vector<double> v{2, 4, 4, 4, 5, 5, 7, 9};
  EXPECT_DOUBLE_EQ(mean(v), 5.0);
  EXPECT_NEAR(stderr_of_mean(v), std::sqrt(32.0 / 7.0 / 8.0), 1e-15);
  EXPECT_EQ(mean({}), 0.0);
  EXPECT_EQ(stderr_of_mean({3.0}), 0.0);
}

TEST(Stats, MedianOfOddAndEvenCounts) {
  EXPECT_EQ(median({5, 1, 3}), 3.0);
  EXPECT_EQ(median({4, 1, 3, 2}), 2.5);
  EXPECT_EQ(median({}), 0.0);
}

TEST(Stats, NearestRankPercentile) {
  // The nearest-rank method's textbook example: 15, 20, 35, 40, 50.
  const std::vector<double> v{50, 15, 40, 20, 35};
  EXPECT_EQ(percentile(v, 5), 15.0);
  EXPECT_EQ(percentile(v, 30), 20.0);
  EXPECT_EQ(percentile(v, 40), 20.0);
  EXPECT_EQ(percentile(v, 50), 35.0);
  EXPECT_EQ(percentile(v, 100), 50.0);
  EXPECT_EQ(percentile(v, 0), 15.0);
}

TEST(Stats, WilsonIntervalMatchesPublishedExamples) {
  // Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553 .. 0.3662,
  // 15/148 -> 0.0624 .. 0.1605, 0/20 -> 0 .. 0.1611, 1/29 -> 0.0061 .. 0.1718.
  const struct {
    long k, n;
    double lo, hi;
  } cases[] = {{81, 263, 0.2553, 0.3662}, {15, 148, 0.0624, 0.1605}, {0, 20, 0.0, 0.1611},
               {1, 29, 0.0061, 0.1718}};
  for (const auto& c : cases) {
    const auto [lo, hi] = wilson_interval(c.k, c.n);
    EXPECT_NEAR(lo, c.lo, 5e-5) << c.k << "/" << c.n;
    EXPECT_NEAR(hi, c.hi, 5e-5) << c.k << "/" << c.n;
  }
  EXPECT_EQ(wilson_interval(0, 0), std::make_pair(0.0, 1.0));
}

}  // namespace
}  // namespace squat::apps
