// A fixed set of worker threads made once and reused for every parallel loop. Workers spin
// briefly between jobs (decode issues hundreds of small jobs per token, and waking a sleeping
// thread costs more than the job) and then sleep on a condition variable. Handing out a job
// takes no lock and allocates nothing: the mutex is taken only to go to sleep and to wake
// sleepers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
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
  void parallel_for(std::size_t n, RangeFn body, std::size_t grain = 1);

  // Runs body(thread_index) once on every thread (caller is thread 0). Nested inside a job of
  // this pool, only the calling thread is free, so body runs once, with that thread's index.
  // An exception from the caller's share is rethrown after the workers finished theirs; one
  // from a worker's share ends the program (std::terminate), so jobs catch their own.
  void run_on_all(ThreadFn body);

  // Workers asleep on the condition variable now (they sleep after a spin budget with no job).
  int sleeping_workers() const { return sleeping_.load(); }

 private:
  void worker_loop(int index);
  void dispatch(ThreadFn job);

  int n_threads_;
  std::vector<std::thread> workers_;
  const ThreadFn* job_ = nullptr;  // published by the release increment of generation_
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // Sleeping and waking only: a worker announces itself in sleeping_ under the mutex before it
  // waits; dispatch takes the mutex only when sleeping_ says someone needs waking.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleeping_{0};
};

}  // namespace squat
