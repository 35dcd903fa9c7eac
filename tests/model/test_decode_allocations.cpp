// Decoding must not allocate: every buffer is made when the context is built. This binary
// counts calls to the global operator new while tokens are decoded.
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>

#include <gtest/gtest.h>

#include "model/full_cache.h"
#include "model/model.h"
#include "model/sampler.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace squat {
namespace {

TEST(Decode, NoAllocationPerToken) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  auto model = Model::load(SQUAT_TEST_MODEL);
  ThreadPool pool(2);
  auto cache = std::make_unique<FullPrecisionCache>(model->kv_shape(128), model->rope(),
                                                    FullPrecisionCache::Storage::F16);
  InferenceContext context(*model, std::move(cache), pool, 32);
  const int vocab = model->config().vocab_size;
  int32_t token = 1;
  // Warm-up: the first calls size per-thread scratch buffers.
  for (int i = 0; i < 4; ++i) token = Sampler::argmax(context.eval({&token, 1}), vocab);
  counting = true;
  for (int i = 0; i < 16; ++i) token = Sampler::argmax(context.eval({&token, 1}), vocab);
  counting = false;
  EXPECT_EQ(allocations.load(), 0) << "heap allocations while decoding 16 tokens";
}

}  // namespace
}  // namespace squat
