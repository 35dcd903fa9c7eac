// Kernel throughput: weight bytes streamed per second (the decode bound) and, for matmul,
// multiply-adds per second. SmolLM2-135M shapes (hidden 576, ffn 1536, vocab 49152).
// Every fast kernel runs beside the scalar reference it is tested against (the *Ref
// benchmarks): matvec/matmul for every supported weight type, row dequantization, activation
// quantization, and the element-wise ops.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/matmul_simd.h"
#include "kernels/ops.h"
#include "squat/rope.h"

namespace squat::kernels {
namespace {

using gguf::TensorType;

struct Weights {
  AlignedBuffer<uint8_t> bytes;
  WeightView view;
};

// Random weights with finite fp16 scales (layout facts as in the tests).
Weights make_weights(TensorType type, std::size_t rows, std::size_t cols, unsigned seed) {
  const gguf::TypeTraits& t = gguf::traits(type);
  const std::size_t row_bytes = gguf::row_bytes(type, cols);
  Weights w;
  w.bytes.resize(rows * row_bytes);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  for (std::size_t i = 0; i < w.bytes.size(); ++i) w.bytes[i] = uint8_t(byte(rng));
  std::uniform_real_distribution<float> uni(-0.05f, 0.05f);
  const std::size_t blocks = rows * cols / t.block_size;
  for (std::size_t b = 0; b < blocks; ++b) {
    uint8_t* p = w.bytes.data() + b * t.block_bytes;
    const uint16_t h = float_to_fp16(uni(rng));
    if (type == TensorType::F32) {
      const float f = uni(rng);
      std::memcpy(p, &f, 4);
    } else {
      std::memcpy(p, &h, 2);
      // The second fp16 of the block (minimum or dmin) where the type has one.
      if (type == TensorType::Q4_1 || type == TensorType::Q5_1 || type == TensorType::Q4_K ||
          type == TensorType::Q5_K) {
        std::memcpy(p + 2, &h, 2);
      }
      if (type == TensorType::Q6_K) std::memcpy(p + 208, &h, 2);
    }
  }
  w.view = {type, w.bytes.data(), rows, cols, row_bytes};
  return w;
}

std::vector<float> make_x(std::size_t n) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

ThreadPool& pool(int threads) {
  static ThreadPool one(1), two(2);
  return threads == 1 ? one : two;
}

void set_counters(benchmark::State& state, const WeightView& w, std::size_t n) {
  const double bytes = double(w.rows) * double(w.row_bytes);
  state.counters["weight_GB/s"] =
      benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GMAC/s"] = benchmark::Counter(
      double(w.rows) * double(w.cols) * double(n) * double(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

// Args: rows, cols, threads.
template <TensorType kType>
void BM_Matvec(benchmark::State& state) {
  const Weights w =
      make_weights(kType, std::size_t(state.range(0)), std::size_t(state.range(1)), 1);
  const auto x = make_x(w.view.cols);
  std::vector<float> y(w.view.rows);
  ThreadPool& p = pool(int(state.range(2)));
  for (auto _ : state) {
    matvec(w.view, x.data(), y.data(), p);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, w.view, 1);
}

template <TensorType kType>
void BM_MatvecRef(benchmark::State& state) {
  const Weights w =
      make_weights(kType, std::size_t(state.range(0)), std::size_t(state.range(1)), 1);
  const auto x = make_x(w.view.cols);
  std::vector<float> y(w.view.rows);
  for (auto _ : state) {
    matvec_ref(w.view, x.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, w.view, 1);
}

// The reference of the int8-activation path (Q4_0/Q4_1/Q8_0/Q4_K/Q6_K): what the fast kernel
// is tested against bit for bit in its rounding of x.
template <TensorType kType>
void BM_MatvecQ8Ref(benchmark::State& state) {
  const Weights w =
      make_weights(kType, std::size_t(state.range(0)), std::size_t(state.range(1)), 1);
  const auto x = make_x(w.view.cols);
  std::vector<float> y(w.view.rows);
  for (auto _ : state) {
    matvec_q8_ref(w.view, x.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, w.view, 1);
}

// Args: rows, cols, n.
template <TensorType kType>
void BM_MatmulRef(benchmark::State& state) {
  const Weights w =
      make_weights(kType, std::size_t(state.range(0)), std::size_t(state.range(1)), 2);
  const std::size_t n = std::size_t(state.range(2));
  const auto x = make_x(n * w.view.cols);
  std::vector<float> y(n * w.view.rows);
  for (auto _ : state) {
    matmul_ref(w.view, x.data(), n, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, w.view, n);
}

// Args: rows, cols, n, threads.
template <TensorType kType>
void BM_Matmul(benchmark::State& state) {
  const Weights w =
      make_weights(kType, std::size_t(state.range(0)), std::size_t(state.range(1)), 2);
  const std::size_t n = std::size_t(state.range(2));
  const auto x = make_x(n * w.view.cols);
  std::vector<float> y(n * w.view.rows);
  ThreadPool& p = pool(int(state.range(3)));
  for (auto _ : state) {
    matmul(w.view, x.data(), n, y.data(), p);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, w.view, n);
}

// Every projection of SmolLM2-135M's 30 layers, one matvec each: a decode step's weight
// traffic (about 95 MB in Q4_1), so the working set is the model, not one matrix in L2.
template <TensorType kType>
void BM_DecodeLayers(benchmark::State& state) {
  const std::size_t shapes[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                    {1536, 576}, {1536, 576}, {576, 1536}};
  std::vector<Weights> mats;
  for (int layer = 0; layer < 30; ++layer)
    for (const auto& s : shapes)
      mats.push_back(make_weights(kType, s[0], s[1], unsigned(mats.size())));
  const auto x = make_x(1536);
  std::vector<float> y(1536);
  ThreadPool& p = pool(int(state.range(0)));
  double bytes = 0, macs = 0;
  for (const auto& m : mats) {
    bytes += double(m.view.rows * m.view.row_bytes);
    macs += double(m.view.rows * m.view.cols);
  }
  for (auto _ : state) {
    for (const auto& m : mats) matvec(m.view, x.data(), y.data(), p);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["weight_GB/s"] =
      benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GMAC/s"] =
      benchmark::Counter(macs * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
}

// One SmolLM2-135M layer's seven projections for a 512-token prompt (prefill); 30 layers take
// 30x this.
template <TensorType kType>
void BM_PrefillLayer(benchmark::State& state) {
  const std::size_t shapes[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                    {1536, 576}, {1536, 576}, {576, 1536}};
  const std::size_t n = 512;
  std::vector<Weights> mats;
  for (const auto& s : shapes)
    mats.push_back(make_weights(kType, s[0], s[1], unsigned(mats.size())));
  const auto x = make_x(n * 1536);
  std::vector<float> y(n * 1536);
  ThreadPool& p = pool(int(state.range(0)));
  double macs = 0;
  for (const auto& m : mats) macs += double(m.view.rows * m.view.cols * n);
  for (auto _ : state) {
    for (const auto& m : mats) matmul(m.view, x.data(), n, y.data(), p);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GMAC/s"] =
      benchmark::Counter(macs * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  // Prompt tokens per second through all 30 layers' projections.
  state.counters["model_tokens/s"] = benchmark::Counter(
      double(n) * double(state.iterations()) / 30.0, benchmark::Counter::kIsRate);
}

void MatvecShapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (auto [r, c] : {std::pair{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}})
      b->Args({r, c, threads});
  b->UseRealTime();
}

void MatmulShapes(benchmark::internal::Benchmark* b) {
  for (int n : {64, 512})
    for (auto [r, c] : {std::pair{576, 576}, {1536, 576}}) b->Args({r, c, n, 2});
  b->Args({1536, 576, 512, 1});
  b->UseRealTime();
}

BENCHMARK(BM_Matvec<TensorType::Q4_1>)->Apply(MatvecShapes);
BENCHMARK(BM_MatvecRef<TensorType::Q4_1>)
    ->Args({576, 576, 1})
    ->Args({1536, 576, 1})
    ->Args({49152, 576, 1});
BENCHMARK(BM_Matvec<TensorType::Q8_0>)->Apply(MatvecShapes);
BENCHMARK(BM_Matvec<TensorType::F16>)->Apply(MatvecShapes);
BENCHMARK(BM_Matvec<TensorType::F32>)->Args({576, 576, 2})->Args({1536, 576, 2})->UseRealTime();
BENCHMARK(BM_Matvec<TensorType::Q4_K>)->Args({1536, 768, 1})->Args({1536, 768, 2})->UseRealTime();
BENCHMARK(BM_Matvec<TensorType::Q6_K>)->Args({1536, 768, 1})->UseRealTime();
BENCHMARK(BM_Matvec<TensorType::Q4_0>)->Args({1536, 576, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q4_1>)->Apply(MatmulShapes);
BENCHMARK(BM_Matmul<TensorType::Q8_0>)->Apply(MatmulShapes);
BENCHMARK(BM_Matmul<TensorType::F16>)->Apply(MatmulShapes);
// The types above without a benchmark of their own, and every type's scalar reference (one
// shape: the references are what the fast kernels are measured against, not tuned).
BENCHMARK(BM_Matvec<TensorType::BF16>)->Args({1536, 576, 1})->UseRealTime();
BENCHMARK(BM_Matvec<TensorType::Q5_0>)->Args({1536, 576, 1})->UseRealTime();
BENCHMARK(BM_Matvec<TensorType::Q5_1>)->Args({1536, 576, 1})->UseRealTime();
BENCHMARK(BM_Matvec<TensorType::Q5_K>)->Args({1536, 768, 1})->UseRealTime();
BENCHMARK(BM_MatvecRef<TensorType::F32>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::F16>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::BF16>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q8_0>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q4_0>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q5_0>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q5_1>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q4_K>)->Args({1536, 768, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q5_K>)->Args({1536, 768, 1});
BENCHMARK(BM_MatvecRef<TensorType::Q6_K>)->Args({1536, 768, 1});
BENCHMARK(BM_MatvecQ8Ref<TensorType::Q4_0>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecQ8Ref<TensorType::Q4_1>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecQ8Ref<TensorType::Q8_0>)->Args({1536, 576, 1});
BENCHMARK(BM_MatvecQ8Ref<TensorType::Q4_K>)->Args({1536, 768, 1});
BENCHMARK(BM_MatvecQ8Ref<TensorType::Q6_K>)->Args({1536, 768, 1});
// Matmul (prompt batches) for the types above without one; n = 64 on one thread beside the
// reference at the same shape.
BENCHMARK(BM_Matmul<TensorType::F32>)->Args({1536, 576, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::BF16>)->Args({1536, 576, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q4_0>)->Args({1536, 576, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q5_0>)->Args({1536, 576, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q5_1>)->Args({1536, 576, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q4_K>)->Args({1536, 768, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q5_K>)->Args({1536, 768, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q6_K>)->Args({1536, 768, 64, 1})->UseRealTime();
BENCHMARK(BM_Matmul<TensorType::Q4_1>)->Args({1536, 576, 64, 1})->UseRealTime();
BENCHMARK(BM_MatmulRef<TensorType::F32>)->Args({1536, 576, 64});
BENCHMARK(BM_MatmulRef<TensorType::F16>)->Args({1536, 576, 64});
BENCHMARK(BM_MatmulRef<TensorType::Q4_1>)->Args({1536, 576, 64});
BENCHMARK(BM_MatmulRef<TensorType::Q8_0>)->Args({1536, 576, 64});
BENCHMARK(BM_MatmulRef<TensorType::Q4_K>)->Args({1536, 768, 64});
BENCHMARK(BM_MatmulRef<TensorType::Q6_K>)->Args({1536, 768, 64});

BENCHMARK(BM_DecodeLayers<TensorType::Q4_1>)->Arg(1)->Arg(2)->UseRealTime();
BENCHMARK(BM_PrefillLayer<TensorType::Q4_1>)->Arg(1)->Arg(2)->UseRealTime();

void BM_Softmax(benchmark::State& state) {
  auto x = make_x(std::size_t(state.range(0)));
  for (auto _ : state) {
    softmax(x.data(), x.size());
    benchmark::DoNotOptimize(x.data());
  }
}
BENCHMARK(BM_Softmax)->Arg(4096);

void BM_Swiglu(benchmark::State& state) {
  const auto g = make_x(1536), u = make_x(1536);
  std::vector<float> out(1536);
  for (auto _ : state) {
    swiglu(g.data(), u.data(), out.data(), 1536);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Swiglu);

// Row dequantization: the SIMD build of the block decoders (the generic matvec/matmul path)
// beside the scalar dequantize_row it is tested against. Arg: the type; one 49152 x 576 matrix
// worth of rows would not fit in cache, so 64 rows of 768 (a multiple of every block size).
template <bool kFast>
void BM_DequantRows(benchmark::State& state) {
  const auto type = TensorType(state.range(0));
  const Weights w = make_weights(type, 64, 768, 3);
  std::vector<float> out(64 * 768);
  for (auto _ : state) {
    for (std::size_t r = 0; r < 64; ++r) {
      const uint8_t* src = w.view.data + r * w.view.row_bytes;
      if constexpr (kFast) {
        detail::dequantize_row_fast(type, src, out.data() + r * 768, 768);
      } else {
        dequantize_row(type, src, out.data() + r * 768, 768);
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(gguf::traits(type).name);
  state.counters["elements/s"] =
      benchmark::Counter(64.0 * 768 * double(state.iterations()), benchmark::Counter::kIsRate);
}
void DequantTypes(benchmark::internal::Benchmark* b) {
  for (TensorType t :
       {TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1,
        TensorType::Q5_0, TensorType::Q5_1, TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K})
    b->Arg(int64_t(t));
}
BENCHMARK(BM_DequantRows<true>)->Apply(DequantTypes);
BENCHMARK(BM_DequantRows<false>)->Apply(DequantTypes);

void BM_F16ToF32(benchmark::State& state) {
  std::vector<uint16_t> h(4096);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = float_to_fp16(float(i) * 1e-3f - 2.0f);
  std::vector<float> out(h.size());
  for (auto _ : state) {
    detail::f16_to_f32(reinterpret_cast<const uint8_t*>(h.data()), out.data(), h.size());
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_F16ToF32);

// Activation quantization to int8 blocks (every q8-path matvec starts with it), fast vs ref.
template <bool kFast>
void BM_QuantizeQ8(benchmark::State& state) {
  const std::size_t n = std::size_t(state.range(0));
  const auto x = make_x(n);
  std::vector<int8_t> q(n);
  std::vector<float> d(n / 32), s(n / 32);
  for (auto _ : state) {
    if constexpr (kFast) {
      quantize_activations_q8(x.data(), n, q.data(), d.data(), s.data());
    } else {
      quantize_activations_q8_ref(x.data(), n, q.data(), d.data(), s.data());
    }
    benchmark::DoNotOptimize(q.data());
  }
}
BENCHMARK(BM_QuantizeQ8<true>)->Arg(1536);
BENCHMARK(BM_QuantizeQ8<false>)->Arg(1536);

// The element-wise ops beside their references (the fast ones dispatch per SIMD target).
template <bool kFast>
void BM_SoftmaxPair(benchmark::State& state) {
  auto x = make_x(std::size_t(state.range(0)));
  for (auto _ : state) {
    if constexpr (kFast) {
      softmax(x.data(), x.size());
    } else {
      softmax_ref(x.data(), x.size());
    }
    benchmark::DoNotOptimize(x.data());
  }
}
BENCHMARK(BM_SoftmaxPair<false>)->Arg(4096);

template <bool kFast>
void BM_SwigluPair(benchmark::State& state) {
  const auto g = make_x(1536), u = make_x(1536);
  std::vector<float> out(1536);
  for (auto _ : state) {
    if constexpr (kFast) {
      swiglu(g.data(), u.data(), out.data(), 1536);
    } else {
      swiglu_ref(g.data(), u.data(), out.data(), 1536);
    }
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_SwigluPair<false>);

template <bool kFast>
void BM_Rmsnorm(benchmark::State& state) {
  const auto x = make_x(576), w = make_x(576);
  std::vector<float> out(576);
  for (auto _ : state) {
    if constexpr (kFast) {
      rmsnorm(x.data(), w.data(), out.data(), 576, 1e-5f);
    } else {
      rmsnorm_ref(x.data(), w.data(), out.data(), 576, 1e-5f);
    }
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Rmsnorm<true>);
BENCHMARK(BM_Rmsnorm<false>);

// RoPE of one layer's 9 query heads of 64 channels at one position. Arg: 0 normal, 1 NeoX.
// kTable: cos/sin once per position, then rope_apply per head (the model's way); otherwise
// rope_rotate per head (cos/sin per head).
template <bool kTable>
void BM_Rope(benchmark::State& state) {
  const auto layout = state.range(0) ? squat::RopeLayout::Neox : squat::RopeLayout::Normal;
  std::vector<float> inv_freq(32), cs(64);
  llama3_rope_inv_freq(inv_freq.data(), 64, 10000.0f);
  auto q = make_x(9 * 64);
  int pos = 0;
  for (auto _ : state) {
    if constexpr (kTable) squat::rope_cos_sin(pos, inv_freq.data(), 32, cs.data(), cs.data() + 32);
    for (int h = 0; h < 9; ++h) {
      if constexpr (kTable) {
        squat::rope_apply(q.data() + h * 64, 64, cs.data(), cs.data() + 32, layout);
      } else {
        squat::rope_rotate(q.data() + h * 64, 64, pos, inv_freq.data(), layout);
      }
    }
    pos = (pos + 1) & 8191;
    benchmark::DoNotOptimize(q.data());
  }
}
BENCHMARK(BM_Rope<true>)->Arg(0)->Arg(1);
BENCHMARK(BM_Rope<false>)->Arg(0)->Arg(1);

template <bool kFast>
void BM_Dot(benchmark::State& state) {
  const auto a = make_x(576), b = make_x(576);
  float r = 0;
  for (auto _ : state) {
    r += kFast ? dot(a.data(), b.data(), 576) : dot_ref(a.data(), b.data(), 576);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_Dot<true>);
BENCHMARK(BM_Dot<false>);

template <bool kFast>
void BM_AddAxpy(benchmark::State& state) {
  const auto x = make_x(1536);
  std::vector<float> acc(1536, 0.0f);
  for (auto _ : state) {
    if constexpr (kFast) {
      add(acc.data(), x.data(), 1536);
      axpy(-0.5f, x.data(), acc.data(), 1536);
    } else {
      add_ref(acc.data(), x.data(), 1536);
      axpy_ref(-0.5f, x.data(), acc.data(), 1536);
    }
    benchmark::DoNotOptimize(acc.data());
  }
}
BENCHMARK(BM_AddAxpy<true>);
BENCHMARK(BM_AddAxpy<false>);

// One empty parallel_for on the pool of 2: the fixed cost of handing a job to the workers,
// paid hundreds of times per decoded token (no lock, no allocation; workers spinning).
void BM_PoolDispatch(benchmark::State& state) {
  ThreadPool& p = pool(2);
  for (auto _ : state) {
    p.parallel_for(2, [](std::size_t b, std::size_t e, int) { benchmark::DoNotOptimize(b + e); });
  }
}
BENCHMARK(BM_PoolDispatch)->UseRealTime();

}  // namespace
}  // namespace squat::kernels

BENCHMARK_MAIN();
