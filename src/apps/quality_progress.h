// A one-line progress bar for long measurements (perplexity, evaluations): drawn on stderr
// with rate and ETA when stderr is a terminal, silent when it is piped or redirected.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace squat::apps {

class ProgressBar {
 public:
  ProgressBar(std::string label, long total, std::string unit)
      : label_(std::move(label)),
        unit_(std::move(unit)),
        total_(total),
        enabled_(isatty(fileno(stderr)) != 0),
        start_(std::chrono::steady_clock::now()) {}
  ~ProgressBar() { finish(); }

  // `done` items of `total`; `work` is the count the rate is given in (e.g. tokens).
  void update(long done, long work) {
    if (!enabled_) return;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = seconds > 0 ? double(work) / seconds : 0.0;
    const double eta = done > 0 ? seconds * double(total_ - done) / double(done) : 0.0;
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
  }

 private:
  std::string label_, unit_;
  long total_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace squat::apps
