#include "kernels/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/fp16.h"
#include "kernels/dequant.h"
#include "kernels/matmul_simd.h"
#include "kernels/weight_kernels.h"

namespace squat::kernels {

namespace {

using gguf::TensorType;

constexpr std::size_t kQ8Block = 32;
// Rows per dequantized tile on the generic path (reused by every x row).
constexpr std::size_t kDequantTileRows = 16;

void check_view(const WeightView& w) {
  const gguf::TypeTraits* t = gguf::type_traits(uint32_t(w.type));
  if (!t || !dequant_supported(w.type)) {
    fail("matrix multiply: tensor type {} ({}) is not supported", t ? t->name : "unknown",
         uint32_t(w.type));
  }
  if (w.cols % t->block_size != 0 || w.row_bytes < gguf::row_bytes(w.type, w.cols)) {
    fail("matrix multiply: {} x {} {} matrix with row stride {} bytes is malformed", w.rows, w.cols,
         t->name, w.row_bytes);
  }
  if (w.type == TensorType::F32 && w.row_bytes % sizeof(float) != 0) {
    fail("matrix multiply: F32 row stride {} is not a multiple of 4", w.row_bytes);
  }
}

template <typename T>
T* grow(AlignedBuffer<T>& buffer, std::size_t count) {
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// Per-thread scratch, sized once and reused: pool threads live as long as the pool.
thread_local AlignedBuffer<float> t_scratch;
// The calling thread's quantized activations (shared read-only with the workers of one call).
thread_local AlignedBuffer<int8_t> t_xq;
thread_local AlignedBuffer<float> t_xscale;

// Split rows over threads in multiples of a tile; small matrices stay on one thread.
std::size_t row_grain(const WeightView& w, std::size_t n) {
  const std::size_t work_per_row = w.cols * std::max<std::size_t>(n, 1);
  const std::size_t min_rows =
      std::max<std::size_t>(16, (1u << 16) / std::max<std::size_t>(work_per_row, 1));
  return (min_rows + 15) / 16 * 16;
}

struct Call {
  const WeightView* w;
  const float* x;
  std::size_t n;
  float* y;
  detail::Q8Rows xq;
};

void run_rows(const Call& c, std::size_t r0, std::size_t r1) {
  const WeightView& w = *c.w;
  switch (cpu_traits(w.type).kernel) {
    case RowKernel::kQ4_0:
    case RowKernel::kQ4_1:
    case RowKernel::kQ4_K:
    case RowKernel::kQ6_K:
    case RowKernel::kQ8_0: {
      float* scratch =
          grow(t_scratch, detail::q8_rows_scratch_floats(c.xq.nb, c.xq.nbp, c.xq.cols));
      detail::q8_rows(w.type, w.data, w.row_bytes, r0, r1, c.xq, c.n, c.y, w.rows, scratch);
      return;
    }
    case RowKernel::kF32:
      detail::float_rows(reinterpret_cast<const float*>(w.data + r0 * w.row_bytes),
                         w.row_bytes / sizeof(float), r1 - r0, c.x, c.n, w.cols, c.y + r0, w.rows);
      return;
    case RowKernel::kF16:
      if (c.n == 1) {
        detail::f16_rows_vec(w.data, w.row_bytes, r0, r1, c.x, w.cols, c.y);
        return;
      }
      break;
    case RowKernel::kDequantTiles:
      break;
  }
  // Generic: dequantize a tile of rows once, then multiply it with every x row.
  float* tile = grow(t_scratch, kDequantTileRows * w.cols);
  for (std::size_t r = r0; r < r1; r += kDequantTileRows) {
    const std::size_t nr = std::min(kDequantTileRows, r1 - r);
    for (std::size_t k = 0; k < nr; ++k) {
      const uint8_t* src = w.data + (r + k) * w.row_bytes;
      if (w.type == TensorType::F16) {
        detail::f16_to_f32(src, tile + k * w.cols, w.cols);
      } else {
        detail::dequantize_row_fast(w.type, src, tile + k * w.cols, w.cols);
      }
    }
    detail::float_rows(tile, w.cols, nr, c.x, c.n, w.cols, c.y + r, w.rows);
  }
}

void run(const WeightView& w, const float* x, std::size_t n, float* y, ThreadPool& pool) {
  static const bool guarded = (detail::guard_simd_targets(), true);
  (void)guarded;
  check_view(w);
  if (n == 0 || w.rows == 0) return;
  Call call{&w, x, n, y, {}};
  if (uses_q8_activations(w.type)) {
    const std::size_t nb = w.cols / kQ8Block, nbp = detail::padded_blocks(nb);
    int8_t* q = grow(t_xq, n * w.cols);
    float* scales = grow(t_xscale, n * (nb + nbp));
    float* sums = scales + n * nb;
    call.xq = {q, scales, sums, w.cols, nb, nbp};
    const auto quantize = [&](std::size_t i0, std::size_t i1, int) {
      for (std::size_t i = i0; i < i1; ++i) {
        quantize_activations_q8(x + i * w.cols, w.cols, q + i * w.cols, scales + i * nb,
                                sums + i * nbp);
        std::fill(sums + i * nbp + nb, sums + (i + 1) * nbp, 0.0f);
      }
    };
    if (n >= 8) {
      pool.parallel_for(n, quantize, 4);
    } else {
      quantize(0, n, 0);
    }
  }
  const Call& ctx = call;
  pool.parallel_for(
      w.rows, [&ctx](std::size_t r0, std::size_t r1, int) { run_rows(ctx, r0, r1); },
      row_grain(w, n));
}

// Scalar decoding of 32-element block b of a weight row on the quantized fast paths, as
// x = d*q + m.
void q8_block(TensorType type, const uint8_t* row, std::size_t b, int q[32], float& d, float& m) {
  uint16_t h;
  if (type == TensorType::Q4_K) {
    // Super-block b/8: d, dmin, 12 bytes of 6-bit scales/mins, 128 nibble bytes; sub-block
    // s = b%8 is nibble s%2 of bytes 32*(s/2) .. +32 (dequant.cpp spells out the packing).
    const uint8_t* sb = row + (b / 8) * gguf::kQ4_KBlockBytes;
    const int s = int(b % 8);
    std::memcpy(&h, sb, 2);
    const float dsuper = fp16_to_float(h);
    std::memcpy(&h, sb + 2, 2);
    const float dmin = fp16_to_float(h);
    const uint8_t* sc = sb + 4;
    int scale, min;
    if (s < 4) {
      scale = sc[s] & 63;
      min = sc[s + 4] & 63;
    } else {
      scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
      min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
    d = dsuper * float(scale);
    m = -(dmin * float(min));
    const uint8_t* qs = sb + 16 + 32 * (s / 2);
    for (int j = 0; j < 32; ++j) q[j] = s % 2 ? qs[j] >> 4 : qs[j] & 0x0f;
    return;
  }
  const uint8_t* blk = row + b * gguf::traits(type).block_bytes;
  std::memcpy(&h, blk, 2);
  d = fp16_to_float(h);
  if (type == TensorType::Q8_0) {
    m = 0.0f;
    for (int j = 0; j < 32; ++j) q[j] = int8_t(blk[2 + j]);
    return;
  }
  const uint8_t* qs = blk + 2;
  if (type == TensorType::Q4_1) {
    std::memcpy(&h, blk + 2, 2);
    m = fp16_to_float(h);
    qs = blk + 4;
  } else {  // Q4_0: d*(q - 8) = d*q + (-8d)
    m = -8.0f * d;
  }
  for (int j = 0; j < 16; ++j) {
    q[j] = qs[j] & 0x0f;
    q[j + 16] = qs[j] >> 4;
  }
}

// Q6_K block b (32 elements) against quantized x: sum over its two 16-element halves of
// d * scale * sum((q - 32) * x_q), q = low/high nibble of ql | 2 bits of qh << 4 (layout in
// dequant-inl.h).
double q6_k_block_dot(const uint8_t* row, std::size_t b, const int8_t* xq) {
  const uint8_t* sb = row + (b / 8) * gguf::kQ6_KBlockBytes;
  const int h = int(b % 8) / 4, k = int(b % 4);
  const uint8_t* ql = sb + 64 * h + 32 * (k & 1);
  const uint8_t* qh = sb + 128 + 32 * h;
  const auto* sc = reinterpret_cast<const int8_t*>(sb + 192 + 8 * h + 2 * k);
  uint16_t half;
  std::memcpy(&half, sb + 208, 2);
  const double d = fp16_to_float(half);
  double total = 0.0;
  for (int g = 0; g < 2; ++g) {
    long part = 0;
    for (int j = 16 * g; j < 16 * g + 16; ++j) {
      const int q = ((k >= 2 ? ql[j] >> 4 : ql[j]) & 0x0f) | ((qh[j] >> (2 * k)) & 3) << 4;
      part += long(q - 32) * xq[j];
    }
    total += d * double(sc[g]) * double(part);
  }
  return total;
}

}  // namespace

bool uses_q8_activations(TensorType type) { return cpu_traits(type).q8_activations; }

void quantize_activations_q8(const float* x, std::size_t n, int8_t* q, float* d, float* s) {
  detail::quantize_q8(x, n, q, d, s);
}

void quantize_activations_q8_ref(const float* x, std::size_t n, int8_t* q, float* d, float* s) {
  for (std::size_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    for (std::size_t j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    int sum = 0;
    for (std::size_t j = 0; j < kQ8Block; ++j) {
      // Clamp first (NaN goes to 127); adding and subtracting 1.5 * 2^23 rounds to the
      // nearest integer, ties to even, like nearbyint, and vectorises.
      float v = xb[j] * inv;
      v = v <= 127.0f ? v : 127.0f;
      v = v >= -127.0f ? v : -127.0f;
      const int r = int((v + 12582912.0f) - 12582912.0f);
      q[b * kQ8Block + j] = int8_t(r);
      sum += r;
    }
    d[b] = scale;
    s[b] = scale * float(sum);
  }
}

void matvec(const WeightView& w, const float* x, float* y, ThreadPool& pool) {
  run(w, x, 1, y, pool);
}

void matmul(const WeightView& w, const float* x, std::size_t n, float* y, ThreadPool& pool) {
  run(w, x, n, y, pool);
}

void matmul_ref(const WeightView& w, const float* x, std::size_t n, float* y) {
  check_view(w);
  std::vector<float> row(w.cols);
  for (std::size_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.data + r * w.row_bytes, row.data(), w.cols);
    for (std::size_t i = 0; i < n; ++i) {
      double sum = 0.0;
      for (std::size_t k = 0; k < w.cols; ++k) sum += double(row[k]) * double(x[i * w.cols + k]);
      y[i * w.rows + r] = float(sum);
    }
  }
}

void matvec_ref(const WeightView& w, const float* x, float* y) { matmul_ref(w, x, 1, y); }

void matmul_q8_ref(const WeightView& w, const float* x, std::size_t n, float* y) {
  if (!uses_q8_activations(w.type)) return matmul_ref(w, x, n, y);
  check_view(w);
  const std::size_t nb = w.cols / kQ8Block;
  std::vector<int8_t> q(w.cols);
  std::vector<float> d(nb), s(nb);
  for (std::size_t i = 0; i < n; ++i) {
    quantize_activations_q8_ref(x + i * w.cols, w.cols, q.data(), d.data(), s.data());
    for (std::size_t r = 0; r < w.rows; ++r) {
      double sum = 0.0;
      for (std::size_t b = 0; b < nb; ++b) {
        if (w.type == TensorType::Q6_K) {
          sum += q6_k_block_dot(w.data + r * w.row_bytes, b, q.data() + b * kQ8Block) * d[b];
          continue;
        }
        int qw[32];
        float dw, mw;
        q8_block(w.type, w.data + r * w.row_bytes, b, qw, dw, mw);
        long isum = 0;
        for (std::size_t j = 0; j < kQ8Block; ++j) isum += long(qw[j]) * q[b * kQ8Block + j];
        sum += double(dw) * double(d[b]) * double(isum) + double(mw) * double(s[b]);
      }
      y[i * w.rows + r] = float(sum);
    }
  }
}

void matvec_q8_ref(const WeightView& w, const float* x, float* y) { matmul_q8_ref(w, x, 1, y); }

}  // namespace squat::kernels
