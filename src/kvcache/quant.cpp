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

void quantize_group(const float* x, std::size_t n, std::size_t stride, int bits, ParamType p,
                    uint8_t* codes, float* scale_out, float* min_out) {
  float mn = x[0], mx = x[0];
  for (std::size_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i * stride]);
    mx = std::max(mx, x[i * stride]);
  }
  const int levels = (1 << bits) - 1;
  float scale = (mx - mn) / float(levels);
  float m = mn;
  if (p == ParamType::F16) {
    if (!(std::fabs(mn) <= 65504.0f && std::fabs(mx) <= 65504.0f && scale <= 65504.0f)) {
      fail("value {} outside the fp16 range of the quantization scale/min",
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
  if (scale == 0.0f) {
    std::fill(codes, codes + n, uint8_t(0));
    return;
  }
  const float fl = float(levels);
  for (std::size_t i = 0; i < n; ++i) {
    float c = std::nearbyint((x[i * stride] - m) / scale);
    c = std::clamp(c, 0.0f, fl);
    codes[i] = uint8_t(c);
  }
}

void pack_codes(const uint8_t* codes, std::size_t n, int bits, uint8_t* out) {
  const std::size_t nb = packed_bytes(n, bits);
  std::fill(out, out + nb, uint8_t(0));
  if (bits == 8) {
    std::copy(codes, codes + n, out);
    return;
  }
  const unsigned mask = (1u << bits) - 1u;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t bit = i * std::size_t(bits);
    out[bit / 8] = uint8_t(out[bit / 8] | ((codes[i] & mask) << (bit % 8)));
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
    codes[i] = uint8_t((packed[bit / 8] >> (bit % 8)) & mask);
  }
}

uint8_t QuantizedChunk::code(std::size_t t, std::size_t c) const {
  std::size_t group, index;
  if (layout == GroupLayout::PerChannel) {
    group = (t / std::size_t(group_size)) * d + c;
    index = t % std::size_t(group_size);
  } else {
    group = t * (d / std::size_t(group_size)) + c / std::size_t(group_size);
    index = c % std::size_t(group_size);
  }
  const std::size_t bit = index * std::size_t(bits);
  const uint8_t byte = codes[group * group_bytes() + bit / 8];
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
  q.codes.assign(q.n_groups() * q.group_bytes(), 0);
  q.scale.assign(q.n_groups(), 0.0f);
  q.min.assign(q.n_groups(), 0.0f);
}

void quantize_columns(const float* x, std::size_t ld, std::size_t c0, std::size_t c1,
                      QuantizedChunk& q, float* xhat, std::size_t ldh) {
  const std::size_t G = std::size_t(q.group_size);
  uint8_t codes[256];
  std::vector<uint8_t> big;
  uint8_t* cbuf = codes;
  if (G > sizeof codes) {
    big.resize(G);
    cbuf = big.data();
  }
  if (q.layout == GroupLayout::PerChannel) {
    for (std::size_t tg = 0; tg < q.n / G; ++tg) {
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t g = tg * q.d + c;
        quantize_group(x + tg * G * ld + c, G, ld, q.bits, q.param_type, cbuf, &q.scale[g],
                       &q.min[g]);
        pack_codes(cbuf, G, q.bits, q.codes.data() + g * q.group_bytes());
        if (xhat) {
          for (std::size_t i = 0; i < G; ++i) {
            xhat[(tg * G + i) * ldh + (c - c0)] = float(cbuf[i]) * q.scale[g] + q.min[g];
          }
        }
      }
    }
  } else {
    const std::size_t groups_per_row = q.d / G;
    for (std::size_t t = 0; t < q.n; ++t) {
      for (std::size_t c = c0; c < c1; c += G) {
        const std::size_t g = t * groups_per_row + c / G;
        quantize_group(x + t * ld + c, G, 1, q.bits, q.param_type, cbuf, &q.scale[g], &q.min[g]);
        pack_codes(cbuf, G, q.bits, q.codes.data() + g * q.group_bytes());
        if (xhat) {
          for (std::size_t i = 0; i < G; ++i) {
            xhat[t * ldh + (c - c0) + i] = float(cbuf[i]) * q.scale[g] + q.min[g];
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
  detail::init_chunk(q, n, d, bits, group_size, layout, p);
  detail::quantize_columns(x, d, 0, d, q, nullptr, 0);
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
