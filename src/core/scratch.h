// Grow-only scratch buffers: sized by the first calls, reused afterwards, so the decode loop
// allocates nothing once warm.
#pragma once

#include <cstddef>
#include <vector>

namespace squat {

// Makes v at least n elements long (never shorter, never reallocated when long enough).
template <typename T>
void grow(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

// One Scratch per thread (and per type): workers of a thread pool each keep their own.
template <typename Scratch>
Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace squat
