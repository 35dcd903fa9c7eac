// SIMD bodies of matvec/matmul, compiled once per target by Highway (foreach_target.h) and
// picked at run time. Float kernels use portable Highway ops. The int8 block dot products use
// x86 intrinsics: Highway 1.0.3 has no u8 x s8 multiply-add (vpmaddubsw / AVX-512 VNNI
// vpdpbusd), which is what makes the quantized paths fast.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul_simd.cpp"
// SSSE3/SSE4 machines fall back to the portable target; saves compile time and code size.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4)
#endif
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// Order matters: foreach_target re-includes this file for every target.
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>

#include "core/fp16.h"
#include "kernels/matmul_simd.h"

HWY_BEFORE_NAMESPACE();

// Highway 1.0.3's AVX3_DL target string lacks avx512vnni (its run-time check requires it), so
// add it for that target; GCC only (clang would need a different pragma).
#if HWY_TARGET == HWY_AVX3_DL && HWY_COMPILER_GCC_ACTUAL
#pragma GCC target("avx512vnni")
#define SQUAT_VNNI 1
#else
#define SQUAT_VNNI 0
#endif

#if HWY_ARCH_X86 && (HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL)
#define SQUAT_X86_INT8 1
#else
#define SQUAT_X86_INT8 0
#endif

namespace squat::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using detail::Q8Rows;
using gguf::TensorType;

HWY_INLINE float LoadF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if SQUAT_X86_INT8
  return _cvtsh_ss(h);
#else
  return fp16_to_float(h);
#endif
}

// Float dot product of short arrays (per-block min terms).
HWY_INLINE float DotShort(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  auto acc = hn::Zero(d);
  std::size_t i = 0;
  for (; i + N <= n; i += N) acc = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), acc);
  float sum = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Weight block formats of the quantized paths: bytes per block, where d (and m) sit.
struct Q4_1Format {
  static constexpr std::size_t kBytes = 20;
  static constexpr bool kHasMin = true;
};
struct Q8_0Format {
  static constexpr std::size_t kBytes = 34;
  static constexpr bool kHasMin = false;
};

// Converts the fp16 scales (and mins) of `rw` rows to float: dw[r*nb + b], mw[r*nb + b].
template <class F>
HWY_INLINE void GatherScales(const uint8_t* const* rows, int rw, std::size_t nb, float* dw,
                             float* mw) {
  for (int r = 0; r < rw; ++r) {
    const uint8_t* p = rows[r];
    for (std::size_t b = 0; b < nb; ++b, p += F::kBytes) {
      dw[r * nb + b] = LoadF16(p);
      if constexpr (F::kHasMin) mw[r * nb + b] = LoadF16(p + 2);
    }
  }
}

#if SQUAT_X86_INT8

// Sum of the 8 int32 lanes of one block's partial dot products is deferred: lanes are
// converted to float and scaled, and only the row total is reduced horizontally.
HWY_INLINE __m256i DotU8S8(__m256i u, __m256i s) {
#if SQUAT_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  // u <= 255 (Q8_0 |w| <= 128, Q4_1 q <= 15) times |s| <= 127: pair sums fit int16 except the
  // unreachable 255*127*2; Q8_0 |w| = 128 (q = -128) gives at most 32512.
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

HWY_INLINE float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// A weight block made ready for products with several x blocks: u unsigned lanes, and for
// signed weights the sign source applied to x.
struct Prepared {
  __m256i u;
  __m256i sign;
};

template <class F>
HWY_INLINE Prepared LoadBlock(const uint8_t* block) {
  if constexpr (F::kHasMin) {  // Q4_1: 16 nibble bytes, low nibbles are elements 0..15
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 4));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(v, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    return {_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1), _mm256_setzero_si256()};
  } else {  // Q8_0: 32 int8; |w| times x with w's sign
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
    return {_mm256_sign_epi8(w, w), w};
  }
}

template <class F>
HWY_INLINE __m256i BlockDot(const Prepared& w, __m256i x) {
  if constexpr (F::kHasMin) {
    return DotU8S8(w.u, x);
  } else {
    return DotU8S8(w.u, _mm256_sign_epi8(x, w.sign));
  }
}

// RW weight rows times RX x rows over all nb blocks; out[rw][rx] without the min term.
template <class F, int RW, int RX>
HWY_INLINE void QuantTile(const uint8_t* const* rows, const float* dw, std::size_t nb,
                          const Q8Rows& x, std::size_t i0, float* out /* [RW][RX] */) {
  __m256 acc[RW][RX];
  for (int r = 0; r < RW; ++r)
    for (int c = 0; c < RX; ++c) acc[r][c] = _mm256_setzero_ps();
  const int8_t* xq[RX];
  const float* xd[RX];
  for (int c = 0; c < RX; ++c) {
    xq[c] = x.q + (i0 + c) * x.cols;
    xd[c] = x.d + (i0 + c) * x.nb;
  }
  for (std::size_t b = 0; b < nb; ++b) {
    Prepared w[RW];
    __m256 scale[RW];
    for (int r = 0; r < RW; ++r) {
      w[r] = LoadBlock<F>(rows[r] + b * F::kBytes);
      scale[r] = _mm256_set1_ps(dw[r * nb + b]);
    }
    for (int c = 0; c < RX; ++c) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[c] + 32 * b));
      const __m256 dx = _mm256_set1_ps(xd[c][b]);
      for (int r = 0; r < RW; ++r) {
        const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(BlockDot<F>(w[r], xv)), dx);
        acc[r][c] = _mm256_fmadd_ps(p, scale[r], acc[r][c]);
      }
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int c = 0; c < RX; ++c) out[r * RX + c] = HSum(acc[r][c]);
}

#else  // portable fallback: the same definition, one block at a time in scalar code

template <class F, int RW, int RX>
HWY_INLINE void QuantTile(const uint8_t* const* rows, const float* dw, std::size_t nb,
                          const Q8Rows& x, std::size_t i0, float* out) {
  for (int r = 0; r < RW; ++r) {
    for (int c = 0; c < RX; ++c) {
      const int8_t* xq = x.q + (i0 + c) * x.cols;
      const float* xd = x.d + (i0 + c) * x.nb;
      float sum = 0.0f;
      for (std::size_t b = 0; b < nb; ++b) {
        const uint8_t* blk = rows[r] + b * F::kBytes;
        int32_t isum = 0;
        for (int j = 0; j < 32; ++j) {
          int q;
          if constexpr (F::kHasMin) {
            q = j < 16 ? (blk[4 + j] & 0x0f) : (blk[4 + j - 16] >> 4);
          } else {
            q = int8_t(blk[2 + j]);
          }
          isum += q * xq[32 * b + j];
        }
        sum += float(isum) * xd[b] * dw[r * nb + b];
      }
      out[r * RX + c] = sum;
    }
  }
}

#endif  // SQUAT_X86_INT8

template <class F, int RW>
HWY_INLINE void QuantTileAnyX(const uint8_t* const* rows, const float* dw, std::size_t nb,
                              const Q8Rows& x, std::size_t i0, int rx, float* out) {
  switch (rx) {
    case 1:
      return QuantTile<F, RW, 1>(rows, dw, nb, x, i0, out);
    case 2:
      return QuantTile<F, RW, 2>(rows, dw, nb, x, i0, out);
    case 3:
      return QuantTile<F, RW, 3>(rows, dw, nb, x, i0, out);
    default:
      return QuantTile<F, RW, 4>(rows, dw, nb, x, i0, out);
  }
}

template <class F>
void QuantRows(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t r1,
               const Q8Rows& x, std::size_t n, float* y, std::size_t ldy, float* scratch) {
  constexpr int kRW = 4, kRX = 4;
  const std::size_t nb = x.nb;
  float* dw = scratch;
  float* mw = scratch + kRW * nb;
  // Keep the slice of quantized x rows that each weight tile sweeps within L2.
  const std::size_t x_chunk = std::max<std::size_t>(kRX, (256 * 1024 / (x.cols + 8)) / kRX * kRX);
  for (std::size_t i_begin = 0; i_begin < n; i_begin += x_chunk) {
    const std::size_t i_end = std::min(n, i_begin + x_chunk);
    for (std::size_t r = r0; r < r1;) {
      const int rw = r1 - r >= std::size_t(kRW) ? kRW : 1;
      const uint8_t* rows[kRW];
      for (int k = 0; k < rw; ++k) rows[k] = w + (r + k) * row_bytes;
      GatherScales<F>(rows, rw, nb, dw, mw);
      for (std::size_t i = i_begin; i < i_end; i += kRX) {
        const int rx = int(std::min<std::size_t>(kRX, i_end - i));
        float out[kRW * kRX];
        if (rw == kRW) {
          QuantTileAnyX<F, kRW>(rows, dw, nb, x, i, rx, out);
        } else {
          QuantTileAnyX<F, 1>(rows, dw, nb, x, i, rx, out);
        }
        for (int k = 0; k < rw; ++k) {
          for (int c = 0; c < rx; ++c) {
            float v = out[k * rx + c];
            if constexpr (F::kHasMin) v += DotShort(mw + k * nb, x.s + (i + c) * nb, nb);
            y[(i + c) * ldy + r + k] = v;
          }
        }
      }
      r += std::size_t(rw);
    }
  }
}

void Q8RowsImpl(TensorType type, const uint8_t* w, std::size_t row_bytes, std::size_t r0,
                std::size_t r1, const Q8Rows& x, std::size_t n, float* y, std::size_t ldy,
                float* scratch) {
  if (type == TensorType::Q4_1) {
    QuantRows<Q4_1Format>(w, row_bytes, r0, r1, x, n, y, ldy, scratch);
  } else {
    QuantRows<Q8_0Format>(w, row_bytes, r0, r1, x, n, y, ldy, scratch);
  }
}

// ---- float weights ----

template <int RW, int RX>
HWY_INLINE void FloatTile(const float* w, std::size_t ws, const float* x, std::size_t cols,
                          float* out /* [RW][RX] */) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  using V = hn::Vec<decltype(d)>;
  V acc[RW][RX];
  for (int r = 0; r < RW; ++r)
    for (int c = 0; c < RX; ++c) acc[r][c] = hn::Zero(d);
  std::size_t k = 0;
  for (; k + N <= cols; k += N) {
    V wv[RW];
    for (int r = 0; r < RW; ++r) wv[r] = hn::LoadU(d, w + r * ws + k);
    for (int c = 0; c < RX; ++c) {
      const V xv = hn::LoadU(d, x + c * cols + k);
      for (int r = 0; r < RW; ++r) acc[r][c] = hn::MulAdd(wv[r], xv, acc[r][c]);
    }
  }
  for (int r = 0; r < RW; ++r) {
    for (int c = 0; c < RX; ++c) {
      float sum = hn::GetLane(hn::SumOfLanes(d, acc[r][c]));
      for (std::size_t t = k; t < cols; ++t) sum += w[r * ws + t] * x[c * cols + t];
      out[r * RX + c] = sum;
    }
  }
}

#if HWY_ARCH_X86 && (HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL)
constexpr int kFloatRX = 4;  // 32 vector registers: 16 accumulators fit
#else
constexpr int kFloatRX = 2;
#endif

template <int RW>
HWY_INLINE void FloatTileAnyX(const float* w, std::size_t ws, const float* x, std::size_t cols,
                              int rx, float* out) {
  if constexpr (kFloatRX == 4) {
    switch (rx) {
      case 1:
        return FloatTile<RW, 1>(w, ws, x, cols, out);
      case 2:
        return FloatTile<RW, 2>(w, ws, x, cols, out);
      case 3:
        return FloatTile<RW, 3>(w, ws, x, cols, out);
      default:
        return FloatTile<RW, 4>(w, ws, x, cols, out);
    }
  } else {
    if (rx == 1) return FloatTile<RW, 1>(w, ws, x, cols, out);
    return FloatTile<RW, 2>(w, ws, x, cols, out);
  }
}

void FloatRowsImpl(const float* w, std::size_t ws, std::size_t nrows, const float* x, std::size_t n,
                   std::size_t cols, float* y, std::size_t ldy) {
  constexpr int kRW = 4;
  const std::size_t x_chunk =
      std::max<std::size_t>(kFloatRX, (256 * 1024 / (4 * cols)) / kFloatRX * kFloatRX);
  for (std::size_t i_begin = 0; i_begin < n; i_begin += x_chunk) {
    const std::size_t i_end = std::min(n, i_begin + x_chunk);
    for (std::size_t r = 0; r < nrows;) {
      const int rw = nrows - r >= std::size_t(kRW) ? kRW : 1;
      for (std::size_t i = i_begin; i < i_end; i += kFloatRX) {
        const int rx = int(std::min<std::size_t>(kFloatRX, i_end - i));
        float out[kRW * 4];
        if (rw == kRW) {
          FloatTileAnyX<kRW>(w + r * ws, ws, x + i * cols, cols, rx, out);
        } else {
          FloatTileAnyX<1>(w + r * ws, ws, x + i * cols, cols, rx, out);
        }
        for (int k = 0; k < rw; ++k)
          for (int c = 0; c < rx; ++c) y[(i + c) * ldy + r + k] = out[k * rx + c];
      }
      r += std::size_t(rw);
    }
  }
}

void F16RowsVecImpl(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t r1,
                    const float* x, std::size_t cols, float* y) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t r = r0; r < r1; ++r) {
    const auto* row = reinterpret_cast<const hwy::float16_t*>(w + r * row_bytes);
    auto a0 = hn::Zero(d), a1 = hn::Zero(d);
    std::size_t k = 0;
    for (; k + 2 * N <= cols; k += 2 * N) {
      a0 = hn::MulAdd(hn::PromoteTo(d, hn::LoadU(dh, row + k)), hn::LoadU(d, x + k), a0);
      a1 = hn::MulAdd(hn::PromoteTo(d, hn::LoadU(dh, row + k + N)), hn::LoadU(d, x + k + N), a1);
    }
    for (; k + N <= cols; k += N) {
      a0 = hn::MulAdd(hn::PromoteTo(d, hn::LoadU(dh, row + k)), hn::LoadU(d, x + k), a0);
    }
    float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1)));
    const uint8_t* tail = w + r * row_bytes;
    for (; k < cols; ++k) {
      uint16_t h;
      std::memcpy(&h, tail + 2 * k, 2);
      sum += fp16_to_float(h) * x[k];
    }
    y[r] = sum;
  }
}

void F16ToF32Impl(const uint8_t* src, float* dst, std::size_t count) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  const std::size_t N = hn::Lanes(d);
  const auto* h = reinterpret_cast<const hwy::float16_t*>(src);
  std::size_t k = 0;
  for (; k + N <= count; k += N) hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, h + k)), d, dst + k);
  for (; k < count; ++k) {
    uint16_t v;
    std::memcpy(&v, src + 2 * k, 2);
    dst[k] = fp16_to_float(v);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace squat::kernels
HWY_AFTER_NAMESPACE();

#undef SQUAT_VNNI
#undef SQUAT_X86_INT8

#if HWY_ONCE
namespace squat::kernels::detail {

HWY_EXPORT(Q8RowsImpl);
HWY_EXPORT(FloatRowsImpl);
HWY_EXPORT(F16RowsVecImpl);
HWY_EXPORT(F16ToF32Impl);

void q8_rows(gguf::TensorType type, const uint8_t* w, std::size_t row_bytes, std::size_t r0,
             std::size_t r1, const Q8Rows& x, std::size_t n, float* y, std::size_t ldy,
             float* scratch) {
  HWY_DYNAMIC_DISPATCH(Q8RowsImpl)(type, w, row_bytes, r0, r1, x, n, y, ldy, scratch);
}

void float_rows(const float* w, std::size_t w_stride, std::size_t nrows, const float* x,
                std::size_t n, std::size_t cols, float* y, std::size_t ldy) {
  HWY_DYNAMIC_DISPATCH(FloatRowsImpl)(w, w_stride, nrows, x, n, cols, y, ldy);
}

void f16_rows_vec(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t r1,
                  const float* x, std::size_t cols, float* y) {
  HWY_DYNAMIC_DISPATCH(F16RowsVecImpl)(w, row_bytes, r0, r1, x, cols, y);
}

void f16_to_f32(const uint8_t* src, float* dst, std::size_t count) {
  HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(src, dst, count);
}

}  // namespace squat::kernels::detail
#endif  // HWY_ONCE
