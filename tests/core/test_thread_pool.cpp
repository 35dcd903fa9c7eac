#include <atomic>
#include <chrono>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
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

// Back-to-back jobs far smaller than a wake-up: every job must see each of its ranges run once,
// none lost to or run twice by a worker still finishing the previous job.
TEST(ThreadPool, TinyJobsBackToBackEachRunExactlyOnce) {
  for (int threads : {2, 3, 4}) {
    ThreadPool pool(threads);
    const std::size_t n = std::size_t(threads);
    std::vector<std::atomic<int>> hits(n);
    for (int job = 0; job < 1000; ++job) {
      for (auto& h : hits) h.store(0, std::memory_order_relaxed);
      pool.parallel_for(n, [&](std::size_t b, std::size_t e, int t) {
        EXPECT_EQ(e, b + 1);
        EXPECT_EQ(std::size_t(t), b);  // one item per thread, in thread order
        hits[b].fetch_add(1, std::memory_order_relaxed);
      });
      for (int i = 0; i < threads; ++i) {
        ASSERT_EQ(hits[std::size_t(i)].load(), 1) << "job " << job << " item " << i;
      }
    }
  }
}

// A parallel_for or run_on_all issued from inside a job of the same pool runs inline on the
// calling thread with its index (the other threads are busy with the outer job).
TEST(ThreadPool, NestedCallsRunInlineOnTheCallingThread) {
  ThreadPool pool(3);
  const std::size_t outer_n = 3, inner_n = 100;
  std::vector<std::atomic<int>> inner_hits(outer_n * inner_n);
  std::atomic<int> inner_calls{0}, nested_all_calls{0};
  pool.parallel_for(outer_n, [&](std::size_t b, std::size_t e, int outer_thread) {
    const std::thread::id me = std::this_thread::get_id();
    for (std::size_t o = b; o < e; ++o) {
      pool.parallel_for(inner_n, [&](std::size_t ib, std::size_t ie, int inner_thread) {
        EXPECT_EQ(inner_thread, outer_thread);
        EXPECT_EQ(std::this_thread::get_id(), me);
        EXPECT_EQ(ib, 0u);
        EXPECT_EQ(ie, inner_n);
        inner_calls++;
        for (std::size_t i = ib; i < ie; ++i) inner_hits[o * inner_n + i]++;
      });
      pool.run_on_all([&](int t) {
        EXPECT_EQ(t, outer_thread);
        EXPECT_EQ(std::this_thread::get_id(), me);
        nested_all_calls++;
      });
    }
  });
  EXPECT_EQ(inner_calls.load(), int(outer_n));
  EXPECT_EQ(nested_all_calls.load(), int(outer_n));
  for (std::size_t i = 0; i < inner_hits.size(); ++i) EXPECT_EQ(inner_hits[i].load(), 1) << i;
  // After the nesting the pool is parallel again: every thread takes part.
  std::vector<std::atomic<int>> seen(3);
  pool.run_on_all([&](int t) { seen[std::size_t(t)]++; });
  for (auto& s : seen) EXPECT_EQ(s.load(), 1);
}

// Blocks until every worker of `pool` sleeps on the condition variable (they do after their
// spin budget); a generous bound turns a bug into a failure instead of a hang.
bool wait_until_all_sleep(const ThreadPool& pool) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (pool.sleeping_workers() < pool.size() - 1) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

TEST(ThreadPool, SleepingWorkersAreWokenForTheNextJob) {
  ThreadPool pool(4);
  for (int cycle = 0; cycle < 5; ++cycle) {
    ASSERT_TRUE(wait_until_all_sleep(pool)) << "cycle " << cycle;
    EXPECT_EQ(pool.sleeping_workers(), 3);
    std::vector<std::thread::id> ids(4);
    pool.run_on_all([&](int t) { ids[std::size_t(t)] = std::this_thread::get_id(); });
    for (int a = 0; a < 4; ++a)
      for (int b = a + 1; b < 4; ++b) EXPECT_NE(ids[std::size_t(a)], ids[std::size_t(b)]);
  }
}

TEST(ThreadPool, DestroyedWhileIdleSpinningOrAsleep) {
  { ThreadPool fresh(4); }  // workers may not have started yet
  {
    ThreadPool spinning(4);
    std::atomic<int> n{0};
    spinning.run_on_all([&](int) { n++; });
    EXPECT_EQ(n.load(), 4);
  }  // destroyed right after a job, workers still spinning
  {
    ThreadPool asleep(4);
    ASSERT_TRUE(wait_until_all_sleep(asleep));
  }
}

TEST(ThreadPool, CallerExceptionIsRethrownAfterWorkersFinish) {
  ThreadPool pool(3);
  std::atomic<int> finished{0};
  EXPECT_THROW(pool.run_on_all([&](int t) {
    if (t == 0) throw std::runtime_error("caller share failed");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    finished++;
  }),
               std::runtime_error);
  EXPECT_EQ(finished.load(), 2);  // the workers' shares ended before the call returned
  std::atomic<int> after{0};
  pool.run_on_all([&](int) { after++; });
  EXPECT_EQ(after.load(), 3);
}

TEST(ThreadPool, WorkerExceptionIsRethrownOnTheCaller) {
  ThreadPool pool(3);
  std::atomic<int> finished{0};
  try {
    pool.run_on_all([&](int t) {
      if (t == 2) throw std::runtime_error("worker 2 failed");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      finished++;
    });
    FAIL() << "the worker's exception was not rethrown";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "worker 2 failed");
  }
  EXPECT_EQ(finished.load(), 2);  // the other shares ran to their end
  // The same from parallel_for, with a range on a worker.
  EXPECT_THROW(pool.parallel_for(30,
                                 [](std::size_t begin, std::size_t, int) {
                                   if (begin >= 20) throw std::out_of_range("last range");
                                 }),
               std::out_of_range);
}

TEST(ThreadPool, OneOfSeveralExceptionsIsRethrownThenTheSlotIsCleared) {
  ThreadPool pool(4);
  for (int round = 0; round < 50; ++round) {
    try {
      pool.run_on_all([](int t) { throw std::runtime_error("share " + std::to_string(t)); });
      FAIL() << "nothing rethrown in round " << round;
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("share ", 0), 0u) << e.what();
    }
    // A job that throws nothing must not see the previous job's exception again.
    std::atomic<int> ran{0};
    EXPECT_NO_THROW(pool.run_on_all([&](int) { ran++; }));
    EXPECT_EQ(ran.load(), 4);
  }
}

}  // namespace
}  // namespace squat
