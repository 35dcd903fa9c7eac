// The process's memory as the kernel accounts it (Linux /proc/self/status), for the figures
// users read: `squat run --stats-json`, `squat bench` rows and the server's /metrics.
#pragma once

#include <cstddef>

namespace squat {

// Resident set now (VmRSS), in bytes; 0 when unreadable.
std::size_t resident_set_bytes();
// Peak resident set (VmHWM: since the start, or since the last reset_peak_resident_set), in
// bytes; getrusage's maxrss where /proc is unavailable.
std::size_t peak_resident_set_bytes();
// Starts a new peak from the current resident set (writes 5 to /proc/self/clear_refs).
void reset_peak_resident_set();

}  // namespace squat
