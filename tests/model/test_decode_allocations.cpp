// Decoding must not allocate: every buffer is made when the context is built. This binary
// counts calls to the global operator new while tokens are decoded.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"
#include "model/store_cache.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

// The replaced operator new is malloc, so free in operator delete matches it; GCC cannot see
// that once the deletes are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace squat {
namespace {

// One run per cache method: f16 (the store keeps every token as fp16) and the default SQuat
// 2-bit config (pre-RoPE keys; a decoded chunk of R keys is flushed through the SQuat
// quantizer, values leave the window one at a time).
class Decode : public ::testing::TestWithParam<kv::CacheMethod> {};

TEST_P(Decode, NoAllocationPerToken) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  auto model = Model::load(SQUAT_TEST_MODEL);
  ThreadPool pool(2);
  kv::CacheConfig config;  // the reference defaults: SQuat 2-bit, pre-RoPE keys
  config.method = GetParam();
  auto cache = std::make_unique<StoreCache>(model->kv_shape(128), model->rope(), config);
  InferenceContext context(*model, std::move(cache), pool, 32);
  const int vocab = model->config().vocab_size;
  int32_t token = 1;
  // Warm-up: a prompt (builds the SQuat subspace) and the first decode steps, which size
  // per-thread scratch buffers.
  const std::vector<int32_t> prompt(40, 1);
  token = Sampler::argmax(context.eval(prompt), vocab);
  for (int i = 0; i < 4; ++i) token = Sampler::argmax(context.eval({&token, 1}), vocab);
  // 40 decoded tokens: the key window (R = 32) is flushed and quantized at least once.
  allocations = 0;
  counting = true;
  for (int i = 0; i < 40; ++i) token = Sampler::argmax(context.eval({&token, 1}), vocab);
  counting = false;
  EXPECT_EQ(allocations.load(), 0)
      << "heap allocations while decoding 40 tokens with " << kv::to_string(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Methods, Decode,
                         ::testing::Values(kv::CacheMethod::F16, kv::CacheMethod::Squat),
                         [](const auto& info) { return std::string(kv::to_string(info.param)); });

}  // namespace
}  // namespace squat
