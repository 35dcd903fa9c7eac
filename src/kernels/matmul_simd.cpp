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
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/matmul_simd.h"
#include "kernels/weight_kernels.h"

HWY_BEFORE_NAMESPACE();

// Highway 1.0.3's AVX3_DL target string lacks avx512vnni, so add it for that target (GCC only;
// clang builds use the vpmaddubsw path there). guard_simd_targets() keeps AVX3_DL off CPUs
// without it.
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

#include "kernels/dequant-inl.h"  // IWYU pragma: keep

// Generic path: the scalar decoders compiled for this target (the compiler vectorises them).
void DequantRowImpl(TensorType type, const uint8_t* src, float* dst, std::size_t n) {
  dq::dequantize(type, src, dst, n);
}

HWY_INLINE float LoadF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if SQUAT_X86_INT8
  return _cvtsh_ss(h);
#else
  return fp16_to_float(h);
#endif
}

// Weight block formats of the quantized paths: bytes per block, whether a block has an offset
// term m (x = d*q + m) and where its 16 nibble bytes start. Q4_0 (x = d*(q - 8)) is handled as
// Q4_1 with m = -8d, which is exact: sum((q-8) x) d = d sum(q x) - 8d sum(x).
struct Q4_1Format {
  static constexpr std::size_t kBytes = 20;
  static constexpr bool kHasMin = true;
  static constexpr bool kMinFromScale = false;
  static constexpr std::size_t kQs = 4;
};
struct Q4_0Format {
  static constexpr std::size_t kBytes = 18;
  static constexpr bool kHasMin = true;
  static constexpr bool kMinFromScale = true;
  static constexpr std::size_t kQs = 2;
};
struct Q8_0Format {
  static constexpr std::size_t kBytes = 34;
  static constexpr bool kHasMin = false;
  static constexpr bool kMinFromScale = false;
  static constexpr std::size_t kQs = 2;
};
// Q4_K: 256-element super-blocks of 144 bytes; each 32-element sub-block b is one nibble (low
// for even b, high for odd) of 32 consecutive bytes, with d = d_super * scale(b) and
// m = -dmin * min(b), so it runs as Q4_1 with these per-sub-block scales.
struct Q4_KFormat {
  static constexpr std::size_t kBytes = 0;  // not a fixed stride per 32 elements
  static constexpr bool kHasMin = true;
  static constexpr bool kMinFromScale = false;
  static constexpr std::size_t kQs = 0;
  static const uint8_t* nibbles(const uint8_t* row, std::size_t b) {
    return row + (b / 8) * gguf::kQ4_KBlockBytes + 16 + 32 * ((b % 8) / 2);
  }
};

template <class F>
constexpr bool kIsQ4K = F::kBytes == 0;

template <class F>
HWY_INLINE const uint8_t* BlockPtr(const uint8_t* row, std::size_t b) {
  return row + b * F::kBytes;
}

// Converts the fp16 scales (and mins) of `rw` rows to float: dw[r*nbp + b], mw[r*nbp + b] for
// b < nb (the caller zeroes [nb, nbp) once). The halves sit at a fixed stride through the blocks.
template <class F>
HWY_INLINE void GatherScales(const uint8_t* const* rows, int rw, std::size_t nb, std::size_t nbp,
                             float* dw, float* mw) {
  if constexpr (kIsQ4K<F>) {
    for (int r = 0; r < rw; ++r) {
      for (std::size_t i = 0; i < nb / 8; ++i) {
        const uint8_t* sb = rows[r] + i * gguf::kQ4_KBlockBytes;
        const float d = LoadF16(sb), dmin = LoadF16(sb + 2);
        for (int j = 0; j < 8; ++j) {
          int sc, m;
          dq::k_scale_min(sb + 4, j, sc, m);
          dw[r * nbp + 8 * i + std::size_t(j)] = d * float(sc);
          mw[r * nbp + 8 * i + std::size_t(j)] = -(dmin * float(m));
        }
      }
    }
    return;
  }
  for (int r = 0; r < rw; ++r) {
    const uint8_t* p = rows[r];
    float* d_out = dw + r * nbp;
    float* m_out = mw + r * nbp;
    std::size_t b = 0;
#if SQUAT_X86_INT8
    // One 8-lane gather of the 32-bit words (d, m) at the block starts; every word lies inside
    // its block.
    const __m256i offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                               _mm256_set1_epi32(int(F::kBytes)));
    for (; b + 8 <= nb; b += 8) {
      const __m256i words =
          _mm256_i32gather_epi32(reinterpret_cast<const int*>(p + b * F::kBytes), offsets, 1);
      const __m256i lo = _mm256_and_si256(words, _mm256_set1_epi32(0xffff));
      const __m256i hi = _mm256_srli_epi32(words, 16);
      // packus per 128-bit lane: [d0..3 m0..3 | d4..7 m4..7] -> qwords (0, 2, 1, 3).
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);
      _mm256_storeu_ps(d_out + b, _mm256_cvtph_ps(_mm256_castsi256_si128(packed)));
      if constexpr (F::kHasMin && !F::kMinFromScale) {
        _mm256_storeu_ps(m_out + b, _mm256_cvtph_ps(_mm256_extracti128_si256(packed, 1)));
      }
    }
#endif
    for (; b < nb; ++b) {
      d_out[b] = LoadF16(p + b * F::kBytes);
      if constexpr (F::kHasMin && !F::kMinFromScale) m_out[b] = LoadF16(p + b * F::kBytes + 2);
    }
    if constexpr (F::kMinFromScale) {
      for (b = 0; b < nb; ++b) m_out[b] = -8.0f * d_out[b];
    }
  }
}

// prod[(r*RX + c)*nbp + b] = dw[r*nbp + b] * xd[c][b]: the combined scale of each block pair.
template <int RW, int RX>
HWY_INLINE void CombineScales(const float* dw, const float* const* xd, std::size_t nb,
                              std::size_t nbp, float* prod) {
  const hn::ScalableTag<float> d;
  const std::size_t N = hn::Lanes(d);
  for (int r = 0; r < RW; ++r) {
    for (int c = 0; c < RX; ++c) {
      float* out = prod + (r * RX + c) * nbp;
      std::size_t b = 0;
      for (; b + N <= nb; b += N) {
        hn::StoreU(hn::Mul(hn::LoadU(d, dw + r * nbp + b), hn::LoadU(d, xd[c] + b)), d, out + b);
      }
      for (; b < nb; ++b) out[b] = dw[r * nbp + b] * xd[c][b];
    }
  }
}

#if SQUAT_X86_INT8

// The 8 int32 lanes of one block's partial dot products are not summed per block: they are
// converted to float and scaled, and only the row total is reduced horizontally.
HWY_INLINE __m256i DotU8S8(__m256i acc, __m256i u, __m256i s) {
#if SQUAT_VNNI
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  // u <= 128 (Q8_0 |w|, Q4_1 q <= 15) times |s| <= 127: pair sums fit int16 (<= 32512).
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

HWY_INLINE float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// With VNNI and several x rows, Q8_0 uses (x + 128) * w - 128 * w: the correction is made once
// per weight block and x + 128 once per x block, leaving one vpdpbusd per pair. Otherwise
// |w| * (x with w's sign), as vpmaddubsw needs an unsigned operand.
template <class F, int RX>
constexpr bool kBiased = !F::kHasMin && SQUAT_VNNI && RX > 1;

// A weight block made ready for products with several x blocks.
struct Prepared {
  __m256i u;     // unsigned operand (Q4_1 nibbles, Q8_0 |w|), or signed w when biased
  __m256i init;  // sign source (Q8_0 sign trick) or accumulator start (biased correction)
};

template <class F, int RX>
HWY_INLINE Prepared LoadBlock(const uint8_t* row, std::size_t b) {
  if constexpr (kIsQ4K<F>) {  // one nibble of 32 bytes
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(F::nibbles(row, b)));
    if (b & 1) v = _mm256_srli_epi16(v, 4);
    return {_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), _mm256_setzero_si256()};
  }
  const uint8_t* block = BlockPtr<F>(row, b);
  if constexpr (F::kHasMin) {  // Q4_1: 16 nibble bytes, low nibbles are elements 0..15
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + F::kQs));
    const __m256i both =
        _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return {_mm256_and_si256(both, _mm256_set1_epi8(0x0f)), _mm256_setzero_si256()};
  } else {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
    if constexpr (kBiased<F, RX>) {
      const __m256i wsum = DotU8S8(_mm256_setzero_si256(), _mm256_set1_epi8(1), w);
      return {w, _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(wsum, 7))};
    } else {
      return {_mm256_sign_epi8(w, w), w};
    }
  }
}

template <class F, int RX>
HWY_INLINE __m256i PrepareX(__m256i x) {
  if constexpr (kBiased<F, RX>) return _mm256_xor_si256(x, _mm256_set1_epi8(char(0x80)));
  return x;
}

template <class F, int RX>
HWY_INLINE __m256i BlockDot(const Prepared& w, __m256i x) {
  if constexpr (F::kHasMin) {
    return DotU8S8(_mm256_setzero_si256(), w.u, x);
  } else if constexpr (kBiased<F, RX>) {
    return DotU8S8(w.init, x, w.u);
  } else {
    return DotU8S8(_mm256_setzero_si256(), w.u, _mm256_sign_epi8(x, w.init));
  }
}

// RW weight rows times RX x rows over all nb blocks: out[rw][rx]. scale[(r*RX + c)*nbp + b]
// is the combined block scale (CombineScales); with mins, the accumulators start from
// mw . s over whole vectors of 8 (both zero-padded), so one horizontal sum covers both terms.
template <class F, int RW, int RX>
HWY_INLINE void QuantTile(const uint8_t* const* rows, const float* scale, const float* mw,
                          const float* const* xs, std::size_t nb, std::size_t nbp,
                          const int8_t* const* xq, float* out /* [RW][RX] */) {
  __m256 acc[RW][RX];
  for (int r = 0; r < RW; ++r)
    for (int c = 0; c < RX; ++c) acc[r][c] = _mm256_setzero_ps();
  if constexpr (F::kHasMin) {
    // b outermost so the RW*RX accumulation chains overlap.
    for (std::size_t b = 0; b < nbp; b += 8) {
      __m256 m[RW];
      for (int r = 0; r < RW; ++r) m[r] = _mm256_loadu_ps(mw + r * nbp + b);
      for (int c = 0; c < RX; ++c) {
        const __m256 sv = _mm256_loadu_ps(xs[c] + b);
        for (int r = 0; r < RW; ++r) acc[r][c] = _mm256_fmadd_ps(m[r], sv, acc[r][c]);
      }
    }
  }
  for (std::size_t b = 0; b < nb; ++b) {
    Prepared w[RW];
    for (int r = 0; r < RW; ++r) w[r] = LoadBlock<F, RX>(rows[r], b);
    for (int c = 0; c < RX; ++c) {
      const __m256i xv =
          PrepareX<F, RX>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[c] + 32 * b)));
      for (int r = 0; r < RW; ++r) {
        const __m256 p = _mm256_cvtepi32_ps(BlockDot<F, RX>(w[r], xv));
        acc[r][c] =
            _mm256_fmadd_ps(p, _mm256_broadcast_ss(scale + (r * RX + c) * nbp + b), acc[r][c]);
      }
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int c = 0; c < RX; ++c) out[r * RX + c] = HSum(acc[r][c]);
}

#else  // portable fallback: the same definition, one block at a time in scalar code

template <class F, int RW, int RX>
HWY_INLINE void QuantTile(const uint8_t* const* rows, const float* scale, const float* mw,
                          const float* const* xs, std::size_t nb, std::size_t nbp,
                          const int8_t* const* xq, float* out) {
  for (int r = 0; r < RW; ++r) {
    for (int c = 0; c < RX; ++c) {
      float sum = 0.0f;
      for (std::size_t b = 0; b < nb; ++b) {
        const uint8_t* blk = BlockPtr<F>(rows[r], b);
        int32_t isum = 0;
        for (int j = 0; j < 32; ++j) {
          int q;
          if constexpr (kIsQ4K<F>) {
            const uint8_t byte = F::nibbles(rows[r], b)[j];
            q = (b & 1) ? (byte >> 4) : (byte & 0x0f);
          } else if constexpr (F::kHasMin) {
            q = j < 16 ? (blk[F::kQs + j] & 0x0f) : (blk[F::kQs + j - 16] >> 4);
          } else {
            q = int8_t(blk[2 + j]);
          }
          isum += q * xq[c][32 * b + j];
        }
        sum += float(isum) * scale[(r * RX + c) * nbp + b];
        if constexpr (F::kHasMin) sum += mw[r * nbp + b] * xs[c][b];
      }
      out[r * RX + c] = sum;
    }
  }
}

#endif  // SQUAT_X86_INT8

#if SQUAT_VNNI
// AVX-512 VNNI: two weight rows share one 512-bit vector ([row 2p | row 2p+1], 256 bits each)
// against x broadcast to both halves, so each vpdpbusd/convert/scale covers two (row, x) pairs.
#define SQUAT_ZMM_PAIRS 1

// Per row pair p: dwx[(p*nbp + b)*16] = [dw(2p, b) x8 | dw(2p+1, b) x8] for b < nb (none when
// nb = 0: decode builds them inline), and
// mwx[(p*nbp/8 + k)*16] = [mw(2p, 8k..8k+7) | mw(2p+1, 8k..8k+7)].
HWY_INLINE void ExpandPairScales(const float* dw, const float* mw, std::size_t nb, std::size_t nbp,
                                 bool has_min, float* dwx, float* mwx) {
  for (int p = 0; p < 2; ++p) {
    const float* d0 = dw + 2 * p * nbp;
    const float* d1 = d0 + nbp;
    for (std::size_t b = 0; b < nb; ++b) {
      const __m512 v = _mm512_insertf32x8(_mm512_set1_ps(d0[b]), _mm256_set1_ps(d1[b]), 1);
      _mm512_storeu_ps(dwx + (p * nbp + b) * 16, v);
    }
    if (!has_min) continue;
    const float* m0 = mw + 2 * p * nbp;
    const float* m1 = m0 + nbp;
    for (std::size_t k = 0; k < nbp / 8; ++k) {
      const __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(m0 + 8 * k)),
                                          _mm256_loadu_ps(m1 + 8 * k), 1);
      _mm512_storeu_ps(mwx + (p * nbp / 8 + k) * 16, v);
    }
  }
}

// Blocks b of two rows as one vector. Q4_1: unsigned nibbles, each half [low | high nibbles].
// Q8_0: signed weights plus the accumulator start -128 * (4-element sums of w), for the
// (x + 128) * w form.
struct PairBlock {
  __m512i w;
  __m512i init;
};

template <class F>
HWY_INLINE PairBlock LoadPairBlock(const uint8_t* row0, const uint8_t* row1, std::size_t b) {
  if constexpr (kIsQ4K<F>) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(F::nibbles(row0, b)));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(F::nibbles(row1, b)));
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1);
    if (b & 1) z = _mm512_srli_epi16(z, 4);
    return {_mm512_and_si512(z, _mm512_set1_epi8(0x0f)), _mm512_setzero_si512()};
  }
  const uint8_t* b0 = BlockPtr<F>(row0, b);
  const uint8_t* b1 = BlockPtr<F>(row1, b);
  if constexpr (F::kHasMin) {
    const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + F::kQs));
    const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + F::kQs));
    const __m256i a = _mm256_inserti128_si256(_mm256_castsi128_si256(v0), v1, 1);
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(a), _mm256_srli_epi16(a, 4), 1);
    // [v0, v1, v0>>4, v1>>4] -> [v0, v0>>4, v1, v1>>4]
    const __m512i ordered = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
    return {_mm512_and_si512(ordered, _mm512_set1_epi8(0x0f)), _mm512_setzero_si512()};
  } else {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1 + 2));
    const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
    const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), w);
    return {w, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, 7))};
  }
}

HWY_INLINE float HSum512Half(__m512 v, int half) {
  return HSum(half == 0 ? _mm512_castps512_ps256(v) : _mm512_extractf32x8_ps(v, 1));
}

// Rows 0..3 of `rows` times RX x rows: out[r*RX + c].
template <class F, int RX>
HWY_INLINE void QuantTilePairs(const uint8_t* const* rows, const float* dw, const float* dwx,
                               const float* mwx, const Q8Rows& x, std::size_t i0, float* out) {
  const std::size_t nb = x.nb, nbp = x.nbp;
  const int8_t* xq[RX];
  const float* xd[RX];
  const float* xs[RX];
  for (int c = 0; c < RX; ++c) {
    xq[c] = x.q + (i0 + c) * x.cols;
    xd[c] = x.d + (i0 + c) * x.nb;
    xs[c] = x.s + (i0 + c) * x.nbp;
  }
  __m512 acc[2][RX];
  for (int p = 0; p < 2; ++p)
    for (int c = 0; c < RX; ++c) acc[p][c] = _mm512_setzero_ps();
  if constexpr (F::kHasMin) {
    for (std::size_t k = 0; k < nbp / 8; ++k) {
      const __m512 m0 = _mm512_loadu_ps(mwx + k * 16);
      const __m512 m1 = _mm512_loadu_ps(mwx + (nbp / 8 + k) * 16);
      for (int c = 0; c < RX; ++c) {
        const __m512 sv = _mm512_broadcast_f32x8(_mm256_loadu_ps(xs[c] + 8 * k));
        acc[0][c] = _mm512_fmadd_ps(m0, sv, acc[0][c]);
        acc[1][c] = _mm512_fmadd_ps(m1, sv, acc[1][c]);
      }
    }
  }
  const __m512i bias = _mm512_set1_epi8(char(0x80));
  for (std::size_t b = 0; b < nb; ++b) {
    const PairBlock w0 = LoadPairBlock<F>(rows[0], rows[1], b);
    const PairBlock w1 = LoadPairBlock<F>(rows[2], rows[3], b);
    __m512 s0, s1;
    if constexpr (RX == 1) {  // one x row (decode): build [dw(r) x8 | dw(r+1) x8] here
      s0 = _mm512_mask_broadcastss_ps(_mm512_set1_ps(dw[b]), 0xff00, _mm_load_ss(dw + nbp + b));
      s1 = _mm512_mask_broadcastss_ps(_mm512_set1_ps(dw[2 * nbp + b]), 0xff00,
                                      _mm_load_ss(dw + 3 * nbp + b));
    } else {  // expanded once per weight tile, reused by every x tile
      s0 = _mm512_loadu_ps(dwx + b * 16);
      s1 = _mm512_loadu_ps(dwx + (nbp + b) * 16);
    }
    for (int c = 0; c < RX; ++c) {
      __m512i xv = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[c] + 32 * b)));
      const __m512 dx = _mm512_set1_ps(xd[c][b]);
      __m512i i0v, i1v;
      if constexpr (F::kHasMin) {
        i0v = _mm512_dpbusd_epi32(w0.init, w0.w, xv);
        i1v = _mm512_dpbusd_epi32(w1.init, w1.w, xv);
      } else {
        xv = _mm512_xor_si512(xv, bias);
        i0v = _mm512_dpbusd_epi32(w0.init, xv, w0.w);
        i1v = _mm512_dpbusd_epi32(w1.init, xv, w1.w);
      }
      acc[0][c] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(i0v), dx), s0, acc[0][c]);
      acc[1][c] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(i1v), dx), s1, acc[1][c]);
    }
  }
  for (int p = 0; p < 2; ++p) {
    for (int c = 0; c < RX; ++c) {
      out[(2 * p) * RX + c] = HSum512Half(acc[p][c], 0);
      out[(2 * p + 1) * RX + c] = HSum512Half(acc[p][c], 1);
    }
  }
}

template <class F>
HWY_INLINE void QuantTilePairsAnyX(const uint8_t* const* rows, const float* dw, const float* dwx,
                                   const float* mwx, const Q8Rows& x, std::size_t i0, int rx,
                                   float* out) {
  switch (rx) {
    case 1:
      return QuantTilePairs<F, 1>(rows, dw, dwx, mwx, x, i0, out);
    case 2:
      return QuantTilePairs<F, 2>(rows, dw, dwx, mwx, x, i0, out);
    case 3:
      return QuantTilePairs<F, 3>(rows, dw, dwx, mwx, x, i0, out);
    default:
      return QuantTilePairs<F, 4>(rows, dw, dwx, mwx, x, i0, out);
  }
}
#else
#define SQUAT_ZMM_PAIRS 0
#endif  // SQUAT_VNNI

template <class F, int RW, int RX>
HWY_INLINE void QuantTileScaled(const uint8_t* const* rows, const float* dw, const float* mw,
                                const Q8Rows& x, std::size_t i0, float* scale, float* out) {
  const int8_t* xq[RX];
  const float* xd[RX];
  const float* xs[RX];
  for (int c = 0; c < RX; ++c) {
    xq[c] = x.q + (i0 + c) * x.cols;
    xd[c] = x.d + (i0 + c) * x.nb;
    xs[c] = x.s + (i0 + c) * x.nbp;
  }
  CombineScales<RW, RX>(dw, xd, x.nb, x.nbp, scale);
  QuantTile<F, RW, RX>(rows, scale, mw, xs, x.nb, x.nbp, xq, out);
}

template <class F, int RW>
HWY_INLINE void QuantTileAnyX(const uint8_t* const* rows, const float* dw, const float* mw,
                              const Q8Rows& x, std::size_t i0, int rx, float* scale, float* out) {
  switch (rx) {
    case 1:
      return QuantTileScaled<F, RW, 1>(rows, dw, mw, x, i0, scale, out);
    case 2:
      return QuantTileScaled<F, RW, 2>(rows, dw, mw, x, i0, scale, out);
    case 3:
      return QuantTileScaled<F, RW, 3>(rows, dw, mw, x, i0, scale, out);
    default:
      return QuantTileScaled<F, RW, 4>(rows, dw, mw, x, i0, scale, out);
  }
}

template <class F>
void QuantRows(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t r1,
               const Q8Rows& x, std::size_t n, float* y, std::size_t ldy, float* scratch) {
  using Scratch = detail::QuantRowsScratch;
  constexpr int kRW = int(Scratch::kW), kRX = int(Scratch::kX);
  const std::size_t nb = x.nb, nbp = x.nbp;
  float* dw = scratch + Scratch::dw * nbp;
  float* mw = scratch + Scratch::mw * nbp;
  float* scale = scratch + Scratch::scale * nbp;
  float* dwx = scratch + Scratch::pair_dw * nbp;
  float* mwx = scratch + Scratch::pair_mw * nbp;
  (void)dwx, (void)mwx;
  for (int r = 0; r < kRW; ++r) {  // padding read by the 8-wide min-term sums
    std::fill(dw + r * nbp + nb, dw + (r + 1) * nbp, 0.0f);
    std::fill(mw + r * nbp + nb, mw + (r + 1) * nbp, 0.0f);
  }
  // Keep the slice of quantized x rows that each weight tile sweeps within L2.
  const std::size_t x_chunk = std::max<std::size_t>(kRX, (256 * 1024 / (x.cols + 8)) / kRX * kRX);
  for (std::size_t i_begin = 0; i_begin < n; i_begin += x_chunk) {
    const std::size_t i_end = std::min(n, i_begin + x_chunk);
    for (std::size_t r = r0; r < r1;) {
      const int rw = r1 - r >= std::size_t(kRW) ? kRW : 1;
      const uint8_t* rows[kRW];
      for (int k = 0; k < rw; ++k) rows[k] = w + (r + k) * row_bytes;
      // The next tile's rows, so its scale gathers (the first touch) find them in L1.
      if (r + 2 * kRW <= r1) {
        const uint8_t* next = w + (r + kRW) * row_bytes;
        for (std::size_t off = 0; off < kRW * row_bytes; off += 64) hwy::Prefetch(next + off);
      }
      GatherScales<F>(rows, rw, nb, nbp, dw, mw);
#if SQUAT_ZMM_PAIRS
      if (rw == kRW) ExpandPairScales(dw, mw, n > 1 ? nb : 0, nbp, F::kHasMin, dwx, mwx);
#endif
      for (std::size_t i = i_begin; i < i_end; i += kRX) {
        const int rx = int(std::min<std::size_t>(kRX, i_end - i));
        float out[kRW * kRX];
        if (SQUAT_ZMM_PAIRS && rw == kRW) {
#if SQUAT_ZMM_PAIRS
          QuantTilePairsAnyX<F>(rows, dw, dwx, mwx, x, i, rx, out);
#endif
        } else if (rw == kRW) {
          QuantTileAnyX<F, kRW>(rows, dw, mw, x, i, rx, scale, out);
        } else {
          QuantTileAnyX<F, 1>(rows, dw, mw, x, i, rx, scale, out);
        }
        for (int k = 0; k < rw; ++k)
          for (int c = 0; c < rx; ++c) y[(i + c) * ldy + r + k] = out[k * rx + c];
      }
      r += std::size_t(rw);
    }
  }
}

// ---- Q6_K: 256-element super-blocks of 210 bytes ----
// Each 32-element block b (half h = (b%8)/4, k = b%4 within its super-block) has 6-bit codes
// q = nibble of 32 ql bytes | 2 bits of 32 qh bytes << 4 and weight d * scale(16 elements) *
// (q - 32). The integer part runs as u8 q times s8 x with the accumulator started at
// -32 * (4-element sums of x); the two scales of a block become a lane-varying float factor.
// One weight row at a time (the weights are unpacked once per block for up to 4 x rows).

template <int RX>
HWY_INLINE void Q6KRow(const uint8_t* row, std::size_t nb, const Q8Rows& x, std::size_t i0,
                       float* out) {
#if SQUAT_X86_INT8
  __m256 acc[RX];
  for (int c = 0; c < RX; ++c) acc[c] = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0f), low2 = _mm256_set1_epi8(0x03);
  const __m256i thirty_two = _mm256_set1_epi8(32);
  for (std::size_t b = 0; b < nb; ++b) {
    const uint8_t* sb = row + (b / 8) * gguf::kQ6_KBlockBytes;
    const int h = int(b % 8) / 4, k = int(b % 4);
    __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 64 * h + 32 * (k & 1)));
    if (k >= 2) ql = _mm256_srli_epi16(ql, 4);
    const __m256i qh =
        _mm256_srl_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + 32 * h)),
                         _mm_cvtsi32_si128(2 * k));
    const __m256i q = _mm256_or_si256(_mm256_and_si256(ql, low4),
                                      _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
    const auto* sc = reinterpret_cast<const int8_t*>(sb + 192 + 8 * h + 2 * k);
    const float d = LoadF16(sb + 208);
    // Lanes 0-3 hold elements 0-15 (first scale), lanes 4-7 elements 16-31.
    const __m256 scale =
        _mm256_setr_m128(_mm_set1_ps(d * float(sc[0])), _mm_set1_ps(d * float(sc[1])));
    for (int c = 0; c < RX; ++c) {
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + (i0 + c) * x.cols + 32 * b));
      const __m256i corr =
          _mm256_sub_epi32(_mm256_setzero_si256(), DotU8S8(_mm256_setzero_si256(), thirty_two, xv));
      const __m256 p = _mm256_cvtepi32_ps(DotU8S8(corr, q, xv));
      const __m256 dx = _mm256_set1_ps(x.d[(i0 + c) * x.nb + b]);
      acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(p, dx), scale, acc[c]);
    }
  }
  for (int c = 0; c < RX; ++c) out[c] = HSum(acc[c]);
#else
  for (int c = 0; c < RX; ++c) {
    float sum = 0.0f;
    for (std::size_t b = 0; b < nb; ++b) {
      const uint8_t* sb = row + (b / 8) * gguf::kQ6_KBlockBytes;
      const int h = int(b % 8) / 4, k = int(b % 4);
      const uint8_t* ql = sb + 64 * h + 32 * (k & 1);
      const uint8_t* qh = sb + 128 + 32 * h;
      const auto* sc = reinterpret_cast<const int8_t*>(sb + 192 + 8 * h + 2 * k);
      const int8_t* xq = x.q + (i0 + c) * x.cols + 32 * b;
      int32_t part[2] = {0, 0};
      for (int j = 0; j < 32; ++j) {
        const int q = ((k >= 2 ? ql[j] >> 4 : ql[j]) & 0x0f) | ((qh[j] >> (2 * k)) & 3) << 4;
        part[j / 16] += (q - 32) * xq[j];
      }
      const float d = LoadF16(sb + 208);
      const float dx = x.d[(i0 + c) * x.nb + b];
      sum += float(part[0]) * dx * (d * float(sc[0])) + float(part[1]) * dx * (d * float(sc[1]));
    }
    out[c] = sum;
  }
#endif
}

void Q6KRows(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t r1,
             const Q8Rows& x, std::size_t n, float* y, std::size_t ldy) {
  for (std::size_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    for (std::size_t i = 0; i < n; i += 4) {
      float out[4];
      const std::size_t rx = std::min<std::size_t>(4, n - i);
      switch (rx) {
        case 1:
          Q6KRow<1>(row, x.nb, x, i, out);
          break;
        case 2:
          Q6KRow<2>(row, x.nb, x, i, out);
          break;
        case 3:
          Q6KRow<3>(row, x.nb, x, i, out);
          break;
        default:
          Q6KRow<4>(row, x.nb, x, i, out);
          break;
      }
      for (std::size_t c = 0; c < rx; ++c) y[(i + c) * ldy + r] = out[c];
    }
  }
}

// ---- prompt GEMM: 8 weight rows interleaved as int8 codes ----
// For many x rows (a prompt), each tile of 8 weight rows is decoded once into an interleaved
// form where a 32-bit lane holds 4 consecutive codes of one row: one vector is 4 elements of
// 8 rows, and one x word (4 int8) broadcast to all lanes multiplies it (vpmaddubsw/vpdpbusd).
// The lanes are the 8 outputs: no scale gathers, no horizontal sums, no shuffles per block,
// and a tile is reused by every x row of an L2-sized slice.
// Tile layout per 32-element block b (R8Tile):
//   codes[256*b + 32*j + 4*k + t] = code (0..63) of row k, element 32*b + 4*j + t
//   d[8*b + k]: row k's scale of the block, m[8*b + k]: its offset coefficient, so that
//   element = d * code + m (Q4_1; Q4_0: m = -8d; Q4_K: d = d_super*sc, m = -dmin*min).
// Q6_K: m[16*b + 8*half + k] = d * sc of each 16-element half, element = that * (code - 32).

#if SQUAT_X86_INT8

constexpr int kR8Rows = 8;

struct R8Tile {
  uint8_t* codes;  // 256 * nb
  float* d;        // 8 * nb
  float* m;        // 8 * nb; Q6_K: 16 * nb, the scales d * sc of the two halves
};

HWY_INLINE void StoreCodes(const uint8_t* q32, int k, uint8_t* out /* block's 256 bytes */) {
  for (int j = 0; j < 8; ++j) std::memcpy(out + 32 * j + 4 * k, q32 + 4 * j, 4);
}

template <class F>
HWY_INLINE void ConvertTile(const uint8_t* const* rows, std::size_t nb, const R8Tile& t) {
  alignas(32) uint8_t q[32];
  for (int k = 0; k < kR8Rows; ++k) {
    const uint8_t* row = rows[k];
    if constexpr (kIsQ4K<F>) {
      for (std::size_t i = 0; i < nb / 8; ++i) {
        const uint8_t* sb = row + i * gguf::kQ4_KBlockBytes;
        const float d = LoadF16(sb), dmin = LoadF16(sb + 2);
        for (int s = 0; s < 8; ++s) {
          const std::size_t b = 8 * i + std::size_t(s);
          int sc, mn;
          dq::k_scale_min(sb + 4, s, sc, mn);
          t.d[8 * b + k] = d * float(sc);
          t.m[8 * b + k] = -(dmin * float(mn));
          const uint8_t* qs = F::nibbles(row, b);
          for (int e = 0; e < 32; ++e) q[e] = (s & 1) ? (qs[e] >> 4) : (qs[e] & 0x0f);
          StoreCodes(q, k, t.codes + 256 * b);
        }
      }
    } else {
      for (std::size_t b = 0; b < nb; ++b) {
        const uint8_t* blk = BlockPtr<F>(row, b);
        const float d = LoadF16(blk);
        t.d[8 * b + k] = d;
        t.m[8 * b + k] = F::kMinFromScale ? -8.0f * d : LoadF16(blk + 2);
        for (int e = 0; e < 16; ++e) {
          q[e] = blk[F::kQs + e] & 0x0f;
          q[e + 16] = blk[F::kQs + e] >> 4;
        }
        StoreCodes(q, k, t.codes + 256 * b);
      }
    }
  }
}

// Q6_K rows (layout at Q6KRow above) into the tile: codes q = 0..63, value d*sc*(q - 32).
HWY_INLINE void ConvertTileQ6K(const uint8_t* const* rows, std::size_t nb, const R8Tile& t) {
  alignas(32) uint8_t q[32];
  for (int k = 0; k < kR8Rows; ++k) {
    for (std::size_t b = 0; b < nb; ++b) {
      const uint8_t* sb = rows[k] + (b / 8) * gguf::kQ6_KBlockBytes;
      const int h = int(b % 8) / 4, kk = int(b % 4);
      const uint8_t* ql = sb + 64 * h + 32 * (kk & 1);
      const uint8_t* qh = sb + 128 + 32 * h;
      const auto* sc = reinterpret_cast<const int8_t*>(sb + 192 + 8 * h + 2 * kk);
      for (int e = 0; e < 32; ++e) {
        q[e] = uint8_t(((kk >= 2 ? ql[e] >> 4 : ql[e]) & 0x0f) | ((qh[e] >> (2 * kk)) & 3) << 4);
      }
      StoreCodes(q, k, t.codes + 256 * b);
      const float d = LoadF16(sb + 208);
      t.d[8 * b + k] = d;
      for (int half = 0; half < 2; ++half) t.m[16 * b + 8 * half + k] = d * float(sc[half]);
    }
  }
}

HWY_INLINE __m256i BroadcastWord(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Exact int32 sums of 4 codes times 4 x values (x word l of the block) for the 8 rows.
HWY_INLINE __m256i WordDot(__m256i w, const int8_t* x4) {
#if SQUAT_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, BroadcastWord(x4));
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, BroadcastWord(x4)), _mm256_set1_epi16(1));
#endif
}

// The tile times x rows i0 .. i0+NY-1: y[(i0 + c)*ldy + r .. + 8].
// Each row's floats are summed in exactly the order of the per-row path above (QuantTile,
// QuantTilePairs with VNNI, Q6KRow), with the rows in lanes instead of the element positions:
// accumulator l holds lane l of those kernels (elements 4l..4l+3 of every block; with mins,
// first the offset terms of blocks 8k+l), and the same tree adds the 8 up. So a prompt's
// products equal the token-by-token ones bit for bit, and caches and logits do not depend on
// how a prompt is batched. x4sum (Q6_K): per x row of the slice (row i at (i - chunk0) *
// cols/4), 32 * the sum of each 4 int8 codes of x.
template <bool kQ6K, int NY>
HWY_INLINE void R8TileRows(const R8Tile& t, const Q8Rows& x, std::size_t i0, const int32_t* x4sum,
                           std::size_t chunk0, float* y, std::size_t ldy, std::size_t r) {
  const std::size_t nb = x.nb;
  __m256 acc[NY][8];
  for (int c = 0; c < NY; ++c)
    for (int l = 0; l < 8; ++l) acc[c][l] = _mm256_setzero_ps();
  if constexpr (!kQ6K) {
    for (std::size_t b = 0; b < nb; ++b) {
      const __m256 m = _mm256_loadu_ps(t.m + 8 * b);
      for (int c = 0; c < NY; ++c) {
        const float s = x.s[(i0 + std::size_t(c)) * x.nbp + b];
        acc[c][b % 8] = _mm256_fmadd_ps(m, _mm256_set1_ps(s), acc[c][b % 8]);
      }
    }
  }
  for (std::size_t b = 0; b < nb; ++b) {
    const uint8_t* codes = t.codes + 256 * b;
    const __m256 dw = _mm256_loadu_ps(t.d + 8 * b);
    for (int c = 0; c < NY; ++c) {
      const std::size_t i = i0 + std::size_t(c);
      const int8_t* xb = x.q + i * x.cols + 32 * b;
      const __m256 dx = _mm256_set1_ps(x.d[i * x.nb + b]);
      [[maybe_unused]] const __m256 scale = _mm256_mul_ps(dw, dx);
      for (int l = 0; l < 8; ++l) {
        __m256i p = WordDot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * l)),
                            xb + 4 * l);
        if constexpr (kQ6K) {
          const int32_t corr = x4sum[(i - chunk0) * (x.cols / 4) + 8 * b + std::size_t(l)];
          p = _mm256_sub_epi32(p, _mm256_set1_epi32(corr));
          const __m256 half_scale = _mm256_loadu_ps(t.m + 16 * b + 8 * (l / 4));
          acc[c][l] =
              _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), dx), half_scale, acc[c][l]);
        } else {
#if SQUAT_VNNI
          acc[c][l] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), dx), dw, acc[c][l]);
#else
          acc[c][l] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[c][l]);
#endif
        }
      }
    }
  }
  for (int c = 0; c < NY; ++c) {
    // HSum's tree: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
    const __m256 even =
        _mm256_add_ps(_mm256_add_ps(acc[c][0], acc[c][4]), _mm256_add_ps(acc[c][2], acc[c][6]));
    const __m256 odd =
        _mm256_add_ps(_mm256_add_ps(acc[c][1], acc[c][5]), _mm256_add_ps(acc[c][3], acc[c][7]));
    _mm256_storeu_ps(y + (i0 + std::size_t(c)) * ldy + r, _mm256_add_ps(even, odd));
  }
}

template <bool kQ6K>
HWY_INLINE void R8TileAnyRows(const R8Tile& t, const Q8Rows& x, std::size_t i0, int ny,
                              const int32_t* x4sum, std::size_t chunk0, float* y, std::size_t ldy,
                              std::size_t r) {
  if (ny == 1) return R8TileRows<kQ6K, 1>(t, x, i0, x4sum, chunk0, y, ldy, r);
  return R8TileRows<kQ6K, 2>(t, x, i0, x4sum, chunk0, y, ldy, r);
}

// Weight rows [r0, r0 + 8*tiles) through 8-row tiles; scratch: q8_rows_scratch_floats.
template <class F, bool kQ6K>
void R8Rows(const uint8_t* w, std::size_t row_bytes, std::size_t r0, std::size_t tiles,
            const Q8Rows& x, std::size_t n, float* y, std::size_t ldy, float* scratch) {
  const std::size_t nb = x.nb;
  using Scratch = detail::R8TileScratch;
  R8Tile t;
  t.codes = reinterpret_cast<uint8_t*>(scratch + Scratch::codes * nb);
  t.d = scratch + Scratch::d * nb;
  t.m = scratch + Scratch::m * nb;
  auto* x4sum = reinterpret_cast<int32_t*>(scratch + Scratch::per_block * nb);
  const std::size_t x_chunk = detail::q8_x_chunk(x.cols);
  for (std::size_t i_begin = 0; i_begin < n; i_begin += x_chunk) {
    const std::size_t i_end = std::min(n, i_begin + x_chunk);
    if constexpr (kQ6K) {  // Q6KRow's correction -32 * (sum of 4 x codes), per x word
      for (std::size_t i = i_begin; i < i_end; ++i) {
        const int8_t* q = x.q + i * x.cols;
        int32_t* out = x4sum + (i - i_begin) * (x.cols / 4);
        for (std::size_t g = 0; g < x.cols / 4; ++g) {
          out[g] = 32 * (q[4 * g] + q[4 * g + 1] + q[4 * g + 2] + q[4 * g + 3]);
        }
      }
    }
    for (std::size_t tile = 0; tile < tiles; ++tile) {
      const std::size_t r = r0 + kR8Rows * tile;
      const uint8_t* rows[kR8Rows];
      for (int k = 0; k < kR8Rows; ++k) rows[k] = w + (r + std::size_t(k)) * row_bytes;
      if constexpr (kQ6K) {
        ConvertTileQ6K(rows, nb, t);
      } else {
        ConvertTile<F>(rows, nb, t);
      }
      for (std::size_t i = i_begin; i < i_end; i += 2) {
        const int ny = int(std::min<std::size_t>(2, i_end - i));
        R8TileAnyRows<kQ6K>(t, x, i, ny, x4sum, i_begin, y, ldy, r);
      }
    }
  }
}

#endif  // SQUAT_X86_INT8

void Q8RowsImpl(TensorType type, const uint8_t* w, std::size_t row_bytes, std::size_t r0,
                std::size_t r1, const Q8Rows& x, std::size_t n, float* y, std::size_t ldy,
                float* scratch) {
  const CpuTypeTraits traits = cpu_traits(type);
#if SQUAT_X86_INT8
  const std::size_t tiles = (r1 - r0) / kR8Rows;
  if (n >= detail::kR8MinXRows && tiles > 0 && traits.prompt_gemm) {
    switch (traits.kernel) {
      case RowKernel::kQ4_0:
        R8Rows<Q4_0Format, false>(w, row_bytes, r0, tiles, x, n, y, ldy, scratch);
        break;
      case RowKernel::kQ4_1:
        R8Rows<Q4_1Format, false>(w, row_bytes, r0, tiles, x, n, y, ldy, scratch);
        break;
      case RowKernel::kQ4_K:
        R8Rows<Q4_KFormat, false>(w, row_bytes, r0, tiles, x, n, y, ldy, scratch);
        break;
      case RowKernel::kQ6_K:  // its own tile conversion; the Q4_K format argument is unused
        R8Rows<Q4_KFormat, true>(w, row_bytes, r0, tiles, x, n, y, ldy, scratch);
        break;
      default:
        fail_usage("prompt GEMM: weight type {} has no interleaved tile", gguf::traits(type).name);
    }
    r0 += kR8Rows * tiles;
    if (r0 == r1) return;
  }
#endif
  switch (traits.kernel) {
    case RowKernel::kQ4_1:
      return QuantRows<Q4_1Format>(w, row_bytes, r0, r1, x, n, y, ldy, scratch);
    case RowKernel::kQ4_0:
      return QuantRows<Q4_0Format>(w, row_bytes, r0, r1, x, n, y, ldy, scratch);
    case RowKernel::kQ4_K:
      return QuantRows<Q4_KFormat>(w, row_bytes, r0, r1, x, n, y, ldy, scratch);
    case RowKernel::kQ6_K:
      return Q6KRows(w, row_bytes, r0, r1, x, n, y, ldy);
    case RowKernel::kQ8_0:
      return QuantRows<Q8_0Format>(w, row_bytes, r0, r1, x, n, y, ldy, scratch);
    case RowKernel::kDequantTiles:
    case RowKernel::kF32:
    case RowKernel::kF16:
      break;
  }
  fail_usage("quantized matrix rows: weight type {} has no int8 block kernel",
             gguf::traits(type).name);
}

// ---- activation quantization ----

// Vector form of quantize_activations_q8_ref, bit-identical to it: same float operations per
// element, and NearestInt rounds to nearest even like the scalar 1.5 * 2^23 trick.
void QuantizeQ8Impl(const float* HWY_RESTRICT x, std::size_t n, int8_t* HWY_RESTRICT q,
                    float* HWY_RESTRICT d, float* HWY_RESTRICT s) {
  const hn::CappedTag<float, 16> df;  // divides the block of 32
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const std::size_t N = hn::Lanes(df);
  const auto hi = hn::Set(df, 127.0f), lo = hn::Set(df, -127.0f);
  for (std::size_t b = 0; b < n / 32; ++b) {
    const float* xb = x + 32 * b;
    auto vmax = hn::Zero(df);
    for (std::size_t k = 0; k < 32; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    const auto vinv = hn::Set(df, inv);
    auto vsum = hn::Zero(di);
    for (std::size_t k = 0; k < 32; k += N) {
      auto v = hn::Mul(hn::LoadU(df, xb + k), vinv);
      v = hn::Max(hn::Min(v, hi), lo);
      const auto r = hn::NearestInt(v);
      vsum = hn::Add(vsum, r);
      hn::StoreU(hn::DemoteTo(d8, r), d8, q + 32 * b + k);
    }
    d[b] = scale;
    s[b] = scale * float(hn::GetLane(hn::SumOfLanes(di, vsum)));
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
#undef SQUAT_ZMM_PAIRS

#if HWY_ONCE
#if HWY_ARCH_X86
#include <cpuid.h>
#endif

namespace squat::kernels::detail {

HWY_EXPORT(Q8RowsImpl);

void guard_simd_targets() {
#if HWY_ARCH_X86
  // CPUID leaf 7: subleaf 0 ECX bit 11 is AVX512_VNNI, subleaf 1 EAX bit 4 is AVX_VNNI.
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool avx512_vnni = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 11));
  const bool avx_vnni = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
  if (!avx512_vnni || !avx_vnni) hwy::DisableTargets(HWY_AVX3_DL);
#endif
}

HWY_EXPORT(FloatRowsImpl);
HWY_EXPORT(QuantizeQ8Impl);
HWY_EXPORT(F16RowsVecImpl);
HWY_EXPORT(F16ToF32Impl);
HWY_EXPORT(DequantRowImpl);

void dequantize_row_fast(gguf::TensorType type, const uint8_t* src, float* dst, std::size_t n) {
  HWY_DYNAMIC_DISPATCH(DequantRowImpl)(type, src, dst, n);
}

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

void quantize_q8(const float* x, std::size_t n, int8_t* q, float* d, float* s) {
  HWY_DYNAMIC_DISPATCH(QuantizeQ8Impl)(x, n, q, d, s);
}

void f16_to_f32(const uint8_t* src, float* dst, std::size_t count) {
  HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(src, dst, count);
}

}  // namespace squat::kernels::detail
#endif  // HWY_ONCE
