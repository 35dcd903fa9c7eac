// The cache methods inside the engine on the default model (SQUAT_TEST_MODEL), issue 4:
//  - with 8-bit keys and values, kivi and squat generate what f16 generates (or the first
//    divergence is a near-tie of f16's top two logits, printed);
//  - a prompt fed at once or token by token leaves layer 0's cache bit-identical (kivi, and
//    squat with a loaded subspace);
//  - each SQuat/KIVI option changes what it claims in the stored cache: λ = 0 and r = 0 give
//    KIVI exactly, the defaults do not; Hadamard, key RoPE side, query RoPE side, power method,
//    subspace dimension and block size each change the stored keys/values or the subspace.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"
#include "model/store_cache.h"

namespace squat {
namespace {

class CacheMethods : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(SQUAT_TEST_MODEL)) return;
    model_ = Model::load(SQUAT_TEST_MODEL).release();
    pool_ = new ThreadPool(2);
  }
  static void TearDownTestSuite() {
    delete pool_;
    delete model_;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model not found at '" SQUAT_TEST_MODEL "'";
  }

  // The configuration `squat run` builds by default for a method (apps/model_options.cpp):
  // kivi/squat store keys before RoPE, the others after; SQuat blocks as the engine's default.
  static kv::CacheConfig config(kv::CacheMethod method, int bits = 2) {
    kv::CacheConfig c;
    c.method = method;
    c.k_bits = c.v_bits = bits;
    c.quant_group_size =
        squat::kv::default_quant_group_size(model_->config().head_dim, c.key_quant, c.group_size);
    const bool kivi_like = method == kv::CacheMethod::Kivi || method == kv::CacheMethod::Squat;
    c.key_rope = kivi_like ? kv::KeyRope::Pre : kv::KeyRope::Post;
    return c;
  }
  static std::unique_ptr<InferenceContext> context(const kv::CacheConfig& c, int max_tokens = 256,
                                                   const std::string& subspace = "",
                                                   int batch = 0) {
    auto cache =
        std::make_unique<StoreCache>(model_->kv_shape(max_tokens), model_->rope(), c, subspace);
    // batch 0: the whole prompt in one batch, as `squat run` does by default.
    return std::make_unique<InferenceContext>(*model_, std::move(cache), *pool_,
                                              batch > 0 ? batch : max_tokens);
  }
  static const StoreCache& store(const InferenceContext& ctx) {
    return static_cast<const StoreCache&>(ctx.cache());
  }

  struct Greedy {
    std::vector<int32_t> tokens;
    std::vector<int32_t> second;  // the runner-up token at each step
    std::vector<float> top2_gap;  // top-1 minus top-2 logit at each step
  };
  static Greedy greedy(InferenceContext& ctx, const std::vector<int32_t>& prompt, int n) {
    Greedy g;
    const int vocab = model_->config().vocab_size;
    const float* logits = ctx.eval(prompt);
    for (int i = 0; i < n; ++i) {
      const int32_t best = Sampler::argmax(logits, vocab);
      int32_t second = best == 0 ? 1 : 0;
      for (int t = 0; t < vocab; ++t) {
        if (t != best && logits[t] > logits[second]) second = t;
      }
      g.tokens.push_back(best);
      g.second.push_back(second);
      g.top2_gap.push_back(logits[best] - logits[second]);
      logits = ctx.eval(std::span<const int32_t>(&best, 1));
    }
    return g;
  }

  // Layer `l`, KV head `h`: stored keys and values as floats.
  static std::pair<std::vector<float>, std::vector<float>> contents(const InferenceContext& ctx,
                                                                    int l, int h) {
    const kv::LayerCache& layer = store(ctx).store().layer(l);
    std::vector<float> k(layer.tokens() * std::size_t(layer.head_dim()));
    std::vector<float> v(k.size());
    layer.dequantize(h, k.data(), v.data());
    return {k, v};
  }
  // Every layer and head identical (keys and values) and the same byte counts.
  static bool same_cache(const InferenceContext& a, const InferenceContext& b) {
    if (store(a).bytes() != store(b).bytes()) return false;
    for (int l = 0; l < model_->config().n_layers; ++l) {
      for (int h = 0; h < model_->config().n_kv_heads; ++h) {
        if (contents(a, l, h) != contents(b, l, h)) return false;
      }
    }
    return true;
  }
  static double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
  }

  static std::vector<int32_t> prompt_tokens(std::size_t index) {
    std::ifstream in(std::string(SQUAT_SOURCE_DIR) + "/tests/fixtures/llamacpp/smollm2_q4_1.json");
    const nlohmann::json fixture = nlohmann::json::parse(in);
    return fixture["cases"].at(index)["prompt_tokens"].get<std::vector<int32_t>>();
  }
  // A prompt of ~90 tokens: keys cross the 32-token residual window twice.
  static std::vector<int32_t> long_prompt() {
    std::vector<int32_t> p;
    for (std::size_t i = 0; p.size() < 90; i = (i + 1) % 5) {
      const std::vector<int32_t> t = prompt_tokens(i);
      p.insert(p.end(), t.begin() + (p.empty() ? 0 : 1), t.end());  // one BOS at the start
    }
    p.resize(90);
    return p;
  }
  static std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() /
            ("squat_cache_methods_" + std::to_string(getpid()) + "_" + name))
        .string();
  }

  static Model* model_;
  static ThreadPool* pool_;
};

Model* CacheMethods::model_ = nullptr;
ThreadPool* CacheMethods::pool_ = nullptr;

// First position where two greedy runs differ (their length when they never do).
std::size_t first_divergence(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  return std::size_t(std::mismatch(a.begin(), a.end(), b.begin()).first - a.begin());
}

// Acceptance of issue 4: 64 greedy tokens, five prompts (the llama.cpp fixture's, the chat one
// included), 8-bit kivi and squat against f16.
// The engine's logits are sensitive to rounding (activations are quantized to int8 per block
// of 32 before every product, and this model has large activation outliers), and kivi/squat
// differ from f16 in more than quantization: they store keys before RoPE (fp16, rotated in
// attention) and their prompt attends to its own keys/values in f32 rather than the stored
// fp16 copies. To separate the two, the same protocol without any quantization is run too:
// kivi with a residual window longer than the whole sequence (every token stays fp16).
// 8-bit kivi/squat are then fed that run's greedy tokens (teacher forcing) and at every step
// the change of its top-1/top-2 logit gap is measured. Asserted: mean change < 0.2 and every
// change < 1.0 (measured on SmolLM2: mean 0.05-0.11 per prompt, max 0.25-0.63, with the fused
// decode kernel or the plain block path alike). Greedy runs leave the unquantized protocol
// where such a change exceeds its gap, so where they leave depends on the rounding path (a
// gap bound of 0.1-0.15 there passed or failed with the SIMD target); it is printed with the
// gap there, beside where the unquantized protocol itself leaves f16.
TEST_F(CacheMethods, EightBitKiviAndSquatGenerateWhatF16Generates) {
  constexpr int kTokens = 64;
  const int vocab = model_->config().vocab_size;
  for (std::size_t p = 0; p < 5; ++p) {
    const std::vector<int32_t> prompt = prompt_tokens(p);
    const int size = int(prompt.size()) + kTokens + 1;
    auto f16_ctx = context(config(kv::CacheMethod::F16), size);
    const Greedy f16 = greedy(*f16_ctx, prompt, kTokens);
    kv::CacheConfig unquantized = config(kv::CacheMethod::Kivi, 8);
    unquantized.residual_length = (size / 32 + 1) * 32;
    auto full_ctx = context(unquantized, size);
    const Greedy full = greedy(*full_ctx, prompt, kTokens);
    const std::size_t full_at = first_divergence(f16.tokens, full.tokens);
    std::printf(
        "[ note ] prompt %zu (%zu tokens): the unquantized kivi protocol leaves f16 at "
        "token %zu%s\n",
        p, prompt.size(), full_at, full_at == f16.tokens.size() ? " (never)" : "");
    for (kv::CacheMethod m : {kv::CacheMethod::Kivi, kv::CacheMethod::Squat}) {
      auto ctx = context(config(m, 8), size);
      const float* logits = ctx->eval(prompt);
      double sum = 0.0, worst = 0.0;
      std::size_t leaves = full.tokens.size();
      for (std::size_t i = 0; i < full.tokens.size(); ++i) {
        const int32_t best = full.tokens[i], second = full.second[i];
        const double change =
            std::fabs(double(full.top2_gap[i]) - (double(logits[best]) - logits[second]));
        sum += change;
        worst = std::max(worst, change);
        if (leaves == full.tokens.size() && Sampler::argmax(logits, vocab) != best) leaves = i;
        logits = ctx->eval(std::span<const int32_t>(&best, 1));
      }
      const double mean = sum / double(full.tokens.size());
      if (leaves == full.tokens.size()) {
        std::printf("[ note ]   %s-8: greedy follows the unquantized protocol for all %d tokens",
                    kv::to_string(m), kTokens);
      } else {
        std::printf(
            "[ note ]   %s-8: greedy leaves the unquantized protocol at token %zu "
            "(its gap there %.4f)",
            kv::to_string(m), leaves, double(full.top2_gap[leaves]));
      }
      std::printf("; top-2 gap change mean %.4f, max %.4f\n", mean, worst);
      EXPECT_LT(mean, 0.2) << "prompt " << p << ", " << kv::to_string(m) << "-8";
      EXPECT_LT(worst, 1.0) << "prompt " << p << ", " << kv::to_string(m) << "-8";
    }
  }
}

// Acceptance of issue 4: a prompt fed at once or token by token gives identical caches.
// Why only layer 0: with a quantized method the prompt batch attends to itself in full
// precision (the KIVI/SQuat references' protocol, StoreCache), while a token fed alone attends
// through the quantized cache. So the attention outputs, and with them every deeper layer's
// inputs (hence its keys and values), legitimately differ between the two ways. Layer 0's keys
// and values are projections of the embeddings alone, so its inputs are the same either way,
// and the flush rules (SQUAT.md §1) must then store exactly the same thing. SQuat needs a
// fixed subspace for this (a subspace from the prompt's queries cannot exist before the
// prompt has been seen token by token), so the squat case loads one saved from a prompt.
// The library's KvStore.PrefillEqualsTokenByToken checks the same for every layer's inputs.
TEST_F(CacheMethods, PromptAtOnceOrTokenByTokenGiveTheSameLayerZeroCache) {
  const std::vector<int32_t> prompt = long_prompt();
  const std::string subspace = temp_path("layer0.squatst");
  {
    auto maker = context(config(kv::CacheMethod::Squat), 256);
    maker->eval(prompt_tokens(3));  // a different prompt's subspace
    store(*maker).save_subspace(subspace);
  }
  for (kv::CacheMethod m : {kv::CacheMethod::Kivi, kv::CacheMethod::Squat}) {
    const std::string file = m == kv::CacheMethod::Squat ? subspace : "";
    auto at_once = context(config(m), 256, file, 256);
    auto one_by_one = context(config(m), 256, file, 1);
    at_once->eval(prompt);
    for (const int32_t t : prompt) one_by_one->eval(std::span<const int32_t>(&t, 1));
    const kv::LayerCache& a = store(*at_once).store().layer(0);
    const kv::LayerCache& b = store(*one_by_one).store().layer(0);
    ASSERT_EQ(a.tokens(), prompt.size());
    EXPECT_EQ(a.tokens(), b.tokens());
    EXPECT_EQ(a.quantized_keys(), 64u) << "90 tokens: two chunks of R = 32 keys quantized";
    EXPECT_EQ(a.quantized_values(), 58u) << "90 tokens: all values but the last 32";
    EXPECT_EQ(a.quantized_keys(), b.quantized_keys());
    EXPECT_EQ(a.quantized_values(), b.quantized_values());
    EXPECT_EQ(a.key_bytes(), b.key_bytes());
    EXPECT_EQ(a.value_bytes(), b.value_bytes());
    for (int h = 0; h < model_->config().n_kv_heads; ++h) {
      const auto [ka, va] = contents(*at_once, 0, h);
      const auto [kb, vb] = contents(*one_by_one, 0, h);
      EXPECT_EQ(ka, kb) << kv::to_string(m) << " head " << h;
      EXPECT_EQ(va, vb) << kv::to_string(m) << " head " << h;
    }
    // Deeper layers: report (not assert) how far the two protocols drift apart.
    const int last = model_->config().n_layers - 1;
    std::printf(
        "[ note ] %s: last layer's keys differ by at most %.4g between the protocols\n",
        kv::to_string(m),
        max_abs_diff(contents(*at_once, last, 0).first, contents(*one_by_one, last, 0).first));
  }
  std::filesystem::remove(subspace);
}

// Issue 17: the prompt goes in chunks (-b, 512 by default). With a full-precision cache every
// chunk attends through the store, exactly as the whole prompt does (the same attention code
// over the same stored keys, key blocks in the same order; the prompt products compute each
// row in the per-row order), so the logits of every position are equal bit for bit, whatever
// the chunk size.
TEST_F(CacheMethods, ChunkedPromptGivesTheWholePromptsLogitsBitForBit) {
  std::vector<int32_t> prompt;
  while (prompt.size() < 230) {
    const std::vector<int32_t> more = long_prompt();
    prompt.insert(prompt.end(), more.begin() + (prompt.empty() ? 0 : 1), more.end());
  }
  prompt.resize(230);
  for (const kv::CacheMethod m : {kv::CacheMethod::F16, kv::CacheMethod::F32}) {
    auto whole = context(config(m), 256);
    std::vector<float> expected;
    whole->eval(prompt, &expected);
    for (const int batch : {100, 64, 7}) {
      auto chunked = context(config(m), 256, "", batch);
      std::vector<float> got;
      chunked->eval(prompt, &got);
      ASSERT_EQ(got.size(), expected.size());
      std::size_t first_diff = got.size();
      for (std::size_t i = 0; i < got.size() && first_diff == got.size(); ++i) {
        if (got[i] != expected[i]) first_diff = i;
      }
      EXPECT_EQ(first_diff, got.size())
          << kv::to_string(m) << " -b " << batch << ": first differing logit at position "
          << first_diff / std::size_t(model_->config().vocab_size);
      EXPECT_TRUE(same_cache(*whole, *chunked)) << kv::to_string(m) << " -b " << batch;
    }
  }
}

// A quantized prompt of one chunk is fed exactly as before (the subspace from its queries by
// SVD); over several chunks the first layer's keys and values are the same projections, so
// its stored values match the whole prompt's exactly (values do not depend on the subspace)
// while SQuat's keys follow the subspace refined chunk by chunk.
TEST_F(CacheMethods, QuantizedPromptInChunks) {
  const std::vector<int32_t> prompt = long_prompt();
  for (const kv::CacheMethod m : {kv::CacheMethod::Kivi, kv::CacheMethod::Squat}) {
    auto whole = context(config(m), 256);
    auto one_chunk = context(config(m), 256, "", 128);
    auto chunks = context(config(m), 256, "", 40);
    std::vector<float> a, b, c;
    whole->eval(prompt, &a);
    one_chunk->eval(prompt, &b);
    chunks->eval(prompt, &c);
    EXPECT_EQ(a, b) << kv::to_string(m);
    EXPECT_TRUE(same_cache(*whole, *one_chunk)) << kv::to_string(m);
    // The first 40 positions see the same tokens the same way in both.
    const std::size_t vocab = std::size_t(model_->config().vocab_size);
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + std::ptrdiff_t(40 * vocab), c.begin()))
        << kv::to_string(m);
    for (int h = 0; h < model_->config().n_kv_heads; ++h) {
      const auto [kw, vw] = contents(*whole, 0, h);
      const auto [kc, vc] = contents(*chunks, 0, h);
      EXPECT_EQ(vw, vc) << kv::to_string(m) << " head " << h;
      if (m == kv::CacheMethod::Kivi) {
        EXPECT_EQ(kw, kc) << "head " << h;
      } else {
        EXPECT_NE(kw, kc) << "head " << h << ": the subspace should differ mid-prompt";
      }
    }
  }
}

// λ = 0 and r = 0 make SQuat exactly KIVI (SQUAT.md §6): same cache everywhere, same tokens;
// a single block (g = head_dim) too, since there is no later block to absorb the error. With
// the defaults the keys differ (values are KIVI's in both).
TEST_F(CacheMethods, SquatReducesToKiviExactlyAndDiffersWithDefaults) {
  const std::vector<int32_t> prompt = long_prompt();
  auto kivi = context(config(kv::CacheMethod::Kivi));
  const Greedy kivi_tokens = greedy(*kivi, prompt, 16);
  kv::CacheConfig lambda0 = config(kv::CacheMethod::Squat), r0 = lambda0, one_block = lambda0;
  lambda0.lambda = 0;
  r0.subspace_dim = 0;
  one_block.quant_group_size = model_->config().head_dim;
  for (const kv::CacheConfig& c : {lambda0, r0, one_block}) {
    auto squat = context(c);
    EXPECT_EQ(greedy(*squat, prompt, 16).tokens, kivi_tokens.tokens) << c.describe();
    EXPECT_TRUE(same_cache(*squat, *kivi)) << c.describe();
  }
  auto squat = context(config(kv::CacheMethod::Squat));
  greedy(*squat, prompt, 16);
  EXPECT_EQ(store(*squat).bytes(), store(*kivi).bytes());
  const auto [kk, kv_] = contents(*kivi, 0, 0);
  const auto [sk, sv] = contents(*squat, 0, 0);
  EXPECT_NE(sk, kk) << "default SQuat must store other key codes than KIVI";
  // Generations may part (other keys), so compare the prompt's values.
  const std::size_t prompt_values = prompt.size() * std::size_t(model_->config().head_dim);
  ASSERT_GE(sv.size(), prompt_values);
  EXPECT_TRUE(std::equal(sv.begin(), sv.begin() + std::ptrdiff_t(prompt_values), kv_.begin()))
      << "values are quantized as in KIVI";
}

// The options that do not change the byte count each change what is stored or the subspace.
TEST_F(CacheMethods, OptionsChangeTheStoredCacheOrTheSubspace) {
  const std::vector<int32_t> prompt = long_prompt();
  auto run = [&](const kv::CacheConfig& c) {
    auto ctx = context(c);
    ctx->eval(prompt);
    return ctx;
  };
  const kv::CacheConfig base = config(kv::CacheMethod::Squat);
  auto reference = run(base);
  const auto [k0, v0] = contents(*reference, 0, 0);
  const auto& states0 = store(*reference).store().layer(0).states();
  ASSERT_FALSE(states0.empty());
  ASSERT_FALSE(states0[0].is_identity());

  {  // Hadamard rotates values before quantizing: other values, same keys, still close.
    kv::CacheConfig c = base;
    c.hadamard = true;
    auto ctx = run(c);
    const auto [k, v] = contents(*ctx, 0, 0);
    EXPECT_EQ(k, k0);
    EXPECT_NE(v, v0);
    // Both are 2-bit approximations of the same values: the difference is of the order of
    // the quantization step, far below the values' own range.
    double range = 0;
    for (float x : v0) range = std::max(range, double(std::fabs(x)));
    EXPECT_LT(max_abs_diff(v, v0), range);
  }
  {  // Post-RoPE keys: layer 0 stores rotated keys (f32: exactly the pre-RoPE keys rotated).
    kv::CacheConfig pre = config(kv::CacheMethod::F32), post = pre;
    pre.key_rope = kv::KeyRope::Pre;
    post.key_rope = kv::KeyRope::Post;
    auto a = run(pre), b = run(post);
    auto [kpre, vpre] = contents(*a, 0, 1);
    const auto [kpost, vpost] = contents(*b, 0, 1);
    EXPECT_NE(kpre, kpost);
    EXPECT_EQ(vpre, vpost);
    const int d = model_->config().head_dim;
    const RopeSpec rope = model_->rope();
    for (std::size_t t = 0; t < prompt.size(); ++t) {
      rope_rotate(kpre.data() + t * std::size_t(d), std::size_t(d), (long long)t,
                  rope.inv_freq.data(), rope.neox ? RopeLayout::Neox : RopeLayout::Normal);
    }
    EXPECT_LT(max_abs_diff(kpre, kpost), 1e-3);
    // And for squat the quantized keys change with the side of RoPE.
    kv::CacheConfig squat_post = base;
    squat_post.key_rope = kv::KeyRope::Post;
    EXPECT_NE(contents(*run(squat_post), 0, 0).first, k0);
  }
  // Query side of RoPE, power method, subspace dimension, block size: another subspace (and
  // other key codes), same byte count. Per-token key groups: other key codes, same bytes.
  kv::CacheConfig before = base, power = base, r5 = base, g32 = base, per_token = base;
  before.query_rope = kv::QueryRope::Before;
  power.power_method = true;
  r5.subspace_dim = 5;
  g32.quant_group_size = 32;                        // the default is 16 at head_dim 64
  per_token.key_quant = kv::GroupLayout::PerToken;  // other key groups (g a multiple of G)
  per_token.quant_group_size = 32;
  for (const kv::CacheConfig& c : {before, power, r5, g32, per_token}) {
    auto ctx = run(c);
    const auto& states = store(*ctx).store().layer(0).states();
    ASSERT_EQ(states.size(), states0.size());
    if (c.key_quant == base.key_quant) {
      EXPECT_FALSE(states[0] == states0[0]) << c.describe();
    }
    EXPECT_NE(contents(*ctx, 0, 0).first, k0) << c.describe();
    EXPECT_EQ(store(*ctx).bytes(), store(*reference).bytes()) << c.describe();
  }
}

}  // namespace
}  // namespace squat
