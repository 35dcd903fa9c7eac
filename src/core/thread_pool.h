// A fixed set of worker threads made once and reused for every parallel loop. Workers spin
// briefly between jobs (decode issues hundreds of small jobs per token, and waking a sleeping
// thread costs more than the job) and then sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace squat {

class ThreadPool {
 public:
  // body(begin, end, thread_index) processes items [begin, end).
  using RangeFn = std::function<void(std::size_t, std::size_t, int)>;

  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Splits [0, n) into at most size() contiguous ranges, at multiples of `grain` (except the
  // end), runs them in parallel (the caller runs the first) and returns when all are done.
  void parallel_for(std::size_t n, const RangeFn& body, std::size_t grain = 1);

  // Runs body(thread_index) once on every thread (caller is thread 0).
  void run_on_all(const std::function<void(int)>& body);

 private:
  void worker_loop(int index);
  void dispatch(const std::function<void(int)>& job);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleeping_{0};
};

}  // namespace squat
