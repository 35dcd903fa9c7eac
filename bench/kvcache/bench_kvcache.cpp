// KV-cache library benchmarks: chunk quantization (KIVI vs SQuat), the per-prompt SQuat
// precomputation, and decode attention over a 4K-token cache per method.
#include <benchmark/benchmark.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "squat/kvcache.h"

using namespace squat::kv;

namespace {

std::vector<float> randn(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// Queries with a few dominant directions, like real attention queries.
std::vector<float> queries(std::size_t rows, std::size_t d, uint64_t seed) {
  std::vector<float> q = randn(rows * d, seed), dirs = randn(8 * d, seed + 1),
                     w = randn(rows * 8, seed + 2);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < 8; ++j)
      for (std::size_t c = 0; c < d; ++c) q[i * d + c] += 3.0f * w[i * 8 + j] * dirs[j * d + c];
  return q;
}

RopeSpec rope(int d) {
  RopeSpec r;
  for (int i = 0; i < d / 2; ++i) r.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / float(d)));
  return r;
}

// args: d, method (0 kivi, 1 squat), g
void BM_QuantizeChunk32(benchmark::State& state) {
  const std::size_t d = std::size_t(state.range(0)), n = 32;
  const bool squat = state.range(1) == 1;
  const int g = int(state.range(2));
  const std::vector<float> k = randn(n * d, 1);
  const std::vector<float> q = queries(1536, d, 2);
  SubspaceOptions opt;
  opt.quant_group_size = g;
  opt.subspace_dim = 20;
  const SquatState st = SquatState::from_queries(q.data(), 1536, int(d), opt);
  for (auto _ : state) {
    QuantizedChunk c =
        squat ? squat_quantize_chunk(k.data(), n, d, 2, 32, GroupLayout::PerChannel, ParamType::F16,
                                     st)
              : quantize_chunk(k.data(), n, d, 2, 32, GroupLayout::PerChannel, ParamType::F16);
    benchmark::DoNotOptimize(c.codes.data());
  }
  state.SetItemsProcessed(state.iterations() * int64_t(n));  // tokens
  state.SetLabel(squat ? "squat g=" + std::to_string(g) : "kivi");
}
BENCHMARK(BM_QuantizeChunk32)
    ->ArgNames({"d", "squat", "g"})
    ->Args({64, 0, 64})
    ->Args({64, 1, 64})
    ->Args({64, 1, 32})
    ->Args({64, 1, 16})
    ->Args({128, 0, 64})
    ->Args({128, 1, 64})
    ->Args({128, 1, 32});

// args: d, r, power method; rows = 1536 (a 512-token prompt x 3 query heads per KV head)
void BM_SquatPrecompute(benchmark::State& state) {
  const std::size_t d = std::size_t(state.range(0)), rows = 1536;
  const std::vector<float> q = queries(rows, d, 3);
  SubspaceOptions opt;
  opt.subspace_dim = int(state.range(1));
  opt.power_method = state.range(2) == 1;
  opt.quant_group_size = d == 64 ? 32 : 64;
  for (auto _ : state) {
    SquatState st = SquatState::from_queries(q.data(), rows, int(d), opt);
    benchmark::DoNotOptimize(st.p().data());
  }
  state.SetLabel(std::string(opt.power_method ? "power" : "svd") +
                 " rows=1536 g=" + std::to_string(opt.quant_group_size));
}
BENCHMARK(BM_SquatPrecompute)
    ->ArgNames({"d", "r", "power"})
    ->Args({64, 20, 0})
    ->Args({64, 60, 0})
    ->Args({128, 20, 0})
    ->Args({128, 60, 0})
    ->Args({64, 20, 1})
    ->Args({128, 60, 1})
    ->Unit(benchmark::kMicrosecond);

// One decode step of one layer (3 KV heads) over 4096 cached tokens. args: method, bits, d,
// pre-RoPE keys (1) or post-RoPE (0), threads (0: no pool; CPU time then only counts the
// calling thread, so compare real time), query heads per KV head (3: SmolLM2-135M, whose
// d is 64; 6: Qwen2.5-1.5B, whose d is 128)
void BM_DecodeAttention4K(benchmark::State& state) {
  const CacheMethod m = CacheMethod(state.range(0));
  const int bits = int(state.range(1)), d = int(state.range(2));
  const int n_kv = 3, n_heads = n_kv * int(state.range(5));
  const std::size_t n = 4096;
  CacheConfig cfg;
  cfg.method = m;
  cfg.k_bits = cfg.v_bits = bits;
  cfg.quant_group_size = 32;
  cfg.key_rope = state.range(3) ? KeyRope::Pre : KeyRope::Post;
  KvCache cache(cfg, 1, n_kv, d, rope(d));
  const std::vector<float> pq = queries(512 * std::size_t(n_heads), std::size_t(d), 4);
  cache.layer(0).set_queries(pq.data(), 512, n_heads);
  const std::vector<float> k = randn(n * std::size_t(n_kv * d), 5),
                           v = randn(n * std::size_t(n_kv * d), 6);
  cache.layer(0).append(k.data(), v.data(), n);
  const std::vector<float> q = randn(std::size_t(n_heads * d), 7);
  std::vector<float> out(q.size());
  const int pos = int(n) - 1;
  const int threads = state.range(4);
  std::unique_ptr<squat::ThreadPool> pool;
  if (threads > 0) pool = std::make_unique<squat::ThreadPool>(threads);
  for (auto _ : state) {
    cache.layer(0).attend(q.data(), 1, n_heads, &pos, out.data(), pool.get());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * int64_t(n) * n_kv);  // cached tokens x KV heads
  state.counters["bits/elem"] = cache.bits_per_element();
  state.SetLabel(cfg.describe());
}
BENCHMARK(BM_DecodeAttention4K)
    ->ArgNames({"method", "bits", "d", "pre", "threads", "rep"})
    ->Args({int(CacheMethod::F32), 0, 64, 1, 0, 3})
    ->Args({int(CacheMethod::F16), 0, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Int8), 0, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Int4), 0, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Kivi), 2, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Kivi), 4, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Squat), 2, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Squat), 4, 64, 1, 0, 3})
    ->Args({int(CacheMethod::Kivi), 2, 128, 1, 0, 3})
    ->Args({int(CacheMethod::Squat), 2, 128, 1, 0, 3})
    ->Args({int(CacheMethod::F16), 0, 128, 1, 0, 6})
    ->Args({int(CacheMethod::Squat), 2, 128, 1, 0, 6})
    ->Args({int(CacheMethod::F32), 0, 64, 0, 0, 3})
    ->Args({int(CacheMethod::Kivi), 2, 64, 0, 0, 3})
    ->Args({int(CacheMethod::Squat), 2, 64, 0, 0, 3})
    ->Args({int(CacheMethod::F16), 0, 64, 1, 2, 3})
    ->Args({int(CacheMethod::Squat), 2, 64, 1, 2, 3})
    ->Args({int(CacheMethod::Squat), 2, 64, 0, 2, 3})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Prefill through the cache: 512 queries (causal) over the 512 tokens just appended (one layer,
// 3 KV heads, 9 query heads, d = 64, pre-RoPE). args: method, bits
void BM_PrefillAttention512(benchmark::State& state) {
  const CacheMethod m = CacheMethod(state.range(0));
  const int d = 64, n_kv = 3, n_heads = 9;
  const std::size_t n = 512;
  CacheConfig cfg;
  cfg.method = m;
  cfg.k_bits = cfg.v_bits = int(state.range(1));
  cfg.quant_group_size = 32;
  KvCache cache(cfg, 1, n_kv, d, rope(d));
  const std::vector<float> q = queries(n * std::size_t(n_heads), std::size_t(d), 8);
  cache.layer(0).set_queries(q.data(), n, n_heads);
  const std::vector<float> k = randn(n * std::size_t(n_kv * d), 9),
                           v = randn(n * std::size_t(n_kv * d), 10);
  cache.layer(0).append(k.data(), v.data(), n);
  std::vector<int> pos(n);
  for (std::size_t i = 0; i < n; ++i) pos[i] = int(i);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    cache.layer(0).attend(q.data(), n, n_heads, pos.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(cfg.describe());
}
BENCHMARK(BM_PrefillAttention512)
    ->ArgNames({"method", "bits"})
    ->Args({int(CacheMethod::F32), 0})
    ->Args({int(CacheMethod::Kivi), 2})
    ->Args({int(CacheMethod::Squat), 2})
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
