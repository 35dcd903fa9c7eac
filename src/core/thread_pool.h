// A fixed set of worker threads made once and reused for every parallel loop. Workers spin
// briefly between jobs (decode issues hundreds of small jobs per token, and waking a sleeping
// thread costs more than the job) and then sleep on a condition variable. Handing out a job
// takes no lock and allocates nothing: the mutex is taken only to go to sleep and to wake
// sleepers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace squat {

// A non-owning reference to a callable (never allocates, unlike std::function): valid only
// while the callable it was made from lives, which is the whole call for the pool's jobs.
template <typename Signature>
class FunctionRef;

template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef>)
      FunctionRef(F&& f)  // NOLINT: implicit, like std::function
      : object_(const_cast<void*>(static_cast<const void*>(&f))),
        invoke_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(args...);
        }) {}
  R operator()(Args... args) const { return invoke_(object_, args...); }

 private:
  void* object_;
  R (*invoke_)(void*, Args...);
};

class ThreadPool {
 public:
  // body(begin, end, thread_index) processes items [begin, end).
  using RangeFn = FunctionRef<void(std::size_t, std::size_t, int)>;
  using ThreadFn = FunctionRef<void(int)>;

  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Splits [0, n) into at most size() contiguous ranges, at multiples of `grain` (except the
  // end), runs them in parallel (the caller runs the first) and returns when all are done.
  // Called from inside a job of this pool (nested), it runs the whole range on the calling
  // thread, with that thread's index: the other threads are busy with the outer job.
  // Exceptions: a share that throws ends that share only; once every share has ended, the first
  // exception thrown (on any thread) is rethrown on the caller and the others are dropped.
  void parallel_for(std::size_t n, RangeFn body, std::size_t grain = 1);

  // Runs body(thread_index) once on every thread (caller is thread 0). Nested inside a job of
  // this pool, only the calling thread is free, so body runs once, with that thread's index.
  // Exceptions as for parallel_for.
  void run_on_all(ThreadFn body);

  // Workers asleep on the condition variable now (they sleep after a spin budget with no job).
  int sleeping_workers() const { return sleeping_.load(); }

 private:
  void worker_loop(int index);
  void dispatch(ThreadFn job);
  // Runs one thread's share of a job, keeping the job's first exception in error_.
  void run_share(const ThreadFn& job, int index) noexcept;

  int n_threads_;
  std::vector<std::thread> workers_;
  const ThreadFn* job_ = nullptr;  // published by the release increment of generation_
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // The first share to throw claims error_claimed_ and stores its exception; dispatch reads and
  // clears error_ after every share has ended (pending_ reached 0), so no lock is needed.
  std::atomic<bool> error_claimed_{false};
  std::exception_ptr error_;
  // Sleeping and waking only: a worker announces itself in sleeping_ under the mutex before it
  // waits; dispatch takes the mutex only when sleeping_ says someone needs waking.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleeping_{0};
};

}  // namespace squat
