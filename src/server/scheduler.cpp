#include "server/scheduler.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "model/stop_filter.h"
#include "server/request.h"

namespace squat::server {

namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double mib(std::size_t bytes) { return double(bytes) / double(1 << 20); }

const char* shutting_down = "the server is shutting down";

}  // namespace

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Error:
      return "error";
    case FinishReason::Shutdown:
      return "shutdown";
  }
  return "error";
}

bool Generation::take(std::string& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return finished_ || !pending_.empty(); });
  out += pending_;
  pending_.clear();
  return finished_;
}

void Generation::emit(const std::string& text, int completion_tokens) {
  {
    std::lock_guard lock(mutex_);
    pending_ += text;
    completion_tokens_ = completion_tokens;
  }
  changed_.notify_all();
}

void Generation::finish(FinishReason reason, const std::string& error) {
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;
    finished_ = true;
    finish_reason_ = reason;
    error_ = error;
  }
  changed_.notify_all();
}

struct Scheduler::Waiting {
  GenerationJob job;
  std::shared_ptr<Generation> generation;
  std::size_t bytes = 0;
};

// An admitted sequence: its cache, where its prompt is, and what it generated.
struct Scheduler::Active {
  Active(GenerationJob j, std::shared_ptr<Generation> g, std::size_t b,
         std::unique_ptr<AttentionCache> cache, const Tokenizer& tokenizer)
      : job(std::move(j)),
        generation(std::move(g)),
        bytes(b),
        sequence(std::move(cache)),
        sampler(job.sampling),
        decoder(tokenizer),
        stops(job.stop) {
    sampler.observe(job.prompt);  // penalties count the prompt's tokens too
  }
  GenerationJob job;
  std::shared_ptr<Generation> generation;
  std::size_t bytes;  // reserved in the budget
  BatchSequence sequence;
  Sampler sampler;
  StreamDecoder decoder;
  StopFilter stops;
  std::size_t fed = 0;      // prompt tokens fed so far
  int32_t next_token = -1;  // sampled, to feed in the next step
  int generated = 0;
  bool in_step = false, wants_logits = false;
  bool done = false;
  Clock::time_point first_token{}, last_token{};
};

Scheduler::Scheduler(const Model& model, const Tokenizer& tokenizer, ThreadPool& pool,
                     CacheFactory caches, CacheFootprint footprint, SchedulerOptions options,
                     Metrics& metrics)
    : model_(model),
      tokenizer_(tokenizer),
      caches_(std::move(caches)),
      footprint_(footprint),
      options_(options),
      metrics_(metrics),
      decoder_(model, pool, options.max_sequences + options.prefill_chunk),
      budget_(options.budget, options.max_sequences) {
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::drain(std::chrono::milliseconds grace) {
  {
    std::unique_lock lock(mutex_);
    draining_ = true;
    drained_.wait_for(lock, grace, [&] { return in_flight_ == 0; });
  }
  stop();
}

void Scheduler::ended_locked() {
  --in_flight_;
  if (in_flight_ == 0) drained_.notify_all();
}

void Scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  // drain() (signal thread) and the owner may both stop: one joins, the other waits for it.
  std::lock_guard join(join_mutex_);
  if (thread_.joinable()) thread_.join();
}

std::size_t Scheduler::projected_bytes(int prompt_tokens, int max_tokens) const {
  // The prompt goes in chunks of at most prefill_chunk tokens: the largest batch the cache sees.
  return footprint_.bytes_for(std::min(prompt_tokens, options_.prefill_chunk),
                              prompt_tokens + max_tokens);
}

std::shared_ptr<Generation> Scheduler::submit(GenerationJob job, Clock::time_point arrival) {
  const int prompt = int(job.prompt.size());
  if (prompt >= options_.context) {
    throw RequestError(400, "invalid_request_error", "prompt",
                       fmt::format("the prompt has {} tokens but a sequence holds at most {} "
                                   "(prompt and output together; the server's -c/--context)",
                                   prompt, options_.context));
  }
  if (prompt + job.max_tokens > options_.context) {
    throw RequestError(
        400, "invalid_request_error", "max_tokens",
        fmt::format("the prompt ({} tokens) plus max_tokens ({}) exceed the context "
                    "of {} tokens; lower max_tokens to at most {}",
                    prompt, job.max_tokens, options_.context, options_.context - prompt));
  }
  const std::size_t bytes = projected_bytes(prompt, job.max_tokens);
  if (bytes > options_.budget) {
    throw RequestError(400, "invalid_request_error", "max_tokens",
                       fmt::format("the prompt ({} tokens) plus max_tokens ({}) need a cache of "
                                   "{:.1f} MiB, more than the whole --kv-budget of {:.1f} MiB; "
                                   "lower max_tokens or shorten the prompt",
                                   prompt, job.max_tokens, mib(bytes), mib(options_.budget)));
  }
  auto generation = std::make_shared<Generation>(arrival);
  generation->set_prompt_tokens(prompt);
  {
    std::lock_guard lock(mutex_);
    if (stop_ || draining_) throw RequestError(503, "server_shutting_down", "", shutting_down);
    auto w = std::make_unique<Waiting>(Waiting{std::move(job), generation, bytes});
    if (queue_.empty() && budget_.fits(bytes)) {
      budget_.reserve(bytes);
      metrics_.count_admitted(seconds_between(arrival, Clock::now()));
      ready_.push_back(std::move(w));
    } else if (int(queue_.size()) >= options_.queue_capacity) {
      metrics_.count_rejection("queue_full");
      throw RequestError(503, "server_busy", "",
                         fmt::format("the server is at capacity: {} sequences hold the cache "
                                     "budget and {} requests already wait; retry later",
                                     budget_.active(), queue_.size()));
    } else {
      queue_.push_back(std::move(w));
    }
    ++in_flight_;
  }
  wake_.notify_all();
  return generation;
}

void Scheduler::run() {
  std::vector<std::unique_ptr<Active>> active;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      if (active.empty()) {
        wake_.wait(lock, [&] { return stop_ || !ready_.empty() || !queue_.empty(); });
      }
      if (stop_) break;
    }
    start_admitted(active);
    // Cancelled sequences leave before the step, freeing their cache.
    for (auto& a : active) {
      if (a->generation->cancelled()) {
        metrics_.count_cancelled();
        retire(*a, FinishReason::Cancelled);
      }
    }
    std::erase_if(active, [](const auto& a) { return a->done; });
    if (!active.empty()) step(active);
    std::erase_if(active, [](const auto& a) { return a->done; });
    publish_gauges(active);
  }
  for (auto& a : active) retire(*a, FinishReason::Shutdown, shutting_down);
  std::lock_guard lock(mutex_);
  for (auto& w : ready_) {
    w->generation->finish(FinishReason::Shutdown, shutting_down);
    ended_locked();
  }
  for (auto& w : queue_) {
    w->generation->finish(FinishReason::Shutdown, shutting_down);
    ended_locked();
  }
  ready_.clear();
  queue_.clear();
}

void Scheduler::promote_locked(Clock::time_point now) {
  std::erase_if(queue_, [&](const auto& w) {
    if (!w->generation->cancelled()) return false;
    metrics_.count_cancelled();
    w->generation->finish(FinishReason::Cancelled);
    ended_locked();
    return true;
  });
  // First come, first served: a large request at the head is not overtaken by smaller ones.
  while (!queue_.empty() && budget_.fits(queue_.front()->bytes)) {
    budget_.reserve(queue_.front()->bytes);
    metrics_.count_admitted(seconds_between(queue_.front()->generation->arrival(), now));
    ready_.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
}

void Scheduler::start_admitted(std::vector<std::unique_ptr<Active>>& active) {
  std::vector<std::unique_ptr<Waiting>> ready;
  {
    std::lock_guard lock(mutex_);
    promote_locked(Clock::now());
    ready.swap(ready_);
  }
  for (auto& w : ready) {
    const int capacity = int(w->job.prompt.size()) + w->job.max_tokens;
    try {
      active.push_back(std::make_unique<Active>(std::move(w->job), w->generation, w->bytes,
                                                caches_(capacity), tokenizer_));
    } catch (const std::exception& e) {  // e.g. out of memory making the cache
      w->generation->finish(FinishReason::Error, e.what());
      std::lock_guard lock(mutex_);
      budget_.release(w->bytes);
      ended_locked();
    }
  }
}

void Scheduler::step(std::vector<std::unique_ptr<Active>>& active) {
  std::vector<BatchInput> inputs;
  inputs.reserve(active.size());
  int rows = 0, sequences = 0;
  // Decoding sequences first (one token each), then prompt chunks within the step's budget.
  for (auto& a : active) {
    a->in_step = a->wants_logits = false;
    if (a->fed < a->job.prompt.size()) continue;
    inputs.push_back({&a->sequence, std::span<const int32_t>(&a->next_token, 1), true});
    a->in_step = a->wants_logits = true;
    ++rows;
  }
  int prefill_left = options_.prefill_chunk;
  for (auto& a : active) {
    if (a->fed >= a->job.prompt.size() || prefill_left == 0) continue;
    const std::size_t n = std::min(a->job.prompt.size() - a->fed, std::size_t(prefill_left));
    const bool last = a->fed + n == a->job.prompt.size();
    inputs.push_back(
        {&a->sequence, std::span<const int32_t>(a->job.prompt.data() + a->fed, n), last});
    a->in_step = true;
    a->wants_logits = last;
    prefill_left -= int(n);
    rows += int(n);
  }
  // Inputs were pushed decode-first; logits come back in input order.
  std::vector<Active*> order;
  order.reserve(inputs.size());
  for (auto& a : active)
    if (a->in_step && a->fed >= a->job.prompt.size()) order.push_back(a.get());
  for (auto& a : active)
    if (a->in_step && a->fed < a->job.prompt.size()) order.push_back(a.get());
  sequences = int(order.size());

  const float* logits = nullptr;
  try {
    logits = decoder_.eval(inputs);
  } catch (const std::exception& e) {
    for (Active* a : order) retire(*a, FinishReason::Error, e.what());
    return;
  }
  metrics_.count_step(rows, sequences);

  const int vocab = model_.config().vocab_size;
  const auto now = Clock::now();
  std::size_t row = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    Active& a = *order[i];
    if (a.fed < a.job.prompt.size()) a.fed += inputs[i].tokens.size();
    if (!a.wants_logits) continue;
    const float* l = logits + row * std::size_t(vocab);
    ++row;
    const int32_t token = a.sampler.sample(l, vocab);
    if (!a.job.ignore_eos && tokenizer_.is_eog(token)) {
      retire(a, FinishReason::Stop);
      continue;
    }
    ++a.generated;
    if (a.generated == 1) a.first_token = now;
    a.last_token = now;
    a.generation->emit(a.stops.add(a.decoder.push(token)), a.generated);
    if (a.stops.stopped()) {
      retire(a, FinishReason::Stop);
    } else if (a.generated >= a.job.max_tokens || a.sequence.n_past() >= a.sequence.capacity()) {
      retire(a, FinishReason::Length);
    } else {
      a.next_token = token;
    }
  }
}

void Scheduler::retire(Active& a, FinishReason reason, const std::string& error) {
  if (a.done) return;
  a.done = true;
  const bool complete = reason == FinishReason::Stop || reason == FinishReason::Length;
  if (complete) {
    std::string tail = a.stops.add(a.decoder.finish());
    tail += a.stops.finish();
    a.generation->emit(tail, a.generated);
  }
  const double ttft = seconds_between(a.generation->arrival(), a.first_token);
  const double per_token =
      a.generated > 1 ? seconds_between(a.first_token, a.last_token) / (a.generated - 1) : 0.0;
  metrics_.count_generation(int(std::min(a.fed, a.job.prompt.size())), a.generated, complete, ttft,
                            per_token, seconds_between(a.generation->arrival(), Clock::now()));
  // The cache's memory goes back now, not when the vector is compacted; waiting requests that
  // now fit are admitted for the next step.
  a.sequence = BatchSequence(nullptr);
  {
    std::lock_guard lock(mutex_);
    budget_.release(a.bytes);
    promote_locked(Clock::now());
    // Finished under the lock, so drain() cannot see zero in flight before the client can.
    a.generation->finish(reason, error);
    ended_locked();
  }
}

void Scheduler::publish_gauges(const std::vector<std::unique_ptr<Active>>& active) {
  SchedulerGauges g;
  g.active_sequences = int(active.size());
  for (const auto& a : active) g.cache_bytes += a->sequence.cache().bytes();
  {
    std::lock_guard lock(mutex_);
    g.cache_reserved_bytes = budget_.in_use();
    g.queued_requests = int(queue_.size());
  }
  metrics_.set_gauges(g);
}

}  // namespace squat::server
