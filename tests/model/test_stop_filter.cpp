// Stop strings end the text at their first occurrence, even split across tokens, and no part of
// a stop string is ever sent.
#include <gtest/gtest.h>

#include "model/stop_filter.h"

namespace squat {
namespace {

std::string run(const std::vector<std::string>& stops, const std::vector<std::string>& pieces,
                bool* stopped = nullptr) {
  StopFilter filter(stops);
  std::string out;
  for (const std::string& p : pieces) out += filter.add(p);
  out += filter.finish();
  if (stopped) *stopped = filter.stopped();
  return out;
}

TEST(StopFilter, PassesTextWithoutStops) {
  bool stopped = true;
  EXPECT_EQ(run({}, {"a", "b", "c"}, &stopped), "abc");
  EXPECT_FALSE(stopped);
}

TEST(StopFilter, CutsAtAStopSplitAcrossPieces) {
  bool stopped = false;
  EXPECT_EQ(run({"END"}, {"x E", "N", "D y"}, &stopped), "x ");
  EXPECT_TRUE(stopped);
}

TEST(StopFilter, HoldsBackOnlyPossibleStarts) {
  StopFilter filter({"END"});
  EXPECT_EQ(filter.add("abcE"), "abc");  // "E" may start END
  EXPECT_EQ(filter.add("X"), "EX");      // it did not
  EXPECT_EQ(filter.add("EN"), "");
  EXPECT_EQ(filter.finish(), "EN");  // generation ended without the stop
}

TEST(StopFilter, EarliestOfSeveralStopsWins) {
  EXPECT_EQ(run({"zz", "b"}, {"aabzz"}), "aa");
  EXPECT_EQ(run({"\n\n", "Q:"}, {"one\n", "\ntwo"}), "one");
}

TEST(StopFilter, NothingAfterTheStop) {
  StopFilter filter({"."});
  EXPECT_EQ(filter.add("Hi. More"), "Hi");
  EXPECT_EQ(filter.add("text"), "");
  EXPECT_EQ(filter.finish(), "");
}

}  // namespace
}  // namespace squat
