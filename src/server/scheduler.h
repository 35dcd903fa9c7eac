// Continuous batching. One scheduler thread owns the model: every step, all admitted sequences
// advance together in one batched forward pass (a decode token each, plus prefill chunks of
// newly admitted prompts), each against its own cache. A request is admitted when its
// projected cache fits what is left of the memory budget; otherwise it waits in a bounded FIFO
// queue. Finished and cancelled sequences leave after the step and free their cache at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/attention_cache.h"
#include "model/batch_decode.h"
#include "model/sampler.h"
#include "server/admission.h"
#include "server/metrics.h"
#include "tokenizer/tokenizer.h"

namespace squat::server {

using Clock = std::chrono::steady_clock;

// How a generation ended. Shutdown: the server stopped before it finished (HTTP 503).
enum class FinishReason { Stop, Length, Cancelled, Error, Shutdown };
// "stop", "length", "cancelled", "error", "shutdown" (the first two are OpenAI's finish_reason).
const char* to_string(FinishReason reason);

// One generation as the HTTP thread that waits for it and the scheduler that runs it share it.
class Generation {
 public:
  explicit Generation(Clock::time_point arrival) : arrival_(arrival) {}

  // HTTP side: waits up to `timeout` for text or the end. Appends the text produced since the
  // last call to `out`; returns true once the generation has ended (and all text is taken).
  bool take(std::string& out, std::chrono::milliseconds timeout);
  // The client went away: the scheduler drops the sequence (or the queued request) at its next
  // step and frees its cache.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // Valid once take() returned true.
  FinishReason finish_reason() const { return finish_reason_; }
  bool failed() const {
    return finish_reason_ == FinishReason::Error || finish_reason_ == FinishReason::Shutdown;
  }
  const std::string& error() const { return error_; }
  int prompt_tokens() const { return prompt_tokens_; }
  int completion_tokens() const { return completion_tokens_; }
  Clock::time_point arrival() const { return arrival_; }

  // Scheduler side.
  void emit(const std::string& text, int completion_tokens);
  void finish(FinishReason reason, const std::string& error = {});
  void set_prompt_tokens(int n) { prompt_tokens_ = n; }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::string pending_;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
  FinishReason finish_reason_ = FinishReason::Error;
  std::string error_;
  int prompt_tokens_ = 0;
  int completion_tokens_ = 0;
  Clock::time_point arrival_;
};

struct GenerationJob {
  std::vector<int32_t> prompt;  // token ids, non-empty
  int max_tokens = 16;
  bool ignore_eos = false;  // generate exactly max_tokens (benchmarks)
  SamplerParams sampling;   // already validated
  std::vector<std::string> stop;
};

struct SchedulerOptions {
  int max_sequences = 64;   // --max-seqs
  std::size_t budget = 0;   // --kv-budget, bytes
  int queue_capacity = 64;  // --queue
  int prefill_chunk = 512;  // most prompt tokens fed per step
  int context = 4096;       // most tokens one sequence may hold
};

// Makes the cache of one sequence holding up to `capacity` tokens.
using CacheFactory = std::function<std::unique_ptr<AttentionCache>(int capacity)>;

class Scheduler {
 public:
  Scheduler(const Model& model, const Tokenizer& tokenizer, ThreadPool& pool, CacheFactory caches,
            CacheFootprint footprint, SchedulerOptions options, Metrics& metrics);
  ~Scheduler();  // stops the thread; unfinished generations end with reason "error"
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a job. Throws RequestError: 400 when it can never run (longer than the context, or a
  // projected cache larger than the whole budget; the message says which and by how much), 503
  // when the queue is full.
  std::shared_ptr<Generation> submit(GenerationJob job, Clock::time_point arrival);
  // Bytes admission reserves for a sequence of prompt + max_tokens tokens.
  std::size_t projected_bytes(int prompt_tokens, int max_tokens) const;

  // Graceful stop: new requests get 503 at once; running and queued ones may finish within
  // `grace`, then whatever is left ends with FinishReason::Shutdown. Returns when all ended.
  void drain(std::chrono::milliseconds grace);
  void stop();
  const SchedulerOptions& options() const { return options_; }
  const CacheFootprint& footprint() const { return footprint_; }

 private:
  struct Waiting;
  struct Active;
  void run();
  void start_admitted(std::vector<std::unique_ptr<Active>>& active);
  void promote_locked(Clock::time_point now);
  void step(std::vector<std::unique_ptr<Active>>& active);
  void retire(Active& a, FinishReason reason, const std::string& error = {});
  // A submitted generation ended (any way): one less in flight.
  void ended_locked();
  void publish_gauges(const std::vector<std::unique_ptr<Active>>& active);

  const Model& model_;
  const Tokenizer& tokenizer_;
  CacheFactory caches_;
  CacheFootprint footprint_;
  SchedulerOptions options_;
  Metrics& metrics_;
  BatchDecoder decoder_;

  // A request either fits at once (its bytes are reserved and it goes to ready_, to start at
  // the next step) or waits in queue_, first come first served, until retired sequences free
  // enough of the budget; the queue holds only requests that do not fit yet.
  std::mutex mutex_;  // guards budget_, ready_, queue_, in_flight_, draining_ and stop_
  std::condition_variable wake_;
  AdmissionBudget budget_;
  std::vector<std::unique_ptr<Waiting>> ready_;
  std::deque<std::unique_ptr<Waiting>> queue_;
  int in_flight_ = 0;  // submitted and not yet ended
  bool draining_ = false;
  std::condition_variable drained_;
  bool stop_ = false;
  std::mutex join_mutex_;
  std::thread thread_;
};

}  // namespace squat::server
