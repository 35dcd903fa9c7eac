#include "core/hash.h"

#include <gtest/gtest.h>

#include <string>

namespace {

uint64_t hash_of(const std::string& s) { return squat::fnv1a(s.data(), s.size()); }

// Published FNV-1a 64-bit test vectors (Fowler/Noll/Vo reference test suite).
TEST(Fnv1a, MatchesPublishedVectors) {
  EXPECT_EQ(hash_of(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(hash_of("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(hash_of("foobar"), 0x85944171f73967e8ull);
}

TEST(Fnv1a, PiecewiseEqualsWhole) {
  squat::Fnv1a h;
  h.add("foo", 3).add("bar", 3);
  EXPECT_EQ(h.value(), hash_of("foobar"));
}

}  // namespace
