// The engine's cache (full-precision methods of the store) against a direct double-precision
// computation: rotate every key, softmax over all visible scores, weighted sum of values, with
// keys and values as stored (fp16-rounded for f16).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "model/store_cache.h"

namespace squat {
namespace {

// RoPE written out from its definition: pair (a, b) rotated by angle pos * inv_freq[i].
void rotate(std::vector<double>& x, int pos, const std::vector<float>& inv_freq, bool neox) {
  const std::size_t half = x.size() / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const double angle = double(pos) * double(inv_freq[i]);
    const double xa = x[a], xb = x[b];
    x[a] = xa * std::cos(angle) - xb * std::sin(angle);
    x[b] = xa * std::sin(angle) + xb * std::cos(angle);
  }
}

double round_trip(double value, bool f16) {
  return f16 ? double(fp16_to_float(float_to_fp16(float(value)))) : value;
}

struct Case {
  kv::CacheMethod method;
  kv::KeyRope key_rope;
  bool neox;
};

class StoreCacheAttention : public ::testing::TestWithParam<Case> {};

TEST_P(StoreCacheAttention, MatchesDirectSoftmax) {
  const Case c = GetParam();
  const KvShape shape{2, 6, 2, 16, 200};
  const int n_rep = shape.n_heads / shape.n_kv_heads;
  RopeSpec rope;
  for (int i = 0; i < shape.head_dim / 2; ++i) {
    rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / shape.head_dim)));
  }
  rope.neox = c.neox;
  kv::CacheConfig config;
  config.method = c.method;
  config.key_rope = c.key_rope;
  StoreCache cache(shape, rope, config);
  const bool f16 = c.method == kv::CacheMethod::F16;
  ThreadPool pool(3);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  const int d = shape.head_dim, kv = shape.n_kv_heads, hq = shape.n_heads;
  std::vector<std::vector<float>> all_k, all_v;  // per token [kv * d], un-rotated
  int pos = 0;
  // A prefill of 70 tokens (more than one block of 64) and then single tokens.
  for (int step : {70, 1, 1, 5}) {
    std::vector<float> k(size_t(step * kv * d)), v(k.size()), q(size_t(step * hq * d));
    for (float& x : k) x = normal(rng) * 2.0f;
    for (float& x : v) x = normal(rng);
    for (float& x : q) x = normal(rng);
    for (int t = 0; t < step; ++t) {
      all_k.emplace_back(k.begin() + t * kv * d, k.begin() + (t + 1) * kv * d);
      all_v.emplace_back(v.begin() + t * kv * d, v.begin() + (t + 1) * kv * d);
    }
    for (int layer = 0; layer < shape.n_layers; ++layer) {
      std::vector<float> out(q.size());
      cache.append_and_attend(layer, k.data(), v.data(), q.data(), step, pos, out.data(), pool);
      for (int i = 0; i < step; ++i) {
        for (int h = 0; h < hq; ++h) {
          const int g = h / n_rep;
          const int visible = pos + i + 1;
          std::vector<double> scores(static_cast<std::size_t>(visible));
          double max_score = -1e300;
          for (int t = 0; t < visible; ++t) {
            // Keys are rounded before (pre-RoPE) or after (post-RoPE) the rotation; with a
            // full-precision method even the prompt reads them from the store.
            const bool round_before = c.key_rope == kv::KeyRope::Pre;
            const bool round_after = c.key_rope == kv::KeyRope::Post;
            std::vector<double> key(static_cast<std::size_t>(d));
            for (int e = 0; e < d; ++e) {
              key[size_t(e)] = round_trip(all_k[size_t(t)][size_t(g * d + e)], f16 && round_before);
            }
            rotate(key, t, rope.inv_freq, rope.neox);
            double s = 0;
            for (int e = 0; e < d; ++e) {
              s += double(q[size_t((i * hq + h) * d + e)]) *
                   round_trip(key[size_t(e)], f16 && round_after);
            }
            scores[size_t(t)] = s / std::sqrt(double(d));
            max_score = std::max(max_score, scores[size_t(t)]);
          }
          double total = 0;
          for (double& s : scores) total += (s = std::exp(s - max_score));
          for (int e = 0; e < d; ++e) {
            double expected = 0;
            for (int t = 0; t < visible; ++t) {
              expected +=
                  scores[size_t(t)] / total * round_trip(all_v[size_t(t)][size_t(g * d + e)], f16);
            }
            ASSERT_NEAR(out[size_t((i * hq + h) * d + e)], expected, 2e-4)
                << "layer " << layer << " query " << i << " head " << h << " dim " << e;
          }
        }
      }
    }
    pos += step;
    EXPECT_EQ(cache.n_tokens(), pos);
  }
  const std::size_t element = f16 ? 2 : 4;
  EXPECT_EQ(cache.bytes(), 2 * element * std::size_t(shape.n_layers * kv * pos * d));
  cache.clear();
  EXPECT_EQ(cache.n_tokens(), 0);
  EXPECT_EQ(cache.bytes(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Storages, StoreCacheAttention,
                         ::testing::Values(Case{kv::CacheMethod::F16, kv::KeyRope::Post, false},
                                           Case{kv::CacheMethod::F16, kv::KeyRope::Pre, false},
                                           Case{kv::CacheMethod::F32, kv::KeyRope::Pre, true},
                                           Case{kv::CacheMethod::F32, kv::KeyRope::Post, true}));

// Quantized methods, a prompt in chunks: each chunk attends to its own keys and values in full
// precision and to the earlier tokens as the store holds them (quantized part and fp16
// window, read back with dequantize), all in one softmax; computed here in double. SQuat
// gathers the queries of every chunk (the subspace changes from chunk to chunk) until
// finish_prompt, after which it neither asks for queries nor changes its subspace, and a
// batch of several tokens attends through the store like decoded tokens do.
TEST(StoreCache, PromptChunksAttendToThemselvesInFullPrecisionAndToTheStore) {
  const KvShape shape{2, 6, 2, 32, 400};
  const int n_rep = shape.n_heads / shape.n_kv_heads, d = shape.head_dim;
  const int kv = shape.n_kv_heads, hq = shape.n_heads;
  RopeSpec rope;
  for (int i = 0; i < d / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / d)));
  for (const kv::CacheMethod method : {kv::CacheMethod::Kivi, kv::CacheMethod::Squat}) {
    kv::CacheConfig config;
    config.method = method;
    config.quant_group_size = 8;
    config.lambda = 0.01;
    StoreCache cache(shape, rope, config);
    ThreadPool pool(2);
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<double> first_states_p;
    int pos = 0;
    // Three prompt chunks (the last one of 3 tokens: the decode-style split path of attend),
    // then the prompt ends; then a batch of 4 and one token.
    for (const int step : {70, 100, 3, 0, 4, 1}) {
      if (step == 0) {
        cache.finish_prompt();
        EXPECT_FALSE(cache.wants_queries(0));
        EXPECT_FALSE(cache.wants_queries(1));
        continue;
      }
      const bool prompt = pos < 173;
      std::vector<float> k(std::size_t(step * kv * d)), v(k.size()), q(std::size_t(step * hq * d));
      for (float& x : k) x = normal(rng) * 2.0f;
      for (float& x : v) x = normal(rng);
      for (float& x : q) x = normal(rng);
      for (int layer = 0; layer < shape.n_layers; ++layer) {
        EXPECT_EQ(cache.wants_queries(layer), method == kv::CacheMethod::Squat && prompt);
        if (cache.wants_queries(layer)) {
          cache.observe_queries(layer, q.data(), q.data(), step, pool);
        }
        std::vector<float> out(q.size());
        cache.append_and_attend(layer, k.data(), v.data(), q.data(), step, pos, out.data(), pool);
        const kv::LayerCache& stored = cache.store().layer(layer);
        if (method == kv::CacheMethod::Squat && layer == 0) {
          const std::vector<double>& p = stored.states().at(0).p();
          if (pos == 0) first_states_p = p;
          // The subspace moves with the prompt's chunks and stays once the prompt is over.
          if (pos > 0 && prompt) {
            EXPECT_NE(p, first_states_p) << "at " << pos;
            first_states_p = p;
          }
          if (!prompt) {
            EXPECT_EQ(p, first_states_p) << "at " << pos;
          }
        }
        // Keys (pre-RoPE, rotated here) and values, as attention must see them.
        const std::size_t total = stored.tokens();
        std::vector<std::vector<double>> keys(static_cast<std::size_t>(kv)), values(keys.size());
        for (int g = 0; g < kv; ++g) {
          std::vector<float> ks(total * std::size_t(d)), vs(ks.size());
          stored.dequantize(g, ks.data(), vs.data());
          keys[std::size_t(g)].resize(ks.size());
          values[std::size_t(g)].resize(vs.size());
          for (std::size_t t = 0; t < total; ++t) {
            // A prompt chunk's own tokens: the full-precision inputs.
            const bool own = prompt && step > 1 && int(t) >= pos;
            std::vector<double> key(static_cast<std::size_t>(d));
            for (int e = 0; e < d; ++e) {
              const std::size_t at = t * std::size_t(d) + std::size_t(e);
              const std::size_t raw =
                  (t - std::size_t(own ? pos : 0)) * std::size_t(kv * d) + std::size_t(g * d + e);
              key[std::size_t(e)] = own ? double(k[raw]) : double(ks[at]);
              values[std::size_t(g)][at] = own ? double(v[raw]) : double(vs[at]);
            }
            rotate(key, int(t), rope.inv_freq, false);
            std::copy(key.begin(), key.end(),
                      keys[std::size_t(g)].begin() + std::ptrdiff_t(t * std::size_t(d)));
          }
        }
        for (int i = 0; i < step; ++i) {
          for (int h = 0; h < hq; ++h) {
            const auto g = std::size_t(h / n_rep);
            const int visible = pos + i + 1;
            std::vector<double> scores(static_cast<std::size_t>(visible));
            double max_score = -1e300;
            for (int t = 0; t < visible; ++t) {
              double dot = 0;
              for (int e = 0; e < d; ++e) {
                dot +=
                    double(q[std::size_t((i * hq + h) * d + e)]) * keys[g][std::size_t(t * d + e)];
              }
              scores[std::size_t(t)] = dot / std::sqrt(double(d));
              max_score = std::max(max_score, scores[std::size_t(t)]);
            }
            double total_w = 0;
            for (double& x : scores) total_w += (x = std::exp(x - max_score));
            for (int e = 0; e < d; ++e) {
              double expected = 0;
              for (int t = 0; t < visible; ++t) {
                expected += scores[std::size_t(t)] * values[g][std::size_t(t * d + e)];
              }
              ASSERT_NEAR(out[std::size_t((i * hq + h) * d + e)], expected / total_w, 2e-4)
                  << kv::to_string(method) << " layer " << layer << " position " << pos + i
                  << " head " << h << " dim " << e;
            }
          }
        }
      }
      pos += step;
    }
  }
}

// Two sequences sharing one fixed RoPE table (as the server's do), fed in turns, attend
// exactly as a cache with its own table fed the same tokens; a sequence longer than the shared
// table is refused with an error, not a crash.
TEST(StoreCache, SharedRopeTableGivesTheSameAttention) {
  const KvShape shape{2, 6, 2, 32, 200};
  const int d = shape.head_dim, kv = shape.n_kv_heads, hq = shape.n_heads;
  RopeSpec rope;
  for (int i = 0; i < d / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / d)));
  kv::CacheConfig config;
  config.method = kv::CacheMethod::Squat;
  config.quant_group_size = 8;
  const auto table = StoreCache::shared_rope_table(rope, config, shape.max_tokens);
  ASSERT_NE(table, nullptr);
  StoreCache a(shape, rope, config, "", "", true, table),
      b(shape, rope, config, "", "", true, table);
  StoreCache own(shape, rope, config);
  ThreadPool pool(2);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int pos = 0;
  for (const int step : {90, 0, 1, 1, 40, 1}) {
    if (step == 0) {
      for (StoreCache* c : {&a, &b, &own}) c->finish_prompt();
      continue;
    }
    std::vector<float> k(std::size_t(step * kv * d)), v(k.size()), q(std::size_t(step * hq * d));
    for (float& x : k) x = normal(rng);
    for (float& x : v) x = normal(rng);
    for (float& x : q) x = normal(rng);
    std::vector<float> other_k(k.size()), other_q(q.size());
    for (float& x : other_k) x = normal(rng);
    for (float& x : other_q) x = normal(rng);
    for (int layer = 0; layer < shape.n_layers; ++layer) {
      std::vector<float> out_a(q.size()), out_own(q.size()), out_b(q.size());
      for (StoreCache* c : {&a, &own}) {
        if (c->wants_queries(layer)) c->observe_queries(layer, q.data(), q.data(), step, pool);
      }
      if (b.wants_queries(layer))
        b.observe_queries(layer, other_q.data(), other_q.data(), step, pool);
      a.append_and_attend(layer, k.data(), v.data(), q.data(), step, pos, out_a.data(), pool);
      b.append_and_attend(layer, other_k.data(), v.data(), other_q.data(), step, pos, out_b.data(),
                          pool);
      own.append_and_attend(layer, k.data(), v.data(), q.data(), step, pos, out_own.data(), pool);
      EXPECT_EQ(out_a, out_own) << "layer " << layer << " at " << pos;
    }
    pos += step;
  }
  const KvShape longer{shape.n_layers, hq, kv, d, shape.max_tokens + 1};
  EXPECT_THROW({ StoreCache too_long(longer, rope, config, "", "", true, table); }, squat::Error);
}

// A wrapper that counts the tokens it sees stored, through either call.
class CountingCache final : public ForwardingCache {
 public:
  using ForwardingCache::ForwardingCache;
  int seen = 0;

 private:
  void on_append(int layer, const float* /*k*/, const float* /*v*/, int n) override {
    if (layer == 0) seen += n;
  }
};

TEST(ForwardingCache, SeesEveryStoredBatchAndAttendsAsTheCacheItWraps) {
  const KvShape shape{2, 4, 2, 8, 64};
  const RopeSpec rope{{1.0f, 0.3f, 0.1f, 0.01f}, false};
  kv::CacheConfig config;
  config.method = kv::CacheMethod::Squat;
  config.group_size = 8;
  config.residual_length = 8;
  config.quant_group_size = 8;
  config.subspace_dim = 2;
  StoreCache plain(shape, rope, config);
  CountingCache wrapped(std::make_unique<StoreCache>(shape, rope, config));
  ThreadPool pool(2);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int pos = 0;
  for (const int step : {20, 0, 1, 1, 9}) {
    if (step == 0) {
      plain.finish_prompt();
      wrapped.finish_prompt();
      continue;
    }
    const int kvd = shape.n_kv_heads * shape.head_dim, qd = shape.n_heads * shape.head_dim;
    std::vector<float> k(std::size_t(step * kvd)), v(k.size()), q(std::size_t(step * qd));
    for (auto* x : {&k, &v, &q}) {
      for (float& e : *x) e = normal(rng);
    }
    for (int layer = 0; layer < shape.n_layers; ++layer) {
      for (AttentionCache* c :
           {static_cast<AttentionCache*>(&plain), static_cast<AttentionCache*>(&wrapped)}) {
        if (c->wants_queries(layer)) c->observe_queries(layer, q.data(), q.data(), step, pool);
      }
      std::vector<float> out_plain(q.size()), out_wrapped(q.size());
      plain.append_and_attend(layer, k.data(), v.data(), q.data(), step, pos, out_plain.data(),
                              pool);
      wrapped.append_and_attend(layer, k.data(), v.data(), q.data(), step, pos, out_wrapped.data(),
                                pool);
      EXPECT_EQ(out_plain, out_wrapped) << "layer " << layer << " at " << pos;
    }
    pos += step;
  }
  EXPECT_EQ(wrapped.seen, pos);
  EXPECT_EQ(wrapped.n_tokens(), pos);
  // append (no attention) is seen too.
  std::vector<float> k(std::size_t(shape.n_kv_heads * shape.head_dim), 0.5f), v(k);
  for (int layer = 0; layer < shape.n_layers; ++layer) wrapped.append(layer, k.data(), v.data(), 1);
  EXPECT_EQ(wrapped.seen, pos + 1);
  // Saving the subspace goes through the interface to the cache that has it: the wrapped
  // cache's file loads into a new cache and gives the same states.
  const std::string path =
      ::testing::TempDir() + "forwarding-subspace-" + std::to_string(::getpid()) + ".bin";
  const AttentionCache& as_interface = wrapped;
  as_interface.save_subspace(path);
  StoreCache loaded(shape, rope, config, path);
  plain.save_subspace(path + ".plain");
  StoreCache loaded_plain(shape, rope, config, path + ".plain");
  for (int layer = 0; layer < shape.n_layers; ++layer) {
    EXPECT_EQ(loaded.store().layer(layer).states().at(0).p(),
              loaded_plain.store().layer(layer).states().at(0).p());
  }
  std::remove(path.c_str());
  std::remove((path + ".plain").c_str());
}

TEST(StoreCache, RefusesTokensPastItsCapacity) {
  const KvShape shape{1, 2, 1, 4, 3};
  kv::CacheConfig config;
  config.method = kv::CacheMethod::F16;
  StoreCache cache(shape, RopeSpec{{1.0f, 0.5f}, false}, config);
  std::vector<float> k(16, 0.5f), v(16, 0.25f);
  cache.append(0, k.data(), v.data(), 3);
  EXPECT_THROW(cache.append(0, k.data(), v.data(), 1), std::exception);
}

}  // namespace
}  // namespace squat
