// SIMD kernels of ops.h, compiled once per target by Highway and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ops_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// Order matters: foreach_target re-includes this file for every target.
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <cmath>
#include <limits>

#include "kernels/matmul_simd.h"
#include "kernels/ops.h"

HWY_BEFORE_NAMESPACE();
namespace squat::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

HWY_INLINE float SumSquaresOrDot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b,
                                 std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  std::size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), s1);
    s2 = hn::MulAdd(hn::LoadU(d, a + i + 2 * N), hn::LoadU(d, b + i + 2 * N), s2);
    s3 = hn::MulAdd(hn::LoadU(d, a + i + 3 * N), hn::LoadU(d, b + i + 3 * N), s3);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float DotImpl(const float* a, const float* b, std::size_t n) { return SumSquaresOrDot(a, b, n); }

void RmsNormImpl(const float* x, const float* weight, float* out, std::size_t n, float eps) {
  const float ss = SumSquaresOrDot(x, x, n);
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  const auto vs = hn::Set(d, scale);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, x + i), vs), hn::LoadU(d, weight + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void SoftmaxImpl(float* x, std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  float max = -std::numeric_limits<float>::infinity();
  {
    auto vmax = hn::Set(d, max);
    std::size_t i = 0;
    for (; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(d, x + i));
    max = hn::GetLane(hn::MaxOfLanes(d, vmax));
    for (; i < n; ++i) max = std::fmax(max, x[i]);
  }
  if (max == -std::numeric_limits<float>::infinity() || std::isnan(max)) {
    for (std::size_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  // Exp is accurate down to about -87; below that the true value is ~0 anyway and -inf
  // (masked entries) must give exactly 0.
  const auto vneg = hn::Set(d, -max);
  const auto vlow = hn::Set(d, -87.0f);
  auto vsum = hn::Zero(d);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto t = hn::Add(hn::LoadU(d, x + i), vneg);
    const auto e = hn::IfThenZeroElse(hn::Lt(t, vlow), hn::Exp(d, hn::Max(t, vlow)));
    vsum = hn::Add(vsum, e);
    hn::StoreU(e, d, x + i);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, vsum));
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  const auto vinv = hn::Set(d, inv);
  i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vinv), d, x + i);
  for (; i < n; ++i) x[i] *= inv;
}

void SwigluImpl(const float* gate, const float* up, float* out, std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  const auto one = hn::Set(d, 1.0f);
  // exp(-g) overflows to inf for g < -88, which correctly gives silu = -0; clamp keeps Exp in
  // its valid range.
  const auto vhigh = hn::Set(d, 88.0f);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    const auto e = hn::Exp(d, hn::Min(hn::Neg(g), vhigh));
    hn::StoreU(hn::Mul(hn::Div(g, hn::Add(one, e)), hn::LoadU(d, up + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void AddImpl(float* acc, const float* x, std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Add(hn::LoadU(d, acc + i), hn::LoadU(d, x + i)), d, acc + i);
  }
  for (; i < n; ++i) acc[i] += x[i];
}

void AxpyImpl(float a, const float* x, float* y, std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  const auto va = hn::Set(d, a);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace squat::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace squat::kernels {

HWY_EXPORT(DotImpl);
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(SwigluImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(AxpyImpl);

namespace {
// Applied once before the first use of any dispatch table in this file.
const bool kTargetsGuarded = (detail::guard_simd_targets(), true);
}  // namespace

float dot(const float* a, const float* b, std::size_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}
void rmsnorm(const float* x, const float* weight, float* out, std::size_t n, float eps) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, weight, out, n, eps);
}
void softmax(float* x, std::size_t n) { HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }
void swiglu(const float* gate, const float* up, float* out, std::size_t n) {
  HWY_DYNAMIC_DISPATCH(SwigluImpl)(gate, up, out, n);
}
void add(float* acc, const float* x, std::size_t n) { HWY_DYNAMIC_DISPATCH(AddImpl)(acc, x, n); }
void axpy(float a, const float* x, float* y, std::size_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyImpl)(a, x, y, n);
}

}  // namespace squat::kernels
#endif  // HWY_ONCE
