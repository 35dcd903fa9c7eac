#include <atomic>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>

#include "core/thread_pool.h"

namespace squat {
namespace {

TEST(ThreadPool, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (std::size_t n : {0u, 1u, 7u, 64u, 1001u}) {
      for (std::size_t grain : {1u, 4u, 16u}) {
        std::vector<std::atomic<int>> hits(n);
        pool.parallel_for(n, [&](std::size_t b, std::size_t e, int t) {
          EXPECT_LT(t, threads);
          if (b % grain != 0) ADD_FAILURE() << "range start " << b << " not at grain " << grain;
          for (std::size_t i = b; i < e; ++i) hits[i]++;
        }, grain);
        for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << i;
      }
    }
  }
}

TEST(ThreadPool, ManySmallJobsAndAllThreads) {
  ThreadPool pool(4);
  std::atomic<long> total{0};
  for (int job = 0; job < 2000; ++job) {
    pool.parallel_for(10, [&](std::size_t b, std::size_t e, int) { total += long(e - b); });
  }
  EXPECT_EQ(total.load(), 20000);
  std::vector<int> seen(4, 0);
  pool.run_on_all([&](int t) { seen[t] = 1; });
  EXPECT_EQ(std::accumulate(seen.begin(), seen.end(), 0), 4);
}

}  // namespace
}  // namespace squat
