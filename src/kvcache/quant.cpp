// Group quantization, bit packing and whole-chunk (KIVI) quantization.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/fp16.h"
#include "kvcache/internal.h"
#include "squat/kv_quant.h"

namespace squat::kv {
namespace {

uint16_t fp16_next_down(uint16_t h) {
  if (h == 0x0000u || h == 0x8000u) return 0x8001u;
  return (h & 0x8000u) ? uint16_t(h + 1) : uint16_t(h - 1);
}
uint16_t fp16_next_up(uint16_t h) {
  if (h == 0x0000u || h == 0x8000u) return 0x0001u;
  return (h & 0x8000u) ? uint16_t(h - 1) : uint16_t(h + 1);
}

// Largest fp16 value <= x / smallest fp16 value >= x.
float fp16_floor(float x) {
  uint16_t h = float_to_fp16(x);
  return fp16_to_float(h) <= x ? fp16_to_float(h) : fp16_to_float(fp16_next_down(h));
}
float fp16_ceil(float x) {
  uint16_t h = float_to_fp16(x);
  return fp16_to_float(h) >= x ? fp16_to_float(h) : fp16_to_float(fp16_next_up(h));
}

}  // namespace

float round_param(float x, ParamType p) {
  return p == ParamType::F16 ? fp16_to_float(float_to_fp16(x)) : x;
}

namespace {

// Stored scale and min of a group with range [mn, mx] (SQUAT.md §1; see kv_quant.h for fp16).
void group_params(float mn, float mx, int bits, ParamType p, float* scale_out, float* min_out) {
  const int levels = (1 << bits) - 1;
  float scale = (mx - mn) / float(levels);
  float m = mn;
  if (p == ParamType::F16) {
    if (!std::isfinite(mn) || !std::isfinite(mx)) {
      fail("KV cache quantization: non-finite value in the input ({} .. {})", mn, mx);
    }
    if (!(std::fabs(mn) <= 65504.0f && std::fabs(mx) <= 65504.0f && scale <= 65504.0f)) {
      fail("KV cache quantization: value {} outside the fp16 range of the scale/min",
           std::fabs(mn) > std::fabs(mx) ? mn : mx);
    }
    if (scale == 0.0f) {
      m = round_param(mn, p);
    } else {
      // Stored grid must still cover [mn, mx]: min rounded down, scale rounded up.
      m = fp16_floor(mn);
      scale = fp16_ceil((mx - m) / float(levels));
    }
  }
  *scale_out = scale;
  *min_out = m;
}

// Code of x on the stored grid: clamp, then round half to even by adding and subtracting 2^23
// (exact for 0 <= y < 2^23 in the default rounding mode; same as nearbyint, vectorizable).
// NaN input maps to code 0 (never an out-of-range float-to-integer conversion).
inline uint8_t code_of(float x, float scale, float m, float levels) {
  float y = (x - m) / scale;
  y = y > 0.0f ? (y < levels ? y : levels) : 0.0f;
  return uint8_t((y + 8388608.0f) - 8388608.0f);
}

}  // namespace

void quantize_group(const float* x, std::size_t n, std::size_t stride, int bits, ParamType p,
                    uint8_t* codes, float* scale_out, float* min_out) {
  float mn = x[0], mx = x[0];
  for (std::size_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i * stride]);
    mx = std::max(mx, x[i * stride]);
  }
  float scale, m;
  group_params(mn, mx, bits, p, &scale, &m);
  *scale_out = scale;
  *min_out = m;
  if (scale == 0.0f) {
    std::fill(codes, codes + n, uint8_t(0));
    return;
  }
  const float fl = float((1 << bits) - 1);
  for (std::size_t i = 0; i < n; ++i) codes[i] = code_of(x[i * stride], scale, m, fl);
}

void pack_codes(const uint8_t* codes, std::size_t n, int bits, uint8_t* out) {
  const std::size_t nb = packed_bytes(n, bits);
  std::fill(out, out + nb, uint8_t(0));
  if (bits == 8) {
    std::copy(codes, codes + n, out);
    return;
  }
  // Code i occupies bits [i*bits, (i+1)*bits) of the stream, low bits first; a width that does
  // not divide 8 (3 bits) lets a code straddle two bytes.
  const unsigned mask = (1u << bits) - 1u;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t bit = i * std::size_t(bits);
    const unsigned v = (codes[i] & mask) << (bit % 8);
    out[bit / 8] = uint8_t(out[bit / 8] | (v & 0xFFu));
    if (bit % 8 + std::size_t(bits) > 8) out[bit / 8 + 1] = uint8_t(out[bit / 8 + 1] | (v >> 8));
  }
}

void unpack_codes(const uint8_t* packed, std::size_t n, int bits, uint8_t* codes) {
  if (bits == 8) {
    std::copy(packed, packed + n, codes);
    return;
  }
  const unsigned mask = (1u << bits) - 1u;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t bit = i * std::size_t(bits);
    unsigned v = packed[bit / 8];
    if (bit % 8 + std::size_t(bits) > 8) v |= unsigned(packed[bit / 8 + 1]) << 8;
    codes[i] = uint8_t((v >> (bit % 8)) & mask);
  }
}

uint8_t QuantizedChunk::code(std::size_t t, std::size_t c) const {
  const uint8_t* base;
  std::size_t index;
  if (layout == GroupLayout::PerChannel) {
    base = codes.data() + t * packed_bytes(d, bits);
    index = c;
  } else {
    const std::size_t group = t * (d / std::size_t(group_size)) + c / std::size_t(group_size);
    base = codes.data() + group * group_bytes();
    index = c % std::size_t(group_size);
  }
  const std::size_t bit = index * std::size_t(bits);
  const uint8_t byte = base[bit / 8];
  if (bits == 8) return byte;
  return uint8_t((byte >> (bit % 8)) & ((1u << bits) - 1u));
}

void check_chunk_params(std::size_t n, std::size_t d, int bits, int group_size,
                        GroupLayout layout) {
  if (bits != 2 && bits != 4 && bits != 8) fail_usage("bits must be 2, 4 or 8, got {}", bits);
  if (group_size <= 0) fail_usage("group size must be positive, got {}", group_size);
  if (d == 0) fail_usage("head_dim must be positive");
  if (layout == GroupLayout::PerChannel && n % std::size_t(group_size) != 0) {
    fail_usage("per-channel quantization needs a multiple of group size {} tokens, got {}",
               group_size, n);
  }
  if (layout == GroupLayout::PerToken && d % std::size_t(group_size) != 0) {
    fail_usage("per-token quantization needs head_dim {} divisible by group size {}", d,
               group_size);
  }
}

namespace detail {

void init_chunk(QuantizedChunk& q, std::size_t n, std::size_t d, int bits, int group_size,
                GroupLayout layout, ParamType p) {
  q.n = n;
  q.d = d;
  q.bits = bits;
  q.group_size = group_size;
  q.layout = layout;
  q.param_type = p;
  // assign keeps the capacity: no allocation when the chunk is reused for the same shape.
  q.codes.assign(q.codes_bytes(), 0);
  q.scale.assign(q.n_groups(), 0.0f);
  q.min.assign(q.n_groups(), 0.0f);
}

void QuantScratch::reserve(std::size_t n, std::size_t d) {
  const auto grow = [](auto& v, std::size_t k) {
    if (v.size() < k) v.resize(k);
  };
  grow(raw, std::max(n, d));
  for (auto* v : {&mn, &mx, &sc, &mi, &safe}) grow(*v, d);
  grow(target, n * d);
  grow(err, n * d);
}

void quantize_columns(const float* x, std::size_t ld, std::size_t c0, std::size_t c1,
                      QuantizedChunk& q, float* xhat, std::size_t ldh, QuantScratch& scratch) {
  const std::size_t G = std::size_t(q.group_size), w = c1 - c0;
  const float levels = float((1 << q.bits) - 1);
  scratch.reserve(0, std::max(G, w));
  std::vector<uint8_t>& raw = scratch.raw;
  if (q.layout == GroupLayout::PerChannel) {
    // Vectorized across channels: min/max, params, then codes row by row, OR-packed into the
    // token rows (bits of neighbouring column blocks may share a byte).
    std::vector<float>&mn = scratch.mn, &mx = scratch.mx, &sc = scratch.sc, &mi = scratch.mi,
    &safe = scratch.safe;
    const std::size_t rb = packed_bytes(q.d, q.bits);
    for (std::size_t tg = 0; tg < q.n / G; ++tg) {
      const float* xg = x + tg * G * ld + c0;
      std::copy(xg, xg + w, mn.begin());
      std::copy(xg, xg + w, mx.begin());
      for (std::size_t i = 1; i < G; ++i) {
        const float* row = xg + i * ld;
        for (std::size_t c = 0; c < w; ++c) {
          mn[c] = std::min(mn[c], row[c]);
          mx[c] = std::max(mx[c], row[c]);
        }
      }
      for (std::size_t c = 0; c < w; ++c) {
        const std::size_t g = tg * q.d + c0 + c;
        group_params(mn[c], mx[c], q.bits, q.param_type, &q.scale[g], &q.min[g]);
        sc[c] = q.scale[g];
        mi[c] = q.min[g];
        safe[c] = sc[c] == 0.0f ? 1.0f : sc[c];
      }
      for (std::size_t i = 0; i < G; ++i) {
        const std::size_t t = tg * G + i;
        const float* row = xg + i * ld;
        for (std::size_t c = 0; c < w; ++c) {
          raw[c] = sc[c] == 0.0f ? uint8_t(0) : code_of(row[c], safe[c], mi[c], levels);
        }
        uint8_t* dst = q.codes.data() + t * rb;
        if (q.bits == 8) {
          std::copy(raw.begin(), raw.begin() + std::ptrdiff_t(w), dst + c0);
        } else {
          for (std::size_t c = 0; c < w; ++c) {
            const std::size_t bit = (c0 + c) * std::size_t(q.bits);
            dst[bit / 8] = uint8_t(dst[bit / 8] | (raw[c] << (bit % 8)));
          }
        }
        if (xhat) {
          float* h = xhat + t * ldh;
          for (std::size_t c = 0; c < w; ++c) h[c] = float(raw[c]) * sc[c] + mi[c];
        }
      }
    }
  } else {
    const std::size_t groups_per_row = q.d / G;
    for (std::size_t t = 0; t < q.n; ++t) {
      for (std::size_t c = c0; c < c1; c += G) {
        const std::size_t g = t * groups_per_row + c / G;
        quantize_group(x + t * ld + c, G, 1, q.bits, q.param_type, raw.data(), &q.scale[g],
                       &q.min[g]);
        pack_codes(raw.data(), G, q.bits, q.codes.data() + g * q.group_bytes());
        if (xhat) {
          for (std::size_t i = 0; i < G; ++i) {
            xhat[t * ldh + (c - c0) + i] = float(raw[i]) * q.scale[g] + q.min[g];
          }
        }
      }
    }
  }
}

}  // namespace detail

QuantizedChunk quantize_chunk(const float* x, std::size_t n, std::size_t d, int bits,
                              int group_size, GroupLayout layout, ParamType p) {
  check_chunk_params(n, d, bits, group_size, layout);
  QuantizedChunk q;
  detail::QuantScratch scratch;
  detail::quantize_chunk_into(x, n, d, bits, group_size, layout, p, nullptr, q, scratch);
  return q;
}

void dequantize_chunk(const QuantizedChunk& q, float* out) {
  const std::size_t G = std::size_t(q.group_size);
  for (std::size_t t = 0; t < q.n; ++t) {
    for (std::size_t c = 0; c < q.d; ++c) {
      const std::size_t g =
          q.layout == GroupLayout::PerChannel ? (t / G) * q.d + c : t * (q.d / G) + c / G;
      out[t * q.d + c] = float(q.code(t, c)) * q.scale[g] + q.min[g];
    }
  }
}

}  // namespace squat::kv
