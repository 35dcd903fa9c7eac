// Ends generated text at the first stop string (run, chat and the server's scheduler use it). Text that could be the start of a stop string
// is held back until it is known not to be one, so a client never sees any part of it.
#pragma once

#include <string>
#include <vector>

namespace squat {

class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Adds generated text; returns what may be sent now. Sets stopped() when a stop string was
  // reached (the text before it is returned, nothing after).
  std::string add(const std::string& text);
  // What was held back, at the end of generation (empty after a stop).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace squat
