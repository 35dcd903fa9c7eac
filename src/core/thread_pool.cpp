#include "core/thread_pool.h"

#include <algorithm>
#include <exception>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQUAT_CPU_RELAX() _mm_pause()
#else
#define SQUAT_CPU_RELAX() std::this_thread::yield()
#endif

namespace squat {

namespace {
// Spinning pays on a quiet machine (jobs are microseconds apart during decode); on a busy one
// a spinning thread steals the core from the thread it waits for, so spins are short and then
// yield or sleep.
constexpr int kSpinIterations = 4000;
constexpr int kPausesBeforeYield = 256;

// The pool whose job this thread is running and its index there: a dispatch from inside a job
// of the same pool runs inline instead of overwriting the job the other threads are running.
thread_local const ThreadPool* t_pool = nullptr;
thread_local int t_index = 0;

void relax(int spin) {
  if (spin < kPausesBeforeYield) {
    SQUAT_CPU_RELAX();
  } else {
    std::this_thread::yield();
  }
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  {
    // Taken so that a worker between announcing its sleep and waiting cannot miss the wake.
    std::lock_guard<std::mutex> lock(mutex_);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::worker_loop(int index) {
  t_pool = this;
  t_index = index;
  uint64_t seen = 0;
  for (;;) {
    uint64_t current = generation_.load(std::memory_order_acquire);
    for (int spin = 0; current == seen && spin < kSpinIterations; ++spin) {
      relax(spin);
      current = generation_.load(std::memory_order_acquire);
    }
    if (current == seen) {
      // sleeping_ is raised before the generation is read again (both sequentially
      // consistent), and dispatch bumps the generation before it reads sleeping_: so either
      // this check sees the new job or dispatch sees a sleeper and wakes it under the mutex.
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleeping_.fetch_sub(1);
      current = generation_.load(std::memory_order_acquire);
    }
    seen = current;
    if (stop_.load()) return;
    run_share(*job_, index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run_share(const ThreadFn& job, int index) noexcept {
  try {
    job(index);
  } catch (...) {
    if (!error_claimed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
  }
}

void ThreadPool::dispatch(ThreadFn job) {
  if (n_threads_ == 1) {
    job(0);
    return;
  }
  job_ = &job;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1);  // sequentially consistent: publishes job_ and pending_
  if (sleeping_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    wake_.notify_all();
  }
  const ThreadPool* outer_pool = t_pool;
  const int outer_index = t_index;
  t_pool = this;
  t_index = 0;
  run_share(job, 0);
  // Workers still read `job`, which lives in this frame: wait for them even after a throw.
  // The acquire load that sees pending_ at 0 also makes a worker's error_ visible here.
  for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) relax(spin);
  t_pool = outer_pool;
  t_index = outer_index;
  if (error_claimed_.load(std::memory_order_relaxed)) {
    std::exception_ptr error = std::move(error_);
    error_ = nullptr;
    error_claimed_.store(false, std::memory_order_relaxed);
    std::rethrow_exception(error);
  }
}

void ThreadPool::run_on_all(ThreadFn body) {
  if (t_pool == this) {
    body(t_index);
    return;
  }
  dispatch(body);
}

void ThreadPool::parallel_for(std::size_t n, RangeFn body, std::size_t grain) {
  if (n == 0) return;
  if (t_pool == this) {
    body(0, n, t_index);
    return;
  }
  grain = std::max<std::size_t>(1, grain);
  const std::size_t chunks = (n + grain - 1) / grain;
  const std::size_t parts = std::min<std::size_t>(chunks, std::size_t(n_threads_));
  if (parts <= 1) {
    body(0, n, 0);
    return;
  }
  const auto job = [&](int thread) {
    if (std::size_t(thread) >= parts) return;
    const std::size_t first_chunk = chunks * std::size_t(thread) / parts;
    const std::size_t last_chunk = chunks * std::size_t(thread + 1) / parts;
    const std::size_t begin = first_chunk * grain;
    const std::size_t end = std::min(n, last_chunk * grain);
    if (begin < end) body(begin, end, thread);
  };
  dispatch(job);
}

}  // namespace squat
