// Progress of long measurements (perplexity, evaluations) on stderr: a one-line bar with rate
// and ETA redrawn in place when stderr is a terminal; when it is piped or redirected (a log file,
// a batch job), a plain line with the same figures at most every 30 seconds (and a last one
// at the end if any was printed), so a log still shows that the run advances. The environment
// variable SQUAT_PROGRESS_SECONDS changes that period (0: a line per update).
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace squat::apps {

class ProgressBar {
 public:
  ProgressBar(std::string label, long total, std::string unit)
      : label_(std::move(label)),
        unit_(std::move(unit)),
        total_(total),
        enabled_(isatty(fileno(stderr)) != 0),
        start_(std::chrono::steady_clock::now()) {
    if (const char* env = std::getenv("SQUAT_PROGRESS_SECONDS")) {
      char* end = nullptr;
      const double v = std::strtod(env, &end);
      if (end != env && *end == '\0' && v >= 0) plain_period_ = v;
    }
  }
  ~ProgressBar() { finish(); }

  // `done` items of `total`; `work` is the count the rate is given in (e.g. tokens).
  void update(long done, long work) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = seconds > 0 ? double(work) / seconds : 0.0;
    const double eta = done > 0 ? seconds * double(total_ - done) / double(done) : 0.0;
    if (!enabled_) {
      last_plain_ = fmt::format("{}: {}/{} | {:.2f} {}/s | {:.0f}s elapsed, ETA {:.0f}s", label_,
                                done, total_, rate, unit_, seconds, eta);
      if (seconds - printed_at_ >= plain_period_) {
        fmt::print(stderr, "{}\n", last_plain_);
        std::fflush(stderr);
        printed_at_ = seconds;
        plain_printed_ = true;
        last_plain_.clear();
      }
      return;
    }
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? int(kWidth * done / total_) : 0;
    fmt::print(stderr, "\r{} [{}{}] {}/{} | {:.1f} {}/s | ETA {:.0f}s   ", label_,
               std::string(std::size_t(filled), '#'),
               std::string(std::size_t(kWidth - filled), '.'), done, total_, rate, unit_, eta);
    std::fflush(stderr);
    drawn_ = true;
  }
  void finish() {
    if (drawn_) fmt::print(stderr, "\n");
    drawn_ = false;
    if (plain_printed_ && !last_plain_.empty()) fmt::print(stderr, "{}\n", last_plain_);
    last_plain_.clear();
  }

 private:
  std::string label_, unit_;
  long total_;
  bool enabled_;
  bool drawn_ = false;
  bool plain_printed_ = false;  // plain mode: a line was printed (so the last one is too)
  double printed_at_ = 0;       // plain mode: seconds after start of the last line
  double plain_period_ = 30.0;  // plain mode: least seconds between lines
  std::string last_plain_;      // plain mode: the latest figures not printed yet
  std::chrono::steady_clock::time_point start_;
};

}  // namespace squat::apps
