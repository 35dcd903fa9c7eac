#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace squat::server {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const auto bucket =
      std::size_t(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name) const {
  uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
}

namespace {

std::vector<double> latency_bounds() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

Metrics::Metrics(std::size_t budget_bytes, int max_sequences)
    : budget_bytes_(budget_bytes),
      max_sequences_(max_sequences),
      ttft_(latency_bounds()),
      per_token_(latency_bounds()),
      duration_(latency_bounds()),
      queue_wait_(latency_bounds()),
      batch_sequences_({1, 2, 4, 8, 16, 32, 64, 128, 256}) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::count_rejection(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++rejections_[reason];
}

void Metrics::count_cancelled() {
  std::lock_guard lock(mutex_);
  ++cancelled_;
}

void Metrics::count_admitted(double queue_wait_seconds) {
  std::lock_guard lock(mutex_);
  ++admitted_;
  queue_wait_.observe(queue_wait_seconds);
}

void Metrics::count_generation(int prompt_tokens, int generated_tokens, bool complete,
                               double ttft_seconds, double seconds_per_output_token,
                               double total_seconds) {
  std::lock_guard lock(mutex_);
  ++finished_;
  prompt_tokens_ += uint64_t(prompt_tokens);
  generated_tokens_ += uint64_t(generated_tokens);
  if (!complete) return;
  if (generated_tokens > 0) ttft_.observe(ttft_seconds);
  if (generated_tokens > 1) per_token_.observe(seconds_per_output_token);
  duration_.observe(total_seconds);
}

void Metrics::count_step(int rows, int sequences) {
  std::lock_guard lock(mutex_);
  ++steps_;
  step_rows_ += uint64_t(rows);
  batch_sequences_.observe(sequences);
}

void Metrics::set_gauges(const SchedulerGauges& gauges) {
  std::lock_guard lock(mutex_);
  gauges_ = gauges;
  peak_active_ = std::max(peak_active_, gauges.active_sequences);
}

SchedulerGauges Metrics::gauges() const {
  std::lock_guard lock(mutex_);
  return gauges_;
}

int Metrics::peak_active() const {
  std::lock_guard lock(mutex_);
  return peak_active_;
}

std::string Metrics::render(std::size_t rss_bytes, std::size_t peak_rss_bytes) const {
  std::lock_guard lock(mutex_);
  std::string out;
  header(out, "squat_requests_total", "counter", "HTTP requests answered, by endpoint and status");
  for (const auto& [key, n] : requests_) {
    out += fmt::format("squat_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first,
                       key.second, n);
  }
  header(out, "squat_rejected_requests_total", "counter",
         "Generation requests refused at admission, by reason");
  for (const auto& [reason, n] : rejections_) {
    out += fmt::format("squat_rejected_requests_total{{reason=\"{}\"}} {}\n", reason, n);
  }
  header(out, "squat_sequences_admitted_total", "counter", "Sequences admitted to the batch");
  out += fmt::format("squat_sequences_admitted_total {}\n", admitted_);
  header(out, "squat_sequences_finished_total", "counter", "Sequences that left the batch");
  out += fmt::format("squat_sequences_finished_total {}\n", finished_);
  header(out, "squat_sequences_cancelled_total", "counter",
         "Sequences stopped because the client went away");
  out += fmt::format("squat_sequences_cancelled_total {}\n", cancelled_);
  header(out, "squat_prompt_tokens_total", "counter", "Prompt tokens processed");
  out += fmt::format("squat_prompt_tokens_total {}\n", prompt_tokens_);
  header(out, "squat_generated_tokens_total", "counter", "Tokens generated");
  out += fmt::format("squat_generated_tokens_total {}\n", generated_tokens_);
  header(out, "squat_decode_steps_total", "counter", "Batched forward steps");
  out += fmt::format("squat_decode_steps_total {}\n", steps_);
  header(out, "squat_step_tokens_total", "counter", "Tokens fed through batched forward steps");
  out += fmt::format("squat_step_tokens_total {}\n", step_rows_);

  header(out, "squat_active_sequences", "gauge", "Sequences in the batch now");
  out += fmt::format("squat_active_sequences {}\n", gauges_.active_sequences);
  header(out, "squat_active_sequences_peak", "gauge", "Most sequences in the batch at once");
  out += fmt::format("squat_active_sequences_peak {}\n", peak_active_);
  header(out, "squat_max_sequences", "gauge", "Sequence limit (--max-seqs)");
  out += fmt::format("squat_max_sequences {}\n", max_sequences_);
  header(out, "squat_queue_length", "gauge", "Requests waiting for admission");
  out += fmt::format("squat_queue_length {}\n", gauges_.queued_requests);
  header(out, "squat_cache_bytes", "gauge", "Bytes of cached keys and values held now");
  out += fmt::format("squat_cache_bytes {}\n", gauges_.cache_bytes);
  header(out, "squat_cache_reserved_bytes", "gauge",
         "Cache bytes reserved by admission for the active sequences");
  out += fmt::format("squat_cache_reserved_bytes {}\n", gauges_.cache_reserved_bytes);
  header(out, "squat_cache_budget_bytes", "gauge", "Cache budget (--kv-budget)");
  out += fmt::format("squat_cache_budget_bytes {}\n", budget_bytes_);
  if (rss_bytes > 0) {
    header(out, "process_resident_memory_bytes", "gauge", "Resident set size of the server");
    out += fmt::format("process_resident_memory_bytes {}\n", rss_bytes);
  }
  if (peak_rss_bytes > 0) {
    header(out, "process_resident_memory_peak_bytes", "gauge",
           "Peak resident set size of the server since it started (VmHWM)");
    out += fmt::format("process_resident_memory_peak_bytes {}\n", peak_rss_bytes);
  }

  header(out, "squat_time_to_first_token_seconds", "histogram",
         "From request arrival to its first generated token");
  ttft_.render(out, "squat_time_to_first_token_seconds");
  header(out, "squat_time_per_output_token_seconds", "histogram",
         "Mean time between generated tokens of a request, after the first");
  per_token_.render(out, "squat_time_per_output_token_seconds");
  header(out, "squat_request_duration_seconds", "histogram",
         "From request arrival to its last token");
  duration_.render(out, "squat_request_duration_seconds");
  header(out, "squat_queue_wait_seconds", "histogram", "From arrival to admission");
  queue_wait_.render(out, "squat_queue_wait_seconds");
  header(out, "squat_batch_sequences", "histogram", "Sequences per batched forward step");
  batch_sequences_.render(out, "squat_batch_sequences");
  return out;
}

}  // namespace squat::server
