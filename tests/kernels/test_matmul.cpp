// matvec/matmul fast paths against their scalar references on random and edge inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/matmul_simd.h"
#include "simd_targets.h"

namespace squat::kernels {
namespace {

using gguf::TensorType;

// Saturating: every code at its largest (all bits set) and x at +-127 after quantization, the
// bound of the int16 sums in the int8 paths.
enum class Fill { Random, Zero, Large, Saturating };

// Byte offsets of the fp16 scale fields of one block (the rest of a block is any bit pattern).
std::vector<std::size_t> scale_offsets(TensorType type) {
  switch (type) {
    case TensorType::Q4_1:
    case TensorType::Q5_1:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
      return {0, 2};
    case TensorType::Q6_K:
      return {208};
    default:
      return {0};
  }
}

struct Matrix {
  std::vector<uint8_t> bytes;
  WeightView view;
};

Matrix make_weights(TensorType type, std::size_t rows, std::size_t cols, std::size_t pad, Fill fill,
                    std::mt19937& rng) {
  const gguf::TypeTraits& t = gguf::traits(type);
  const std::size_t row_bytes = gguf::row_bytes(type, cols) + pad;
  Matrix m;
  m.bytes.resize(rows * row_bytes + 1);
  std::uniform_int_distribution<int> byte(0, 255);
  const float scale = fill == Fill::Large ? 50.0f : 0.05f;
  std::uniform_real_distribution<float> uni(-scale, scale);
  std::normal_distribution<float> normal(0.0f, fill == Fill::Large ? 1000.0f : 1.0f);
  for (auto& b : m.bytes) {
    b = fill == Fill::Zero ? 0 : fill == Fill::Saturating ? 0xff : uint8_t(byte(rng));
  }
  if (fill != Fill::Zero) {
    for (std::size_t r = 0; r < rows; ++r) {
      uint8_t* row = m.bytes.data() + r * row_bytes;
      for (std::size_t k = 0; k < cols / t.block_size; ++k) {
        uint8_t* block = row + k * t.block_bytes;
        if (type == TensorType::F32) {
          const float v = normal(rng);
          std::memcpy(block, &v, 4);
        } else if (type == TensorType::F16 || type == TensorType::BF16) {
          const float v = normal(rng);
          const uint16_t h = type == TensorType::F16 ? float_to_fp16(v) : float_to_bf16(v);
          std::memcpy(block, &h, 2);
        } else {
          for (std::size_t off : scale_offsets(type)) {
            const uint16_t h = float_to_fp16(uni(rng));
            std::memcpy(block + off, &h, 2);
          }
        }
      }
    }
  }
  m.view = {type, m.bytes.data(), rows, cols, row_bytes};
  return m;
}

std::vector<float> make_x(std::size_t n, std::size_t cols, Fill fill, std::mt19937& rng) {
  std::vector<float> x(n * cols, 0.0f);
  if (fill == Fill::Zero) return x;
  if (fill == Fill::Saturating) {  // one sign per row: every block quantizes to +-127
    for (std::size_t i = 0; i < n; ++i)
      std::fill(x.begin() + long(i * cols), x.begin() + long((i + 1) * cols), i % 2 ? -3.0f : 3.0f);
    return x;
  }
  std::normal_distribution<float> normal(0.0f, fill == Fill::Large ? 1e4f : 1.0f);
  for (auto& v : x) v = normal(rng);
  // Some blocks of exact zeros and one outlier per row, as real activations have.
  for (std::size_t i = 0; i < n; ++i) {
    if (cols >= 64)
      std::fill(x.begin() + long(i * cols + 32), x.begin() + long(i * cols + 64), 0.0f);
    x[i * cols + (i * 7) % cols] *= 30.0f;
  }
  return x;
}

// Offset m_b of a 32-element block as x = d*q + m on the quantized paths: Q4_1's m, Q4_0's
// -8d, Q4_K's -dmin * min (6-bit mins: bytes 4..7 low bits for sub-blocks 0..3, else the high
// nibble of bytes 8..11 plus bits 6..7 of bytes 4..7), 0 otherwise.
float block_min(const WeightView& w, std::size_t r, std::size_t b) {
  uint16_t h;
  if (w.type == TensorType::Q4_K) {
    const uint8_t* sb = w.data + r * w.row_bytes + (b / 8) * 144;
    const std::size_t s = b % 8;
    std::memcpy(&h, sb + 2, 2);
    const uint8_t* sc = sb + 4;
    const int min = s < 4 ? sc[s + 4] & 63 : (sc[s + 4] >> 4) | (sc[s] >> 6) << 4;
    return -fp16_to_float(h) * float(min);
  }
  if (w.type == TensorType::Q4_1) {
    std::memcpy(&h, w.data + r * w.row_bytes + b * 20 + 2, 2);
    return fp16_to_float(h);
  }
  if (w.type == TensorType::Q4_0) {
    std::memcpy(&h, w.data + r * w.row_bytes + b * 18, 2);
    return -8.0f * fp16_to_float(h);
  }
  return 0.0f;
}

// Compares matmul (and matvec when n == 1) with the references, with error bounds:
//  - float rounding: a float sum of cols products is within cols * 2^-23 of the sum of
//    magnitudes (a loose form of the standard gamma_n bound);
//  - 8-bit activations: |x - q*d| <= d/2 = amax/254 per element of a block.
void check(TensorType type, std::size_t rows, std::size_t cols, std::size_t n, int threads,
           Fill wfill, Fill xfill, std::size_t pad, std::mt19937& rng) {
  SCOPED_TRACE(::testing::Message()
               << gguf::traits(type).name << " rows=" << rows << " cols=" << cols << " n=" << n
               << " threads=" << threads << " pad=" << pad << " wfill=" << int(wfill)
               << " xfill=" << int(xfill));
  const Matrix m = make_weights(type, rows, cols, pad, wfill, rng);
  const WeightView& w = m.view;
  const std::vector<float> x = make_x(n, cols, xfill, rng);
  ThreadPool pool(threads);
  std::vector<float> fast(n * rows, NAN), ref(n * rows, NAN), q8(n * rows, NAN);
  matmul(w, x.data(), n, fast.data(), pool);
  matmul_ref(w, x.data(), n, ref.data());
  matmul_q8_ref(w, x.data(), n, q8.data());
  if (n == 1) {
    std::vector<float> vec(rows, NAN);
    matvec(w, x.data(), vec.data(), pool);
    ASSERT_EQ(vec, fast);
    std::vector<float> vref(rows, NAN);
    matvec_ref(w, x.data(), vref.data());
    ASSERT_EQ(vref, ref);
  }
  const bool quant = uses_q8_activations(type);
  std::vector<float> row(cols);
  const double rounding = double(cols) * 1.2e-7 + 1e-6;
  for (std::size_t r = 0; r < rows; ++r) {
    dequantize_row(type, w.data + r * w.row_bytes, row.data(), cols);
    for (std::size_t i = 0; i < n; ++i) {
      const float* xi = x.data() + i * cols;
      double magnitude = 0.0, quant_error = 0.0;
      for (std::size_t b = 0; b * 32 < cols || b == 0; ++b) {
        const std::size_t j0 = b * 32, j1 = std::min(cols, j0 + 32);
        double amax = 0.0;
        for (std::size_t j = j0; j < j1; ++j) amax = std::max(amax, double(std::fabs(xi[j])));
        const double mb = std::fabs(block_min(w, r, b));
        for (std::size_t j = j0; j < j1; ++j) {
          const double wj = std::fabs(row[j]);
          magnitude += (wj + 2 * mb) * (std::fabs(xi[j]) + amax / 127.0);
          quant_error += wj * amax / 254.0;
        }
        if (j1 == cols) break;
      }
      const std::size_t k = i * rows + r;
      const double tol = rounding * magnitude + 1e-30;
      if (quant) {
        ASSERT_NEAR(fast[k], q8[k], tol) << "r=" << r << " i=" << i;
        ASSERT_NEAR(fast[k], ref[k], quant_error * 1.001 + tol) << "r=" << r << " i=" << i;
      } else {
        ASSERT_EQ(q8[k], ref[k]);
        ASSERT_NEAR(fast[k], ref[k], tol) << "r=" << r << " i=" << i;
      }
      if (wfill == Fill::Zero || xfill == Fill::Zero) {
        ASSERT_EQ(fast[k], 0.0f);
      }
    }
  }
}

class MatmulTypes : public ::testing::TestWithParam<TensorType> {};

std::vector<std::size_t> cols_for(TensorType type) {
  const std::size_t bs = gguf::traits(type).block_size;
  if (bs == 256) return {256, 768};
  if (bs == 32) return {32, 96, 576};
  return {1, 7, 33, 576};
}

TEST_P(MatmulTypes, MatchesReferencesOnRandomShapes) {
  const TensorType type = GetParam();
  std::mt19937 rng(1234 + unsigned(type));
  for_each_simd_target([&] {
    for (std::size_t cols : cols_for(type)) {
      for (std::size_t rows : {1, 3, 4, 5, 17, 50}) {
        for (std::size_t n : {1, 2, 3, 4, 5, 9, 17}) {
          for (int threads : {1, 3}) {
            check(type, rows, cols, n, threads, Fill::Random, Fill::Random, 0, rng);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  });
}

TEST_P(MatmulTypes, EdgeInputs) {
  const TensorType type = GetParam();
  std::mt19937 rng(99 + unsigned(type));
  const std::size_t cols = cols_for(type).back();
  for_each_simd_target([&] {
    for (int threads : {1, 2}) {
      check(type, 7, cols, 1, threads, Fill::Zero, Fill::Random, 0, rng);
      check(type, 7, cols, 3, threads, Fill::Random, Fill::Zero, 0, rng);
      check(type, 9, cols, 5, threads, Fill::Large, Fill::Large, 0, rng);
      check(type, 9, cols, 1, threads, Fill::Large, Fill::Random, 0, rng);
      check(type, 6, cols, 2, threads, Fill::Random, Fill::Random, 24, rng);  // padded rows
      if (HasFatalFailure()) return;
    }
  });
}

TEST_P(MatmulTypes, LargeBatchAndManyRows) {
  const TensorType type = GetParam();
  std::mt19937 rng(7 + unsigned(type));
  const std::size_t cols = cols_for(type).back();
  for_each_simd_target([&] {
    check(type, 9, cols, 130, 3, Fill::Random, Fill::Random, 0, rng);
    check(type, 301, cols, 1, 2, Fill::Random, Fill::Random, 0, rng);
    if (uses_q8_activations(type)) check(type, 5, cols, 513, 2, Fill::Random, Fill::Random, 0, rng);
  });
}

// Prompt-sized products (8 or more x rows): the 8-row interleaved GEMM of Q4_0, Q4_1, Q4_K and
// Q6_K, with weight rows that are not a multiple of 8 (the rest goes the per-row way), slices
// of x rows split between threads, and the int16 bounds of its sums.
TEST_P(MatmulTypes, PromptShapes) {
  const TensorType type = GetParam();
  if (!uses_q8_activations(type)) GTEST_SKIP() << "float path";
  std::mt19937 rng(31 + unsigned(type));
  for_each_simd_target([&] {
    for (std::size_t cols : cols_for(type)) {
      for (std::size_t rows : {8, 16, 23, 41}) {
        for (std::size_t n : {8, 11, 33}) {
          for (int threads : {1, 2, 3}) {
            check(type, rows, cols, n, threads, Fill::Random, Fill::Random, 0, rng);
            if (HasFatalFailure()) return;
          }
        }
      }
      check(type, 16, cols, 12, 2, Fill::Saturating, Fill::Saturating, 0, rng);
      check(type, 16, cols, 9, 2, Fill::Large, Fill::Large, 0, rng);
      check(type, 16, cols, 9, 1, Fill::Zero, Fill::Random, 0, rng);
      check(type, 16, cols, 9, 1, Fill::Random, Fill::Zero, 0, rng);
      check(type, 24, cols, 10, 2, Fill::Random, Fill::Random, 40, rng);  // padded rows
      if (HasFatalFailure()) return;
    }
    // Wide rows: x is swept in slices (q8_x_chunk rows for 1536 columns is 168).
    check(type, 16, 1536, 200, 2, Fill::Random, Fill::Random, 0, rng);
  });
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes,
                         ::testing::Values(TensorType::F32, TensorType::F16, TensorType::BF16,
                                           TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1,
                                           TensorType::Q5_0, TensorType::Q5_1, TensorType::Q4_K,
                                           TensorType::Q5_K, TensorType::Q6_K),
                         [](const auto& info) {
                           return std::string(gguf::traits(info.param).name);
                         });

TEST(Matmul, WorkedExampleF32) {
  const float w[4] = {1, 2, 3, 4};
  const float x[4] = {1, 1, 0.5f, -1};
  const WeightView view{TensorType::F32, reinterpret_cast<const uint8_t*>(w), 2, 2, 8};
  ThreadPool pool(2);
  float y[4];
  matmul(view, x, 2, y, pool);
  EXPECT_EQ(y[0], 3.0f);   // row 0 . x0
  EXPECT_EQ(y[1], 7.0f);   // row 1 . x0
  EXPECT_EQ(y[2], -1.5f);  // row 0 . x1
  EXPECT_EQ(y[3], -2.5f);  // row 1 . x1
}

// x = 127 everywhere quantizes exactly (d = 1, q = 127), so every path gives the exact value.
TEST(Matmul, WorkedExampleQ4_1) {
  std::vector<uint8_t> block(20);
  const uint16_t d = float_to_fp16(0.5f), m = float_to_fp16(-2.0f);
  std::memcpy(block.data(), &d, 2);
  std::memcpy(block.data() + 2, &m, 2);
  for (int j = 0; j < 16; ++j) block[4 + j] = uint8_t(j | (15 - j) << 4);
  // Weights 0.5*q - 2 with q covering 0..15 twice: sum = 0.5*240 - 64 = 56.
  const WeightView view{TensorType::Q4_1, block.data(), 1, 32, 20};
  const std::vector<float> x(32, 127.0f);
  ThreadPool pool(1);
  float fast = 0, ref = 0, q8 = 0;
  matvec(view, x.data(), &fast, pool);
  matvec_ref(view, x.data(), &ref);
  matvec_q8_ref(view, x.data(), &q8);
  EXPECT_EQ(ref, 56.0f * 127.0f);
  EXPECT_EQ(q8, 56.0f * 127.0f);
  EXPECT_EQ(fast, 56.0f * 127.0f);
}

// Q4_0 weights 0.5 * (q - 8), q covering 0..15 twice: sum = 0.5 * (240 - 256) = -8.
TEST(Matmul, WorkedExampleQ4_0) {
  std::vector<uint8_t> block(18);
  const uint16_t d = float_to_fp16(0.5f);
  std::memcpy(block.data(), &d, 2);
  for (int j = 0; j < 16; ++j) block[2 + j] = uint8_t(j | (15 - j) << 4);
  const WeightView view{TensorType::Q4_0, block.data(), 1, 32, 18};
  const std::vector<float> x(32, 127.0f);
  ThreadPool pool(1);
  float fast = 0, ref = 0, q8 = 0;
  matvec(view, x.data(), &fast, pool);
  matvec_ref(view, x.data(), &ref);
  matvec_q8_ref(view, x.data(), &q8);
  EXPECT_EQ(ref, -8.0f * 127.0f);
  EXPECT_EQ(q8, -8.0f * 127.0f);
  EXPECT_EQ(fast, -8.0f * 127.0f);
}

TEST(Matmul, QuantizeActivations) {
  std::vector<float> x(64, 0.0f);
  x[0] = 127.0f, x[1] = -63.5f, x[2] = 0.5f, x[3] = 1.5f, x[4] = 2.5f, x[5] = -0.4f;
  std::vector<int8_t> q(64);
  float d[2], s[2];
  quantize_activations_q8_ref(x.data(), 64, q.data(), d, s);
  EXPECT_EQ(d[0], 1.0f);
  // Ties go to even: -63.5 -> -64, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
  EXPECT_EQ(std::vector<int>(q.begin(), q.begin() + 7),
            (std::vector<int>{127, -64, 0, 2, 2, 0, 0}));
  EXPECT_EQ(s[0], 67.0f);
  EXPECT_EQ(d[1], 0.0f);  // all-zero block
  EXPECT_EQ(s[1], 0.0f);
  for (int j = 32; j < 64; ++j) EXPECT_EQ(q[j], 0);
}

TEST(Matmul, QuantizeActivationsSimdIsBitIdentical) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::size_t n = 32 * 40;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  for (int j = 0; j < 32; ++j) x[j] = float(j) - 15.5f;  // block 0: amax 16.5, many ties
  for (int j = 0; j < 32; ++j) x[32 + j] = float(2 * j - 31) * 2.0f;
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);
  for (int j = 0; j < 32; ++j) x[96 + j] *= 1e30f;
  for (int j = 0; j < 32; ++j) x[128 + j] *= 1e-30f;
  x[160] = 1e4f;  // one outlier: the rest of its block rounds to 0
  for_each_simd_target([&] {
    std::vector<int8_t> q(n, 99), q_ref(n, -99);
    std::vector<float> d(n / 32, NAN), s(n / 32, NAN), d_ref(n / 32), s_ref(n / 32);
    quantize_activations_q8(x.data(), n, q.data(), d.data(), s.data());
    quantize_activations_q8_ref(x.data(), n, q_ref.data(), d_ref.data(), s_ref.data());
    EXPECT_EQ(q, q_ref);
    EXPECT_EQ(d, d_ref);
    EXPECT_EQ(s, s_ref);
  });
}

TEST(Matmul, RejectsMalformedViews) {
  std::vector<uint8_t> bytes(64);
  std::vector<float> x(64), y(2);
  ThreadPool pool(1);
  EXPECT_THROW(matvec({TensorType::Q4_1, bytes.data(), 1, 40, 40}, x.data(), y.data(), pool),
               Error);  // cols not a multiple of 32
  EXPECT_THROW(matvec({TensorType::Q4_1, bytes.data(), 1, 64, 20}, x.data(), y.data(), pool),
               Error);  // stride shorter than a row
  EXPECT_THROW(matvec({TensorType::Q2_K, bytes.data(), 1, 256, 84}, x.data(), y.data(), pool),
               Error);  // unsupported type
}

// The int8 row kernels refuse a weight type they have no block kernel for, on every target
// and on both paths (per-row and, from kR8MinXRows x rows, the prompt GEMM); an unlisted type
// used to run as Q8_0 and return numbers from misread blocks.
TEST(Matmul, Int8RowsRefuseTypesWithoutABlockKernel) {
  const std::size_t cols = 256, nb = cols / 32, nbp = detail::padded_blocks(nb), rows = 8;
  std::vector<uint8_t> w(rows * gguf::row_bytes(TensorType::Q5_K, cols));
  std::vector<int8_t> q(16 * cols);
  std::vector<float> d(16 * nb, 1.0f), s(16 * nbp, 0.0f), y(16 * rows);
  std::vector<float> scratch(detail::q8_rows_scratch_floats(nb, nbp, cols));
  const detail::Q8Rows x{q.data(), d.data(), s.data(), cols, nb, nbp};
  for_each_simd_target([&] {
    for (TensorType type : {TensorType::Q5_K, TensorType::Q5_0, TensorType::F16}) {
      for (std::size_t n : {std::size_t(1), std::size_t(16)}) {
        EXPECT_THROW(detail::q8_rows(type, w.data(), gguf::row_bytes(TensorType::Q5_K, cols), 0,
                                     rows, x, n, y.data(), rows, scratch.data()),
                     Error)
            << gguf::traits(type).name << ", " << n << " x rows";
      }
    }
  });
}

}  // namespace
}  // namespace squat::kernels
