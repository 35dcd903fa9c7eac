// SIMD kernels of simd.h, compiled once per target by Highway and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kvcache/attention_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// Order matters: foreach_target re-includes this file for every target.
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/fp16.h"
#include "kvcache/simd.h"
#include "squat/rope.h"

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

// Codes of channels [c, c + N) of one token row as floats. bcast: the N codes fit in 32 bits,
// so one broadcast 32-bit load and a per-lane shift (lane * bits) extract them; otherwise lane
// j takes byte j / per of the N loaded bytes, shifted by (j % per) * bits. Rows are padded by
// the caller, so whole-vector byte loads stay inside readable memory.
template <class DF, class VU, class VI>
HWY_INLINE hn::Vec<DF> ReadCodes(DF df, const uint8_t* HWY_RESTRICT row, std::size_t c, int bits,
                                 bool bcast, VU shift, VU mask, VI idx) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint8_t, decltype(du)> d8;
  VU v;
  if (bcast) {
    uint32_t w;
    std::memcpy(&w, row + c * std::size_t(bits) / 8, 4);
    v = hn::And(hn::Shr(hn::Set(du, w), shift), mask);
  } else if (bits == 8) {
    v = hn::PromoteTo(du, hn::LoadU(d8, row + c));
  } else {
    v = hn::PromoteTo(du, hn::LoadU(d8, row + c * std::size_t(bits) / 8));
    v = hn::And(hn::Shr(hn::TableLookupLanes(v, idx), shift), mask);
  }
  return hn::ConvertTo(df, hn::BitCast(di, v));
}

#if HWY_TARGET != HWY_SCALAR
// Limits of the token-lane kernel's stack tables (larger shapes fall back to the store's
// float path).
constexpr std::size_t kFusedMaxD = 256;
constexpr std::size_t kFusedMaxWords = 32;  // 32-bit words of one token row of key codes

// Transposes N token rows of wr 32-bit words (row t at src + 4 * wr * t bytes, wr a power of
// two) into lo[w * N + t] = word w of row t, and hi = lo >> 16: log2(wr) rounds of
// ConcatEven/ConcatOdd over the stream of N * wr words (each round splits every stream into its
// even and odd words, so stream s ends up holding word bitreverse(s)). tmp: 2 * wr * N words.
template <class DU>
HWY_INLINE void TransposeWords(DU du, const uint8_t* HWY_RESTRICT src, std::size_t wr,
                               uint32_t* HWY_RESTRICT lo, uint32_t* HWY_RESTRICT hi,
                               uint32_t* HWY_RESTRICT tmp) {
  const std::size_t N = hn::Lanes(du);
  const hn::Repartition<uint8_t, DU> d8;
  uint32_t* cur = tmp;
  uint32_t* nxt = tmp + wr * N;
  for (std::size_t v = 0; v < wr; ++v) {
    hn::Store(hn::BitCast(du, hn::LoadU(d8, src + v * 4 * N)), du, cur + v * N);
  }
  std::size_t rounds = 0;
  for (std::size_t ns = 1; ns < wr; ns *= 2, ++rounds) {  // ns streams of wr / ns vectors
    const std::size_t nv = wr / ns;
    for (std::size_t st = 0; st < ns; ++st) {
      const uint32_t* in = cur + st * nv * N;
      uint32_t* even = nxt + (2 * st) * (nv / 2) * N;
      uint32_t* odd = nxt + (2 * st + 1) * (nv / 2) * N;
      for (std::size_t m = 0; m < nv / 2; ++m) {
        const auto x0 = hn::Load(du, in + 2 * m * N), x1 = hn::Load(du, in + (2 * m + 1) * N);
        hn::Store(hn::ConcatEven(du, x1, x0), du, even + m * N);
        hn::Store(hn::ConcatOdd(du, x1, x0), du, odd + m * N);
      }
    }
    std::swap(cur, nxt);
  }
  for (std::size_t st = 0; st < wr; ++st) {
    std::size_t w = 0;
    for (std::size_t r = 0; r < rounds; ++r) w |= ((st >> r) & 1) << (rounds - 1 - r);
    const auto x = hn::Load(du, cur + st * N);
    hn::Store(x, du, lo + w * N);
    hn::Store(hn::ShiftRight<16>(x), du, hi + w * N);
  }
}

// Per-call tables of the token-lane kernel.
struct LaneKeys {
  const uint32_t* lo;  // transposed words of the current N tokens [wr][N]
  const uint32_t* hi;  // the same >> 16
  const float* scale;  // [d] key scale * 2^-(position mod 16)
  const float* min;    // [d]
  std::size_t bits;    // per code
  std::size_t shift;   // log2(32 / bits): channel c sits in word c >> shift
};

// 2^-k, k < 32: the factor of a code left at bit k of its word (KeyCodes: k = position mod
// 16; the values' fast path: k = lane * bits).
constexpr float kInvPow2[32] = {
    0x1p-0f,  0x1p-1f,  0x1p-2f,  0x1p-3f,  0x1p-4f,  0x1p-5f,  0x1p-6f,  0x1p-7f,
    0x1p-8f,  0x1p-9f,  0x1p-10f, 0x1p-11f, 0x1p-12f, 0x1p-13f, 0x1p-14f, 0x1p-15f,
    0x1p-16f, 0x1p-17f, 0x1p-18f, 0x1p-19f, 0x1p-20f, 0x1p-21f, 0x1p-22f, 0x1p-23f,
    0x1p-24f, 0x1p-25f, 0x1p-26f, 0x1p-27f, 0x1p-28f, 0x1p-29f, 0x1p-30f, 0x1p-31f};

// code * 2^(position mod 16) of channel c for the N tokens (KeyCodes: the one step a codebook
// format replaces). The word, half (lo: bits 0-15, hi: bits 16-31) and mask are computed from
// c with shifts: a few scalar operations beside the vector ones, and no per-call tables.
template <class DF>
HWY_INLINE hn::Vec<DF> KeyCodes(DF df, const LaneKeys& k, std::size_t c) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const std::size_t pos = (c & ((std::size_t(1) << k.shift) - 1)) * k.bits;
  const uint32_t mask = ((1u << k.bits) - 1u) << (pos & 15);
  const auto x = hn::Load(du, (pos >= 16 ? k.hi : k.lo) + (c >> k.shift) * hn::Lanes(df));
  return hn::ConvertTo(df, hn::BitCast(di, hn::And(x, hn::Set(du, mask))));
}

// A loop over the R rows of a pass, unrolled so that the rows' accumulators stay in registers
// (a lambda would not: it lacks the target's attributes, so it is not inlined).
#define SQUAT_FOR_ROWS(r) HWY_UNROLL(8) for (std::size_t r = 0; r < R; ++r)

// Running logits of R query rows in token lanes.
template <std::size_t R, class DF>
struct LaneSums {
  hn::Vec<DF> a[R];
  // a_r += P[r][ca] * xa + P[r][cb] * xb: one rotated pair.
  HWY_INLINE void Add(DF df, const float* const* P, std::size_t ca, hn::Vec<DF> xa, std::size_t cb,
                      hn::Vec<DF> xb) {
    SQUAT_FOR_ROWS(r) {
      a[r] = hn::MulAdd(hn::Set(df, P[r][ca]), xa, hn::MulAdd(hn::Set(df, P[r][cb]), xb, a[r]));
    }
  }
  // a_r += P[r][c] * x: one channel.
  HWY_INLINE void Add(DF df, const float* const* P, std::size_t c, hn::Vec<DF> x) {
    SQUAT_FOR_ROWS(r) { a[r] = hn::MulAdd(hn::Set(df, P[r][c]), x, a[r]); }
  }
};

// Pre-RoPE pair (ca, cb), codes xa, xb: dequantized, rotated by each token's offset j in the
// block, (xa c - xb s, xa s + xb c), and added to the rows' logits.
template <std::size_t R, class DF>
HWY_INLINE void RotatedPair(DF df, const LaneKeys& k, const float* cs, std::size_t G,
                            const float* const* P, std::size_t ca, hn::Vec<DF> ca_codes,
                            std::size_t cb, hn::Vec<DF> cb_codes, LaneSums<R, DF>& acc) {
  const auto xa = hn::MulAdd(ca_codes, hn::Set(df, k.scale[ca]), hn::Set(df, k.min[ca]));
  const auto xb = hn::MulAdd(cb_codes, hn::Set(df, k.scale[cb]), hn::Set(df, k.min[cb]));
  const auto C = hn::LoadU(df, cs), S = hn::LoadU(df, cs + G);
  acc.Add(df, P, ca, hn::NegMulAdd(S, xb, hn::Mul(C, xa)), cb, hn::MulAdd(S, xa, hn::Mul(C, xb)));
}

// Logits (without the query-independent part for post-RoPE keys) of R query rows for the N
// tokens at lane offset j0 of the block: P[r] is row r's prepared query (see FusedBlockImpl).
// Channels in order (pairs in pair order), so the sums round as a loop over channels would.
template <std::size_t R, class DF>
HWY_INLINE void KeyLogits(DF df, const LaneKeys& k, const FusedBlock& b, std::size_t j0,
                          const float* const* P, const float* Kc, float* const* out) {
  const std::size_t D = b.d, G = b.G, half = D / 2;
  LaneSums<R, DF> acc;
  SQUAT_FOR_ROWS(r) { acc.a[r] = hn::Zero(df); }
  if (b.rope_cs) {
    for (std::size_t i = 0; i < half; ++i) {
      const std::size_t ca = b.neox ? i : 2 * i, cb = b.neox ? i + half : 2 * i + 1;
      RotatedPair(df, k, b.rope_lanes + i * 2 * G + j0, G, P, ca, KeyCodes(df, k, ca), cb,
                  KeyCodes(df, k, cb), acc);
    }
  } else {
    for (std::size_t c = 0; c < D; ++c) acc.Add(df, P, c, KeyCodes(df, k, c));
    // P holds q * scale * key scale (factor included): the min part is the constant Kc.
    SQUAT_FOR_ROWS(r) { acc.a[r] = hn::Add(acc.a[r], hn::Set(df, Kc[r])); }
  }
  SQUAT_FOR_ROWS(r) { hn::StoreU(acc.a[r], df, out[r] + j0); }
}

// f(std::integral_constant<std::size_t, R>) for the pass's row count R, 1 <= R <= kFusedPassRows.
template <class F>
HWY_INLINE void WithRows(std::size_t R, F&& f) {
  switch (R) {
    case 1:
      return f(std::integral_constant<std::size_t, 1>());
    case 2:
      return f(std::integral_constant<std::size_t, 2>());
    case 3:
      return f(std::integral_constant<std::size_t, 3>());
    case 4:
      return f(std::integral_constant<std::size_t, 4>());
    case 5:
      return f(std::integral_constant<std::size_t, 5>());
    case 6:
      return f(std::integral_constant<std::size_t, 6>());
    case 7:
      return f(std::integral_constant<std::size_t, 7>());
    default:
      return f(std::integral_constant<std::size_t, 8>());
  }
}
static_assert(kFusedPassRows == 8, "WithRows covers 1..8 rows");

// Value codes of channels [c, c + N) of one token row as floats times `vfac` (per lane):
// fast: the N codes fit in the 32-bit word at the vector's first byte (its low 16 bits unless
// the target converts unsigned integers in one instruction, kUnsignedConvert), so one
// broadcast and one AND with the lanes' masks extract them (times 2^(lane * bits));
// otherwise the shift-based ReadCodes (factor 1).
#if HWY_TARGET <= HWY_AVX3
constexpr bool kUnsignedConvert = true;
#else
constexpr bool kUnsignedConvert = false;
#endif
struct ValueCodes {
  bool fast;
  bool bcast;
  int bits;
};

template <std::size_t R, class DF, class VU, class VI>
HWY_INLINE void ValueSums(DF df, const FusedBlock& b, const ValueCodes& vc, std::size_t maxvis,
                          const float* const* w, const float* const* msum, float* const* acc,
                          const float* corr, VU vmask, VU shv, VU mv, VI iv, hn::Vec<DF> vfac) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const std::size_t N = hn::Lanes(df), D = b.d, G = b.G;
  const std::size_t vrb = D * std::size_t(b.vbits) / 8;
  for (std::size_t c = 0; c < D; c += N) {
    const std::size_t g = c / G;
    hn::Vec<DF> z[R];
    const float* pg[R];
    SQUAT_FOR_ROWS(r) {
      z[r] = hn::Zero(df);
      pg[r] = w[r] + g * maxvis;
    }
    const uint8_t* vrow = b.vcodes;
    const std::size_t cbyte = c * std::size_t(b.vbits) / 8;
    for (std::size_t t = 0; t < maxvis; ++t, vrow += vrb) {
      hn::Vec<DF> code;
      if (vc.fast) {
        uint32_t word;
        std::memcpy(&word, vrow + cbyte, 4);
        const auto masked = hn::And(hn::Set(du, word), vmask);
        if constexpr (kUnsignedConvert) {
          code = hn::ConvertTo(df, masked);
        } else {
          code = hn::ConvertTo(df, hn::BitCast(di, masked));
        }
      } else {
        code = ReadCodes(df, vrow, c, b.vbits, vc.bcast, shv, mv, iv);
      }
      SQUAT_FOR_ROWS(r) { z[r] = hn::MulAdd(hn::Set(df, pg[r][t]), code, z[r]); }
    }
    SQUAT_FOR_ROWS(r) {
      float* a = acc[r];
      hn::StoreU(hn::MulAdd(z[r], vfac,
                            hn::MulAdd(hn::LoadU(df, a + c), hn::Set(df, corr[r]),
                                       hn::Set(df, msum[r][g]))),
                 df, a + c);
    }
  }
}

// Largest of x[0 .. n) (n > 0; exact in any order).
template <class DF>
HWY_INLINE float MaxOf(DF df, const float* HWY_RESTRICT x, std::size_t n) {
  const std::size_t N = hn::Lanes(df);
  float m = x[0];
  std::size_t t = 0;
  if (n >= N) {
    auto vm = hn::LoadU(df, x);
    for (t = N; t + N <= n; t += N) vm = hn::Max(vm, hn::LoadU(df, x + t));
    m = hn::GetLane(hn::MaxOfLanes(df, vm));
  }
  for (; t < n; ++t) m = std::max(m, x[t]);
  return m;
}

#endif  // HWY_TARGET != HWY_SCALAR

bool FusedBlockImpl(const FusedBlock& b, const float* const* q, const std::size_t* vis,
                    std::size_t rows, float scale, float* const* part, float* work) {
#if HWY_TARGET == HWY_SCALAR
  (void)b, (void)q, (void)vis, (void)rows, (void)scale, (void)part, (void)work;
  return false;  // one lane: the store's block path is as good
#else
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const std::size_t N = hn::Lanes(df), D = b.d, nb = b.nb, G = b.G;
  const std::size_t kbits = std::size_t(b.kbits), vbits = std::size_t(b.vbits);
  const std::size_t wr = D * kbits / 32;  // 32-bit words per key row
  const bool rope = b.rope_cs != nullptr;
  if (N < 4 || D % N != 0 || G % N != 0 || nb > G || D > kFusedMaxD || D * kbits % 32 != 0 ||
      wr > kFusedMaxWords || (wr & (wr - 1)) != 0 || (rope && b.rope_lanes == nullptr) ||
      (rope && b.neox && (D / 2) % N != 0) || (kbits != 2 && kbits != 4 && kbits != 8)) {
    return false;
  }
  const std::size_t ng = D / G, half = D / 2, krb = D * kbits / 8;
  const std::size_t nbp = (nb + N - 1) / N * N;
  // Key scales with 2^-(position mod 16) folded in (KeyCodes leaves codes at their position).
  HWY_ALIGN float ksc[kFusedMaxD];
  if (N * kbits % 16 == 0) {  // every vector of channels has the same pattern of factors
    HWY_ALIGN float fac[hn::MaxLanes(df)];
    for (std::size_t j = 0; j < N; ++j) fac[j] = kInvPow2[(j * kbits) & 15];
    const auto vfac_k = hn::Load(df, fac);
    for (std::size_t c = 0; c < D; c += N) {
      hn::Store(hn::Mul(hn::LoadU(df, b.kscale + c), vfac_k), df, ksc + c);
    }
  } else {
    for (std::size_t c = 0; c < D; ++c) ksc[c] = b.kscale[c] * kInvPow2[(c * kbits) & 15];
  }
  HWY_ALIGN uint32_t wlo[kFusedMaxWords * hn::MaxLanes(du)];
  HWY_ALIGN uint32_t whi[kFusedMaxWords * hn::MaxLanes(du)];
  HWY_ALIGN uint32_t wtmp[2 * kFusedMaxWords * hn::MaxLanes(du)];
  HWY_ALIGN uint8_t kpad[kFusedMaxWords * 4 * hn::MaxLanes(du)];
  const LaneKeys lk{wlo, whi, ksc, b.kmin, kbits, std::size_t(__builtin_ctz(unsigned(32 / kbits)))};
  // Value code readers.
  ValueCodes vc{N * vbits <= (kUnsignedConvert ? 32 : 16), N * vbits <= 32, b.vbits};
  HWY_ALIGN int32_t idx_v[hn::MaxLanes(df)];
  HWY_ALIGN uint32_t sh_v[hn::MaxLanes(df)], vm_l[hn::MaxLanes(df)];
  HWY_ALIGN float vf_l[hn::MaxLanes(df)];
  for (std::size_t j = 0; j < N; ++j) {  // lane j: byte j*vbits/8, bit (j*vbits) % 8 of it
    idx_v[j] = int32_t(j * vbits / 8);
    sh_v[j] = uint32_t(vc.bcast ? j * vbits : j * vbits % 8);
    vm_l[j] = vc.fast ? ((1u << vbits) - 1u) << (j * vbits) : 0u;
    vf_l[j] = vc.fast ? kInvPow2[j * vbits] : 1.0f;  // fast: j * vbits < 32
  }
  const auto iv = hn::SetTableIndices(du, idx_v);
  const auto shv = hn::Load(du, sh_v), vmask = hn::Load(du, vm_l);
  const auto mv = hn::Set(du, (1u << vbits) - 1u);
  const auto vfac = hn::Load(df, vf_l);
  constexpr std::size_t RM = kFusedPassRows;
  float* s = work;                   // [RM][nbp] logits, then probabilities
  float* pw = s + RM * nbp;          // [RM][ng][maxvis] probability x value scale
  float* msum = pw + RM * ng * nbp;  // [RM][ng] sum of probability x value min
  float* P = msum + RM * ng;         // [RM][D] prepared queries
  for (std::size_t r0 = 0; r0 < rows; r0 += RM) {
    const std::size_t R = std::min(RM, rows - r0);
    std::size_t maxvis = 0;
    for (std::size_t r = 0; r < R; ++r) maxvis = std::max(maxvis, vis[r0 + r]);
    if (maxvis == 0) continue;
    // Prepared queries: pre-RoPE, q' = scale * R_b0^T q (the key pairs get R_j below);
    // post-RoPE, scale * q * key scale, and the min part Kc = scale * q . min.
    float Kc[RM] = {};
    const float* Pr[RM] = {};
    float* sr[RM] = {};
    for (std::size_t r = 0; r < R; ++r) {
      const float* qr = q[r0 + r];
      float* pr = P + r * D;
      Pr[r] = pr;
      sr[r] = s + r * nbp;
      const auto vs = hn::Set(df, scale);
      if (rope && !b.neox) {
        // Compact Normal row: (cos, sin) of pair i at 2i, 2i+1. q'_a = qa c + qb s,
        // q'_b = qb c - qa s.
        for (std::size_t c = 0; c < D; c += N) {
          const auto row = hn::LoadU(df, b.rope_cs + c);
          const auto x = hn::LoadU(df, qr + c), y = hn::Reverse2(df, x);
          const auto sy = hn::OddEven(hn::Neg(y), y);
          hn::StoreU(hn::Mul(hn::MulAdd(x, hn::DupEven(row), hn::Mul(sy, hn::DupOdd(row))), vs), df,
                     pr + c);
        }
      } else if (rope) {
        for (std::size_t i = 0; i < half; i += N) {
          const auto C = hn::LoadU(df, b.rope_cs + i), S = hn::LoadU(df, b.rope_cs + half + i);
          const auto xa = hn::LoadU(df, qr + i), xb = hn::LoadU(df, qr + half + i);
          hn::StoreU(hn::Mul(hn::MulAdd(xa, C, hn::Mul(xb, S)), vs), df, pr + i);
          hn::StoreU(hn::Mul(hn::NegMulAdd(xa, S, hn::Mul(xb, C)), vs), df, pr + half + i);
        }
      } else {
        auto km = hn::Zero(df);
        for (std::size_t c = 0; c < D; c += N) {
          const auto x = hn::Mul(hn::LoadU(df, qr + c), vs);
          km = hn::MulAdd(x, hn::LoadU(df, b.kmin + c), km);
          hn::StoreU(hn::Mul(x, hn::Load(df, ksc + c)), df, pr + c);
        }
        Kc[r] = hn::GetLane(hn::SumOfLanes(df, km));
      }
    }
    // Logits, N tokens at a time in token lanes.
    for (std::size_t j0 = 0; j0 < maxvis; j0 += N) {
      const uint8_t* krows = b.kcodes + j0 * krb;
      if (j0 + N > nb) {  // a partial last vector of tokens: zero rows past the block
        std::memset(kpad, 0, N * krb);
        std::memcpy(kpad, krows, (nb - j0) * krb);
        krows = kpad;
      }
      TransposeWords(du, krows, wr, wlo, whi, wtmp);
      WithRows(R, [&](auto rc) { KeyLogits<decltype(rc)::value>(df, lk, b, j0, Pr, Kc, sr); });
    }
    // Online softmax per row; probabilities folded with the value groups' scale and min.
    float corr[RM];
    std::fill(corr, corr + RM, 1.0f);
    const float* wr_[RM] = {};
    const float* ms_[RM] = {};
    float* acc[RM] = {};
    for (std::size_t r = 0; r < R; ++r) {
      float* srow = sr[r];
      const std::size_t v = vis[r0 + r];
      float* p = part[r0 + r];
      acc[r] = p + 2;
      if (v > 0) {
        float bmax = MaxOf(df, srow, v);
        const float m_new = std::max(p[0], bmax);
        corr[r] = std::exp(p[0] - m_new);  // 0 when the max was -inf
        const float psum = ExpSumImpl(srow, v, m_new);
        p[1] = p[1] * corr[r] + psum;
        p[0] = m_new;
      }
      for (std::size_t t = v; t < maxvis; ++t) srow[t] = 0.0f;
      float* wrow = pw + r * ng * maxvis;
      for (std::size_t g = 0; g < ng; ++g) {
        // w = p * scale of the group, and sum_t p * min (vector sums, then the lanes).
        const float* gs = b.vscale + g * nb;
        const float* gm = b.vmin + g * nb;
        float* w = wrow + g * maxvis;
        auto vms = hn::Zero(df);
        std::size_t t = 0;
        for (; t + N <= maxvis; t += N) {
          const auto pv = hn::LoadU(df, srow + t);
          hn::StoreU(hn::Mul(pv, hn::LoadU(df, gs + t)), df, w + t);
          vms = hn::MulAdd(pv, hn::LoadU(df, gm + t), vms);
        }
        float ms = hn::GetLane(hn::SumOfLanes(df, vms));
        for (; t < maxvis; ++t) {
          w[t] = srow[t] * gs[t];
          ms += srow[t] * gm[t];
        }
        msum[r * ng + g] = ms;
      }
      wr_[r] = wrow;
      ms_[r] = msum + r * ng;
    }
    WithRows(R, [&](auto rc) {
      ValueSums<decltype(rc)::value>(df, b, vc, maxvis, wr_, ms_, acc, corr, vmask, shv, mv, iv,
                                     vfac);
    });
  }
  return true;
#endif
}
#undef SQUAT_FOR_ROWS

// An accumulator's starting value: o * corr (Rescale), or o as it is (no multiply by 1).
template <bool Rescale, class DF>
HWY_INLINE hn::Vec<DF> Start(DF df, const float* o, hn::Vec<DF> corr) {
  if constexpr (Rescale) return hn::Mul(hn::LoadU(df, o), corr);
  (void)corr;
  return hn::LoadU(df, o);
}

// o_r = o_r * corr_r + sum_t w_r[t] * v[t * ldv ..] for R <= 4 rows (rows past R repeat
// row R - 1 and are not stored), per channel vector in token order, the rows sharing each value
// load. Rescale: per row exactly AccumulateImpl's arithmetic (the decode path's); otherwise
// (corr ignored) o_r += w v in token order, kernels::axpy's (the per-query prompt loop's): the
// scalar tails of the two are written differently, and the compiler may fuse them differently.
template <bool Rescale, class DF>
HWY_INLINE void AccumulateRows(DF df, std::size_t R, const float* const* w, const float* corr,
                               float* const* o, const float* HWY_RESTRICT v, std::size_t ldv,
                               std::size_t tmax, std::size_t D) {
  const std::size_t N = hn::Lanes(df);
  const auto c0 = hn::Set(df, Rescale ? corr[0] : 1.0f), c1 = hn::Set(df, Rescale ? corr[1] : 1.0f);
  const auto c2 = hn::Set(df, Rescale ? corr[2] : 1.0f), c3 = hn::Set(df, Rescale ? corr[3] : 1.0f);
  std::size_t c = 0;
  for (; c + 2 * N <= D; c += 2 * N) {
    auto a00 = Start<Rescale>(df, o[0] + c, c0), a01 = Start<Rescale>(df, o[0] + c + N, c0);
    auto a10 = Start<Rescale>(df, o[1] + c, c1), a11 = Start<Rescale>(df, o[1] + c + N, c1);
    auto a20 = Start<Rescale>(df, o[2] + c, c2), a21 = Start<Rescale>(df, o[2] + c + N, c2);
    auto a30 = Start<Rescale>(df, o[3] + c, c3), a31 = Start<Rescale>(df, o[3] + c + N, c3);
    for (std::size_t t = 0; t < tmax; ++t) {
      const float* vr = v + t * ldv + c;
      const auto v0 = hn::LoadU(df, vr), v1 = hn::LoadU(df, vr + N);
      const auto w0 = hn::Set(df, w[0][t]), w1 = hn::Set(df, w[1][t]);
      const auto w2 = hn::Set(df, w[2][t]), w3 = hn::Set(df, w[3][t]);
      a00 = hn::MulAdd(w0, v0, a00);
      a01 = hn::MulAdd(w0, v1, a01);
      a10 = hn::MulAdd(w1, v0, a10);
      a11 = hn::MulAdd(w1, v1, a11);
      a20 = hn::MulAdd(w2, v0, a20);
      a21 = hn::MulAdd(w2, v1, a21);
      a30 = hn::MulAdd(w3, v0, a30);
      a31 = hn::MulAdd(w3, v1, a31);
    }
    hn::StoreU(a00, df, o[0] + c);
    hn::StoreU(a01, df, o[0] + c + N);
    if (R > 1) hn::StoreU(a10, df, o[1] + c), hn::StoreU(a11, df, o[1] + c + N);
    if (R > 2) hn::StoreU(a20, df, o[2] + c), hn::StoreU(a21, df, o[2] + c + N);
    if (R > 3) hn::StoreU(a30, df, o[3] + c), hn::StoreU(a31, df, o[3] + c + N);
  }
  for (; c + N <= D; c += N) {
    auto a0 = Start<Rescale>(df, o[0] + c, c0), a1 = Start<Rescale>(df, o[1] + c, c1);
    auto a2 = Start<Rescale>(df, o[2] + c, c2), a3 = Start<Rescale>(df, o[3] + c, c3);
    for (std::size_t t = 0; t < tmax; ++t) {
      const auto v0 = hn::LoadU(df, v + t * ldv + c);
      a0 = hn::MulAdd(hn::Set(df, w[0][t]), v0, a0);
      a1 = hn::MulAdd(hn::Set(df, w[1][t]), v0, a1);
      a2 = hn::MulAdd(hn::Set(df, w[2][t]), v0, a2);
      a3 = hn::MulAdd(hn::Set(df, w[3][t]), v0, a3);
    }
    hn::StoreU(a0, df, o[0] + c);
    if (R > 1) hn::StoreU(a1, df, o[1] + c);
    if (R > 2) hn::StoreU(a2, df, o[2] + c);
    if (R > 3) hn::StoreU(a3, df, o[3] + c);
  }
  for (; c < D; ++c) {  // channels past the last whole vector
    for (std::size_t r = 0; r < R; ++r) {
      if constexpr (Rescale) {  // as AccumulateImpl's tail
        float a = o[r][c] * corr[r];
        for (std::size_t t = 0; t < tmax; ++t) a += w[r][t] * v[t * ldv + c];
        o[r][c] = a;
      } else {  // as kernels::axpy's tail
        for (std::size_t t = 0; t < tmax; ++t) o[r][c] += w[r][t] * v[t * ldv + c];
      }
    }
  }
}

// One flash-attention tile: up to 4 query rows at a time share each key and value load. Per
// row the arithmetic is exactly the decode path's (block_logits' Dot, exp_sum, accumulate), so
// a prompt attending through the store gets the same bits as its tokens fed one at a time.
void FlashTileImpl(const float* HWY_RESTRICT qs, std::size_t rows, const std::size_t* vis,
                   const float* HWY_RESTRICT k, std::size_t ldk, const float* HWY_RESTRICT v,
                   std::size_t ldv, std::size_t nb, std::size_t D, float scale, float* part,
                   std::size_t pstride, float* work) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  float* HWY_RESTRICT S = work;              // [rows][nb] logits, then probabilities
  float* HWY_RESTRICT corr = S + rows * nb;  // [rows] rescale of the old accumulator
  for (std::size_t r0 = 0; r0 < rows; r0 += 4) {
    // A last group of fewer than 4 rows repeats its last row (computed, not stored).
    const std::size_t R = std::min<std::size_t>(4, rows - r0);
    std::size_t tmax = 0;
    for (std::size_t r = r0; r < r0 + R; ++r) tmax = std::max(tmax, std::min(vis[r], nb));
    const std::size_t i1 = r0 + std::min<std::size_t>(1, R - 1);
    const std::size_t i2 = r0 + std::min<std::size_t>(2, R - 1);
    const std::size_t i3 = r0 + std::min<std::size_t>(3, R - 1);
    const float* q0 = qs + r0 * D;
    const float* q1 = qs + i1 * D;
    const float* q2 = qs + i2 * D;
    const float* q3 = qs + i3 * D;
    float* s0 = S + r0 * nb;
    float* s1 = S + i1 * nb;
    float* s2 = S + i2 * nb;
    float* s3 = S + i3 * nb;
    // Logits, Dot's order per row: two accumulators over pairs of vectors, then the lanes.
    for (std::size_t t = 0; t < tmax; ++t) {
      const float* kr = k + t * ldk;
      auto a0 = hn::Zero(df), b0 = hn::Zero(df), a1 = hn::Zero(df), b1 = hn::Zero(df);
      auto a2 = hn::Zero(df), b2 = hn::Zero(df), a3 = hn::Zero(df), b3 = hn::Zero(df);
      std::size_t i = 0;
      for (; i + 2 * N <= D; i += 2 * N) {
        const auto k0 = hn::LoadU(df, kr + i), k1 = hn::LoadU(df, kr + i + N);
        a0 = hn::MulAdd(hn::LoadU(df, q0 + i), k0, a0);
        b0 = hn::MulAdd(hn::LoadU(df, q0 + i + N), k1, b0);
        a1 = hn::MulAdd(hn::LoadU(df, q1 + i), k0, a1);
        b1 = hn::MulAdd(hn::LoadU(df, q1 + i + N), k1, b1);
        a2 = hn::MulAdd(hn::LoadU(df, q2 + i), k0, a2);
        b2 = hn::MulAdd(hn::LoadU(df, q2 + i + N), k1, b2);
        a3 = hn::MulAdd(hn::LoadU(df, q3 + i), k0, a3);
        b3 = hn::MulAdd(hn::LoadU(df, q3 + i + N), k1, b3);
      }
      for (; i + N <= D; i += N) {
        const auto k0 = hn::LoadU(df, kr + i);
        a0 = hn::MulAdd(hn::LoadU(df, q0 + i), k0, a0);
        a1 = hn::MulAdd(hn::LoadU(df, q1 + i), k0, a1);
        a2 = hn::MulAdd(hn::LoadU(df, q2 + i), k0, a2);
        a3 = hn::MulAdd(hn::LoadU(df, q3 + i), k0, a3);
      }
      float d0 = hn::GetLane(hn::SumOfLanes(df, hn::Add(a0, b0)));
      float d1 = hn::GetLane(hn::SumOfLanes(df, hn::Add(a1, b1)));
      float d2 = hn::GetLane(hn::SumOfLanes(df, hn::Add(a2, b2)));
      float d3 = hn::GetLane(hn::SumOfLanes(df, hn::Add(a3, b3)));
      for (; i < D; ++i) {
        d0 += q0[i] * kr[i];
        d1 += q1[i] * kr[i];
        d2 += q2[i] * kr[i];
        d3 += q3[i] * kr[i];
      }
      s0[t] = d0 * scale;
      if (R > 1) s1[t] = d1 * scale;
      if (R > 2) s2[t] = d2 * scale;
      if (R > 3) s3[t] = d3 * scale;
    }
    // Online softmax per row over its visible prefix; probabilities past it are 0, which
    // leaves the value sums below exactly as the decode path's.
    for (std::size_t r = r0; r < r0 + R; ++r) {
      float* s = S + r * nb;
      float* p = part + r * pstride;
      const std::size_t vr = std::min(vis[r], nb);
      corr[r] = 1.0f;
      if (vr > 0) {
        float bmax = s[0];
        for (std::size_t t = 1; t < vr; ++t) bmax = std::max(bmax, s[t]);
        const float m_new = std::max(p[0], bmax);
        corr[r] = std::exp(p[0] - m_new);  // 0 when the old max was -inf
        const float psum = ExpSumImpl(s, vr, m_new);
        p[1] = softmax_sum_update(p[1], corr[r], psum);
        p[0] = m_new;
      }
      for (std::size_t t = vr; t < tmax; ++t) s[t] = 0.0f;
    }
    // Values: acc * corr + sum_t p[t] v[t], per channel vector, rows sharing each load.
    const float* w[4] = {s0, s1, s2, s3};
    float* o[4] = {part + r0 * pstride + 2, part + i1 * pstride + 2, part + i2 * pstride + 2,
                   part + i3 * pstride + 2};
    const float cr[4] = {corr[r0], corr[i1], corr[i2], corr[i3]};
    AccumulateRows<true>(df, R, w, cr, o, v, ldv, tmax, D);
  }
}

// Logits of up to 4 rows (q0..q3) against one key in kernels::dot's order (four accumulators,
// then the lanes), so the prompt tiles reproduce the per-query prompt attention's bits.
template <class DF>
HWY_INLINE void Dot4x1(DF df, const float* q0, const float* q1, const float* q2, const float* q3,
                       const float* kr, std::size_t D, float* out) {
  const std::size_t N = hn::Lanes(df);
  const float* q[4] = {q0, q1, q2, q3};
  for (int r = 0; r < 4; ++r) {
    auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
    std::size_t i = 0;
    for (; i + 4 * N <= D; i += 4 * N) {
      s0 = hn::MulAdd(hn::LoadU(df, q[r] + i), hn::LoadU(df, kr + i), s0);
      s1 = hn::MulAdd(hn::LoadU(df, q[r] + i + N), hn::LoadU(df, kr + i + N), s1);
      s2 = hn::MulAdd(hn::LoadU(df, q[r] + i + 2 * N), hn::LoadU(df, kr + i + 2 * N), s2);
      s3 = hn::MulAdd(hn::LoadU(df, q[r] + i + 3 * N), hn::LoadU(df, kr + i + 3 * N), s3);
    }
    for (; i + N <= D; i += N) s0 = hn::MulAdd(hn::LoadU(df, q[r] + i), hn::LoadU(df, kr + i), s0);
    float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
    for (; i < D; ++i) sum += q[r][i] * kr[i];
    out[r] = sum;
  }
}

// Prompt attention tile, two passes over the keys (see simd.h): pass 0 raises each row's max,
// pass 1 adds exp(logit - max) to the row's sum and acc (no rescaling: the max is final).
void PromptTileImpl(const float* HWY_RESTRICT qs, std::size_t rows, const std::size_t* vis,
                    const float* HWY_RESTRICT k, std::size_t ldk, const float* HWY_RESTRICT v,
                    std::size_t ldv, std::size_t nb, std::size_t D, float scale, int pass,
                    float* part, std::size_t pstride, float* work) {
  const hn::ScalableTag<float> df;
  float* HWY_RESTRICT S = work;  // [4][nb]
  for (std::size_t r0 = 0; r0 < rows; r0 += 4) {
    const std::size_t R = std::min<std::size_t>(4, rows - r0);
    std::size_t tmax = 0;
    for (std::size_t r = r0; r < r0 + R; ++r) tmax = std::max(tmax, std::min(vis[r], nb));
    if (tmax == 0) continue;
    const std::size_t i1 = r0 + std::min<std::size_t>(1, R - 1);
    const std::size_t i2 = r0 + std::min<std::size_t>(2, R - 1);
    const std::size_t i3 = r0 + std::min<std::size_t>(3, R - 1);
    const float* q0 = qs + r0 * D;
    const float* q1 = qs + i1 * D;
    const float* q2 = qs + i2 * D;
    const float* q3 = qs + i3 * D;
    for (std::size_t t = 0; t < tmax; ++t) {
      float d4[4];
      Dot4x1(df, q0, q1, q2, q3, k + t * ldk, D, d4);
      for (std::size_t r = 0; r < 4; ++r) S[r * nb + t] = d4[r] * scale;
    }
    for (std::size_t r = 0; r < R; ++r) {
      float* s = S + r * nb;
      float* p = part + (r0 + r) * pstride;
      const std::size_t vr = std::min(vis[r0 + r], nb);
      if (pass == 0) {
        for (std::size_t t = 0; t < vr; ++t) p[0] = std::max(p[0], s[t]);
        continue;
      }
      for (std::size_t t = 0; t < vr; ++t) {
        s[t] = std::exp(s[t] - p[0]);
        p[1] += s[t];
      }
      for (std::size_t t = vr; t < tmax; ++t) s[t] = 0.0f;
    }
    if (pass == 0) continue;
    // Values: acc += w v per channel vector in token order (as kernels::axpy), rows sharing
    // each load; a zero weight adds exactly nothing.
    const float* w[4] = {S, S + std::min<std::size_t>(1, R - 1) * nb,
                         S + std::min<std::size_t>(2, R - 1) * nb,
                         S + std::min<std::size_t>(3, R - 1) * nb};
    float* o[4] = {part + r0 * pstride + 2, part + i1 * pstride + 2, part + i2 * pstride + 2,
                   part + i3 * pstride + 2};
    AccumulateRows<false>(df, R, w, nullptr, o, v, ldv, tmax, D);
  }
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
HWY_EXPORT(FusedBlockImpl);
HWY_EXPORT(FlashTileImpl);
HWY_EXPORT(PromptTileImpl);

std::size_t fused_work_floats(std::size_t nb, std::size_t d, std::size_t G) {
  const std::size_t ng = d / G;
  const std::size_t nbp = (nb + 63) / 64 * 64;  // tokens rounded up to any target's lanes
  return kFusedPassRows * (nbp + ng * nbp + ng + d);
}

void rope_lane_table(const float* inv_freq, std::size_t half, std::size_t G, float* out) {
  for (std::size_t i = 0; i < half; ++i) {
    for (std::size_t j = 0; j < G; ++j) {
      rope_cos_sin((long long)j, inv_freq + i, 1, out + i * 2 * G + j, out + i * 2 * G + G + j);
    }
  }
}

bool fused_block(const FusedBlock& b, const float* const* q, const std::size_t* vis,
                 std::size_t rows, float scale, float* const* part, float* work) {
  return HWY_DYNAMIC_DISPATCH(FusedBlockImpl)(b, q, vis, rows, scale, part, work);
}

void fused_block_reference(const FusedBlock& b, const float* const* q, const std::size_t* vis,
                           std::size_t rows, float scale, float* const* part) {
  const std::size_t D = b.d;
  const auto code = [](const uint8_t* row, std::size_t c, int bits) {
    const std::size_t bit = c * std::size_t(bits);
    return float((row[bit / 8] >> (bit % 8)) & ((1u << bits) - 1u));
  };
  std::vector<float> k(b.nb * D), v(b.nb * D), s(b.nb);
  for (std::size_t t = 0; t < b.nb; ++t) {
    float* kt = k.data() + t * D;
    for (std::size_t c = 0; c < D; ++c) {
      kt[c] =
          code(b.kcodes + t * D * std::size_t(b.kbits) / 8, c, b.kbits) * b.kscale[c] + b.kmin[c];
      v[t * D + c] = code(b.vcodes + t * D * std::size_t(b.vbits) / 8, c, b.vbits) *
                         b.vscale[c / b.G * b.nb + t] +
                     b.vmin[c / b.G * b.nb + t];
    }
    if (b.rope_cs) {
      // Pair i = (a, b) rotated by its angle: a' = a cos - b sin, b' = a sin + b cos
      // (compact rows: RopeTable::cs_row).
      const float* CS = b.rope_cs + t * D;
      const std::size_t h = D / 2;
      for (std::size_t i = 0; i < h; ++i) {
        const std::size_t ia = b.neox ? i : 2 * i, ib = b.neox ? i + h : 2 * i + 1;
        const float cv = b.neox ? CS[i] : CS[2 * i], sv = b.neox ? CS[h + i] : CS[2 * i + 1];
        const float xa = kt[ia], xb = kt[ib];
        kt[ia] = xa * cv - xb * sv;
        kt[ib] = xa * sv + xb * cv;
      }
    }
  }
  for (std::size_t r = 0; r < rows; ++r) {
    if (vis[r] == 0) continue;
    float* p = part[r];
    float bmax = -std::numeric_limits<float>::infinity();
    for (std::size_t t = 0; t < vis[r]; ++t) {
      float dot = 0.0f;
      for (std::size_t c = 0; c < D; ++c) dot += q[r][c] * k[t * D + c];
      s[t] = dot * scale;
      bmax = std::max(bmax, s[t]);
    }
    const float m_new = std::max(p[0], bmax), corr = std::exp(p[0] - m_new);
    float psum = 0.0f;
    for (std::size_t c = 0; c < D; ++c) p[2 + c] *= corr;
    for (std::size_t t = 0; t < vis[r]; ++t) {
      const float e = std::exp(s[t] - m_new);
      psum += e;
      for (std::size_t c = 0; c < D; ++c) p[2 + c] += e * v[t * D + c];
    }
    p[1] = p[1] * corr + psum;
    p[0] = m_new;
  }
}

std::size_t flash_work_floats(std::size_t rows, std::size_t nb, std::size_t /*d*/) {
  return rows * nb + rows;
}

void flash_tile(const float* qs, std::size_t rows, const std::size_t* vis, const float* k,
                std::size_t ldk, const float* v, std::size_t ldv, std::size_t nb, std::size_t d,
                float scale, float* part, std::size_t pstride, float* work) {
  HWY_DYNAMIC_DISPATCH(FlashTileImpl)
  (qs, rows, vis, k, ldk, v, ldv, nb, d, scale, part, pstride, work);
}

void prompt_tile(const float* qs, std::size_t rows, const std::size_t* vis, const float* k,
                 std::size_t ldk, const float* v, std::size_t ldv, std::size_t nb, std::size_t d,
                 float scale, int pass, float* part, std::size_t pstride, float* work) {
  HWY_DYNAMIC_DISPATCH(PromptTileImpl)
  (qs, rows, vis, k, ldk, v, ldv, nb, d, scale, pass, part, pstride, work);
}

void flash_tile_reference(const float* qs, std::size_t rows, const std::size_t* vis, const float* k,
                          std::size_t ldk, const float* v, std::size_t ldv, std::size_t nb,
                          std::size_t d, float scale, float* part, std::size_t pstride) {
  std::vector<double> s(nb);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t vr = std::min(vis[r], nb);
    if (vr == 0) continue;
    float* p = part + r * pstride;
    double bmax = -std::numeric_limits<double>::infinity();
    for (std::size_t t = 0; t < vr; ++t) {
      double dot = 0.0;
      for (std::size_t c = 0; c < d; ++c) dot += double(qs[r * d + c]) * double(k[t * ldk + c]);
      s[t] = dot * double(scale);
      bmax = std::max(bmax, s[t]);
    }
    const double m_new = std::max(double(p[0]), bmax);
    const double corr = std::exp(double(p[0]) - m_new);
    double psum = 0.0;
    for (std::size_t c = 0; c < d; ++c) {
      double a = double(p[2 + c]) * corr;
      for (std::size_t t = 0; t < vr; ++t) a += std::exp(s[t] - m_new) * double(v[t * ldv + c]);
      p[2 + c] = float(a);
    }
    for (std::size_t t = 0; t < vr; ++t) psum += std::exp(s[t] - m_new);
    p[1] = float(double(p[1]) * corr + psum);
    p[0] = float(m_new);
  }
}

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
