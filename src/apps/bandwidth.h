// Sustained memory read bandwidth of this machine: the ceiling on decode speed, since every
// decoded token streams all weights and the whole KV cache from memory.
#pragma once

#include <cstddef>
#include <vector>

#include "core/thread_pool.h"

namespace squat::apps {

struct Bandwidth {
  double bytes_per_s = 0;                // the best pass
  std::vector<double> pass_bytes_per_s;  // every timed pass
  std::size_t buffer_bytes = 0;
  int threads = 0;
};

// The default buffer: 1 GiB or four times the last-level cache, whichever is larger, so that
// reads come from DRAM and not from a cache left warm by the previous pass.
std::size_t default_bandwidth_buffer_bytes();

// Reads a buffer of `buffer_bytes` with SIMD loads on every thread of `pool` (each thread
// streams its own contiguous slice), `passes` times; a pass's rate is the bytes read divided by
// its wall time. The reads feed a checksum that is compared to the one known from filling the
// buffer, so they cannot be optimised away (a mismatch is an internal error).
Bandwidth measure_read_bandwidth(ThreadPool& pool, std::size_t buffer_bytes, int passes);

}  // namespace squat::apps
