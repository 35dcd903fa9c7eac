// Read-bandwidth probe, compiled once per SIMD target by Highway and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "apps/bandwidth.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// Order matters: foreach_target re-includes this file for every target.
#include <hwy/highway.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

#include "apps/bandwidth.h"
#include "core/aligned_buffer.h"
#include "core/error.h"

HWY_BEFORE_NAMESPACE();
namespace squat::apps {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum (mod 2^64) of n words at p, a multiple of 4 vectors. Four independent accumulators keep
// several loads in flight; an add per load is far cheaper than the load itself.
uint64_t SumWordsImpl(const uint64_t* HWY_RESTRICT p, std::size_t n) {
  const hn::ScalableTag<uint64_t> d;
  const std::size_t lanes = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  std::size_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    a0 = hn::Add(a0, hn::Load(d, p + i));
    a1 = hn::Add(a1, hn::Load(d, p + i + lanes));
    a2 = hn::Add(a2, hn::Load(d, p + i + 2 * lanes));
    a3 = hn::Add(a3, hn::Load(d, p + i + 3 * lanes));
  }
  uint64_t sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) sum += p[i];
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace squat::apps
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace squat::apps {

HWY_EXPORT(SumWordsImpl);

namespace {

std::size_t last_level_cache_bytes() {
  for (const char* level : {"index3", "index2"}) {
    std::ifstream in(std::string("/sys/devices/system/cpu/cpu0/cache/") + level + "/size");
    std::string text;
    if (!(in >> text) || text.empty()) continue;
    std::size_t value = 0;
    try {
      value = std::stoull(text);
    } catch (const std::exception&) {
      continue;
    }
    const char unit = text.back();
    if (unit == 'K') value <<= 10;
    if (unit == 'M') value <<= 20;
    if (unit == 'G') value <<= 30;
    return value;
  }
  return 0;
}

// Word i's value: distinct per position so a read of the wrong address changes the checksum.
uint64_t word(std::size_t i) { return uint64_t(i) * 0x9E3779B97F4A7C15ull + 1; }

}  // namespace

std::size_t default_bandwidth_buffer_bytes() {
  return std::max<std::size_t>(std::size_t(1) << 30, 4 * last_level_cache_bytes());
}

Bandwidth measure_read_bandwidth(ThreadPool& pool, std::size_t buffer_bytes, int passes) {
  const int threads = pool.size();
  // Every slice a whole number of 4 KiB pages (and so of vectors and cache lines).
  constexpr std::size_t kWordsPerPage = 4096 / sizeof(uint64_t);
  const std::size_t pages = std::max<std::size_t>(std::size_t(threads),
                                                  buffer_bytes / (kWordsPerPage * 8));
  const std::size_t words = pages * kWordsPerPage;
  AlignedBuffer<uint64_t> buffer(words);
  uint64_t* data = buffer.data();
  const auto slice = [&](int t, std::size_t& begin, std::size_t& end) {
    begin = pages * std::size_t(t) / std::size_t(threads) * kWordsPerPage;
    end = pages * std::size_t(t + 1) / std::size_t(threads) * kWordsPerPage;
  };
  // Each thread fills (first-touches) the slice it later reads, which places the pages near it.
  std::vector<uint64_t> partial(std::size_t(threads) * 8, 0);  // a cache line per thread
  pool.run_on_all([&](int t) {
    std::size_t begin = 0, end = 0;
    slice(t, begin, end);
    uint64_t sum = 0;
    for (std::size_t i = begin; i < end; ++i) sum += data[i] = word(i);
    partial[std::size_t(t) * 8] = sum;
  });
  uint64_t expected = 0;
  for (int t = 0; t < threads; ++t) expected += partial[std::size_t(t) * 8];

  Bandwidth result;
  result.buffer_bytes = words * sizeof(uint64_t);
  result.threads = threads;
  using Clock = std::chrono::steady_clock;
  for (int pass = 0; pass < passes; ++pass) {
    const auto start = Clock::now();
    pool.run_on_all([&](int t) {
      std::size_t begin = 0, end = 0;
      slice(t, begin, end);
      partial[std::size_t(t) * 8] = HWY_DYNAMIC_DISPATCH(SumWordsImpl)(data + begin, end - begin);
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    uint64_t sum = 0;
    for (int t = 0; t < threads; ++t) sum += partial[std::size_t(t) * 8];
    if (sum != expected) fail("bandwidth probe: checksum {:#x} of the reads, expected {:#x}", sum, expected);
    const double rate = double(result.buffer_bytes) / seconds;
    result.pass_bytes_per_s.push_back(rate);
    result.bytes_per_s = std::max(result.bytes_per_s, rate);
  }
  return result;
}

}  // namespace squat::apps
#endif  // HWY_ONCE
