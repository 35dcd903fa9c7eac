// What the server counts, rendered as Prometheus text (exposition format 0.0.4) for /metrics.
// Every method is thread-safe: HTTP threads and the scheduler update it concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace squat::server {

// Cumulative buckets with upper bounds `bounds` (ascending) plus +Inf, a sum and a count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // The metric's lines (HELP/TYPE written by the caller).
  void render(std::string& out, const std::string& name) const;
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Point-in-time values the scheduler reports after every step.
struct SchedulerGauges {
  int active_sequences = 0;
  int queued_requests = 0;
  std::size_t cache_bytes = 0;           // held by the active sequences' caches now
  std::size_t cache_reserved_bytes = 0;  // reserved for them by admission (projected)
};

class Metrics {
 public:
  Metrics(std::size_t budget_bytes, int max_sequences);

  // One finished HTTP request to `endpoint` ("/v1/completions", ...) with its status code.
  void count_request(const std::string& endpoint, int status);
  void count_rejection(const std::string& reason);  // "queue_full", "too_large", ...
  void count_cancelled();
  void count_admitted(double queue_wait_seconds);
  // A sequence that left the batch: its tokens, and for one that ran to its end (`complete`;
  // not cancelled) the latencies (ttft: from arrival to the first token).
  void count_generation(int prompt_tokens, int generated_tokens, bool complete, double ttft_seconds,
                        double seconds_per_output_token, double total_seconds);
  void count_step(int rows, int sequences);
  void set_gauges(const SchedulerGauges& gauges);
  SchedulerGauges gauges() const;
  int peak_active() const;

  // Prometheus text; `rss_bytes` and `peak_rss_bytes` are the process's resident set now and
  // its peak (core/process_memory.h; 0: omitted).
  std::string render(std::size_t rss_bytes, std::size_t peak_rss_bytes = 0) const;

 private:
  mutable std::mutex mutex_;
  std::size_t budget_bytes_;
  int max_sequences_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> rejections_;
  uint64_t cancelled_ = 0, admitted_ = 0, finished_ = 0;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0;
  uint64_t steps_ = 0, step_rows_ = 0;
  SchedulerGauges gauges_;
  int peak_active_ = 0;
  Histogram ttft_, per_token_, duration_, queue_wait_, batch_sequences_;
};

}  // namespace squat::server
