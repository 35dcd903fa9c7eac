// Runs a test body once per SIMD target this CPU supports, through Highway's dispatch mock, so
// the AVX-512 VNNI, AVX-512, AVX2 (vpmaddubsw) and scalar fallback paths are all checked on
// one machine.
#pragma once

#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cstdint>
#include <vector>

namespace squat::kernels {

// The targets the libraries are built for (they define HWY_WANT_AVX3_DL, so a test's own
// hwy::SupportedAndGeneratedTargets() would miss AVX3_DL) that this CPU supports, best first.
inline std::vector<int64_t> simd_targets() {
  std::vector<int64_t> out;
  const int64_t supported = hwy::SupportedTargets();
  for (int64_t target : {int64_t(HWY_AVX3_DL), int64_t(HWY_AVX3), int64_t(HWY_AVX2),
                         int64_t(HWY_SSE4), int64_t(HWY_SSSE3), int64_t(HWY_SCALAR)}) {
    if (supported & target) out.push_back(target);
  }
  return out;
}

template <class Body>
void for_each_simd_target(Body body) {
  for (int64_t target : simd_targets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    body();
    if (::testing::Test::HasFatalFailure()) break;
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace squat::kernels
