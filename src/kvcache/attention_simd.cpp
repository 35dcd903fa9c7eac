// SIMD kernels of simd.h, compiled once per target by Highway and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kvcache/attention_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// Order matters: foreach_target re-includes this file for every target.
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>

#include "core/fp16.h"
#include "kvcache/simd.h"

HWY_BEFORE_NAMESPACE();
namespace squat::kv::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

HWY_INLINE float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, std::size_t n) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  std::size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), s1);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void BlockLogitsImpl(const float* q, const float* k, std::size_t nb, std::size_t dim, float scale,
                     float* s) {
  for (std::size_t t = 0; t < nb; ++t) s[t] = Dot(q, k + t * dim, dim) * scale;
}

float ExpSumImpl(float* x, std::size_t n, float m) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  const auto vneg = hn::Set(d, -m);
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
  if (i < n) {
    // Tail through a padded lane buffer so every value uses the same Exp.
    HWY_ALIGN float buf[hn::MaxLanes(d)];
    for (std::size_t j = 0; j < N; ++j) buf[j] = i + j < n ? x[i + j] : -1e30f;
    const auto t = hn::Add(hn::Load(d, buf), vneg);
    const auto e = hn::IfThenZeroElse(hn::Lt(t, vlow), hn::Exp(d, hn::Max(t, vlow)));
    hn::Store(e, d, buf);
    for (std::size_t j = 0; i + j < n; ++j) {
      x[i + j] = buf[j];
      sum += buf[j];
    }
  }
  return sum;
}

void AccumulateImpl(float* acc, float corr, const float* p, const float* v, std::size_t nb,
                    std::size_t dim) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  std::size_t c = 0;
  for (; c + N <= dim; c += N) {
    auto a = hn::Mul(hn::LoadU(d, acc + c), hn::Set(d, corr));
    for (std::size_t t = 0; t < nb; ++t)
      a = hn::MulAdd(hn::Set(d, p[t]), hn::LoadU(d, v + t * dim + c), a);
    hn::StoreU(a, d, acc + c);
  }
  for (; c < dim; ++c) {
    float a = acc[c] * corr;
    for (std::size_t t = 0; t < nb; ++t) a += p[t] * v[t * dim + c];
    acc[c] = a;
  }
}

void AffineChannelsImpl(float* x, std::size_t nb, std::size_t dim, const float* scale,
                        const float* min) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t t = 0; t < nb; ++t) {
    float* row = x + t * dim;
    std::size_t c = 0;
    for (; c + N <= dim; c += N) {
      hn::StoreU(hn::MulAdd(hn::LoadU(d, row + c), hn::LoadU(d, scale + c), hn::LoadU(d, min + c)),
                 d, row + c);
    }
    for (; c < dim; ++c) row[c] = row[c] * scale[c] + min[c];
  }
}

void AffineGroupsImpl(float* x, std::size_t n_groups, std::size_t G, const float* scale,
                      const float* min) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t g = 0; g < n_groups; ++g) {
    float* row = x + g * G;
    const auto vs = hn::Set(d, scale[g]), vm = hn::Set(d, min[g]);
    std::size_t c = 0;
    for (; c + N <= G; c += N) hn::StoreU(hn::MulAdd(hn::LoadU(d, row + c), vs, vm), d, row + c);
    for (; c < G; ++c) row[c] = row[c] * scale[g] + min[g];
  }
}

void RopeRowsImpl(float* x, std::size_t nb, std::size_t dim, const float* cr, const float* sr,
                  bool neox) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  const std::size_t h = dim / 2;
  for (std::size_t t = 0; t < nb; ++t) {
    float* row = x + t * dim;
    const float* c = cr + t * dim;
    const float* s = sr + t * dim;
    if (neox) {
      std::size_t i = 0;
      for (; i + N <= h; i += N) {
        const auto a = hn::LoadU(d, row + i), b = hn::LoadU(d, row + h + i);
        hn::StoreU(hn::MulAdd(a, hn::LoadU(d, c + i), hn::Mul(b, hn::LoadU(d, s + i))), d, row + i);
        hn::StoreU(hn::MulAdd(b, hn::LoadU(d, c + h + i), hn::Mul(a, hn::LoadU(d, s + h + i))), d,
                   row + h + i);
      }
      for (; i < h; ++i) {
        const float a = row[i], b = row[i + h];
        row[i] = a * c[i] + b * s[i];
        row[i + h] = b * c[i + h] + a * s[i + h];
      }
    } else {
      std::size_t i = 0;
      if (N >= 2) {
        for (; i + N <= dim; i += N) {
          const auto v = hn::LoadU(d, row + i);
          hn::StoreU(
              hn::MulAdd(v, hn::LoadU(d, c + i), hn::Mul(hn::Reverse2(d, v), hn::LoadU(d, s + i))),
              d, row + i);
        }
      }
      for (; i + 1 < dim; i += 2) {
        const float a = row[i], b = row[i + 1];
        row[i] = a * c[i] + b * s[i];
        row[i + 1] = b * c[i + 1] + a * s[i + 1];
      }
    }
  }
}

void GemmAccImpl(const float* E, std::size_t n, std::size_t g, const float* W, std::size_t cols,
                 float* T, std::size_t ldt) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t t = 0; t < n; ++t) {
    float* trow = T + t * ldt;
    const float* erow = E + t * g;
    std::size_t j = 0;
    for (; j + 4 * N <= cols; j += 4 * N) {
      auto a0 = hn::LoadU(d, trow + j), a1 = hn::LoadU(d, trow + j + N);
      auto a2 = hn::LoadU(d, trow + j + 2 * N), a3 = hn::LoadU(d, trow + j + 3 * N);
      for (std::size_t k = 0; k < g; ++k) {
        const auto e = hn::Set(d, erow[k]);
        const float* w = W + k * cols + j;
        a0 = hn::MulAdd(e, hn::LoadU(d, w), a0);
        a1 = hn::MulAdd(e, hn::LoadU(d, w + N), a1);
        a2 = hn::MulAdd(e, hn::LoadU(d, w + 2 * N), a2);
        a3 = hn::MulAdd(e, hn::LoadU(d, w + 3 * N), a3);
      }
      hn::StoreU(a0, d, trow + j);
      hn::StoreU(a1, d, trow + j + N);
      hn::StoreU(a2, d, trow + j + 2 * N);
      hn::StoreU(a3, d, trow + j + 3 * N);
    }
    for (; j + N <= cols; j += N) {
      auto a0 = hn::LoadU(d, trow + j);
      for (std::size_t k = 0; k < g; ++k) {
        a0 = hn::MulAdd(hn::Set(d, erow[k]), hn::LoadU(d, W + k * cols + j), a0);
      }
      hn::StoreU(a0, d, trow + j);
    }
    for (; j < cols; ++j) {
      float a = trow[j];
      for (std::size_t k = 0; k < g; ++k) a += erow[k] * W[k * cols + j];
      trow[j] = a;
    }
  }
}

void F16ToF32Impl(const uint16_t* in, std::size_t n, float* out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const std::size_t N = hn::Lanes(df);
  const hwy::float16_t* h = reinterpret_cast<const hwy::float16_t*>(in);
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, out + i);
  for (; i < n; ++i) out[i] = squat::fp16_to_float(in[i]);
}

void UnpackImpl(const uint8_t* packed, std::size_t n, int bits, float* out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint8_t, decltype(du)> d8;
  const std::size_t N = hn::Lanes(df);
  const std::size_t per = std::size_t(8 / bits);  // codes per byte
  const uint32_t mask = (1u << bits) - 1u;
  if (N < per || N % per != 0) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t bit = i * std::size_t(bits);
      out[i] = float((packed[bit / 8] >> (bit % 8)) & mask);
    }
    return;
  }
  // Lane j takes byte j / per of its chunk and shifts by (j % per) * bits.
  HWY_ALIGN int32_t idx[hn::MaxLanes(df)];
  HWY_ALIGN uint32_t shift[hn::MaxLanes(df)];
  for (std::size_t j = 0; j < N; ++j) {
    idx[j] = int32_t(j / per);
    shift[j] = uint32_t((j % per) * std::size_t(bits));
  }
  const auto vidx = hn::SetTableIndices(du, idx);
  const auto vshift = hn::Load(du, shift);
  const auto vmask = hn::Set(du, mask);
  // Whole-vector byte loads (N bytes) straight from the input while they stay inside it; the
  // rest goes through a zero-padded copy so nothing is read past the input.
  const std::size_t total_bytes = (n * std::size_t(bits) + 7) / 8;
  std::size_t i = 0;
  for (; i + N <= n && i / per + N <= total_bytes; i += N) {
    auto v = hn::PromoteTo(du, hn::LoadU(d8, packed + i / per));
    if (per > 1) v = hn::And(hn::Shr(hn::TableLookupLanes(v, vidx), vshift), vmask);
    hn::StoreU(hn::ConvertTo(df, hn::BitCast(di, v)), df, out + i);
  }
  if (i == n) return;
  HWY_ALIGN uint8_t buf[4 * hn::MaxLanes(df)];
  const std::size_t start = i / per;               // i is a multiple of N, hence of per
  const std::size_t nbytes = total_bytes - start;  // < N + N / per <= 2N
  std::memcpy(buf, packed + start, nbytes);
  std::memset(buf + nbytes, 0, sizeof(buf) - nbytes);
  for (std::size_t j = 0; i + j < n; j += N) {
    auto v = hn::PromoteTo(du, hn::LoadU(d8, buf + j / per));
    if (per > 1) v = hn::And(hn::Shr(hn::TableLookupLanes(v, vidx), vshift), vmask);
    HWY_ALIGN float tmp[hn::MaxLanes(df)];
    hn::Store(hn::ConvertTo(df, hn::BitCast(di, v)), df, tmp);
    for (std::size_t k = 0; k < N && i + j + k < n; ++k) out[i + j + k] = tmp[k];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace squat::kv::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace squat::kv::simd {

HWY_EXPORT(BlockLogitsImpl);
HWY_EXPORT(ExpSumImpl);
HWY_EXPORT(AccumulateImpl);
HWY_EXPORT(AffineChannelsImpl);
HWY_EXPORT(AffineGroupsImpl);
HWY_EXPORT(RopeRowsImpl);
HWY_EXPORT(GemmAccImpl);
HWY_EXPORT(F16ToF32Impl);
HWY_EXPORT(UnpackImpl);

void unpack_f32(const uint8_t* packed, std::size_t n, int bits, float* out) {
  HWY_DYNAMIC_DISPATCH(UnpackImpl)(packed, n, bits, out);
}

void gemm_acc(const float* E, std::size_t n, std::size_t g, const float* W, std::size_t cols,
              float* T, std::size_t ldt) {
  HWY_DYNAMIC_DISPATCH(GemmAccImpl)(E, n, g, W, cols, T, ldt);
}
void f16_to_f32(const uint16_t* in, std::size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(in, n, out);
}

void block_logits(const float* q, const float* k, std::size_t nb, std::size_t d, float scale,
                  float* s) {
  HWY_DYNAMIC_DISPATCH(BlockLogitsImpl)(q, k, nb, d, scale, s);
}
float exp_sum(float* s, std::size_t n, float m) {
  return HWY_DYNAMIC_DISPATCH(ExpSumImpl)(s, n, m);
}
void accumulate(float* acc, float corr, const float* p, const float* v, std::size_t nb,
                std::size_t d) {
  HWY_DYNAMIC_DISPATCH(AccumulateImpl)(acc, corr, p, v, nb, d);
}
void affine_channels(float* x, std::size_t nb, std::size_t d, const float* scale,
                     const float* min) {
  HWY_DYNAMIC_DISPATCH(AffineChannelsImpl)(x, nb, d, scale, min);
}
void affine_groups(float* x, std::size_t n_groups, std::size_t G, const float* scale,
                   const float* min) {
  HWY_DYNAMIC_DISPATCH(AffineGroupsImpl)(x, n_groups, G, scale, min);
}
void rope_rows(float* x, std::size_t nb, std::size_t d, const float* c, const float* s, bool neox) {
  HWY_DYNAMIC_DISPATCH(RopeRowsImpl)(x, nb, d, c, s, neox);
}

}  // namespace squat::kv::simd
#endif
