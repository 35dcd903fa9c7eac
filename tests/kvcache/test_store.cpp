// The cache store: flush rules of SQUAT.md §1, byte accounting, and attention over the store
// against an independent double-precision attention over the dequantized arrays.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "../kernels/simd_targets.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kvcache/simd.h"
#include "squat/kvcache.h"

using namespace squat::kv;

namespace {

RopeSpec make_rope(int d, RopeLayout layout) {
  RopeSpec r;
  r.layout = layout;
  for (int i = 0; i < d / 2; ++i) r.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / float(d)));
  return r;
}

std::vector<float> randn(std::size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Independent rotation (pairs per layout, angle pos * inv_freq, math in double).
void test_rope(std::vector<double>& x, int d, int pos, const RopeSpec& r) {
  for (int i = 0; i < d / 2; ++i) {
    const double angle = double(pos) * double(r.inv_freq[std::size_t(i)]);
    const int a = r.layout == RopeLayout::Normal ? 2 * i : i;
    const int b = r.layout == RopeLayout::Normal ? 2 * i + 1 : i + d / 2;
    const double xa = x[std::size_t(a)], xb = x[std::size_t(b)];
    x[std::size_t(a)] = xa * std::cos(angle) - xb * std::sin(angle);
    x[std::size_t(b)] = xa * std::sin(angle) + xb * std::cos(angle);
  }
}

// Double-precision causal attention of q [n_q, n_heads, d] over per-head arrays
// keys[h] / values[h] ([n, d], keys already in the rotated frame).
std::vector<float> dense_attention(const std::vector<float>& q, std::size_t n_q, int n_heads,
                                   const std::vector<int>& pos,
                                   const std::vector<std::vector<double>>& keys,
                                   const std::vector<std::vector<double>>& values, std::size_t n,
                                   int d) {
  const int n_kv = int(keys.size()), n_rep = n_heads / n_kv;
  const std::size_t D = std::size_t(d);
  std::vector<float> out(n_q * std::size_t(n_heads) * D, 0.0f);
  for (std::size_t i = 0; i < n_q; ++i) {
    const std::size_t vis = std::size_t(std::clamp<long long>(pos[i] + 1LL, 0, (long long)n));
    for (int h = 0; h < n_heads; ++h) {
      const auto& K = keys[std::size_t(h / n_rep)];
      const auto& V = values[std::size_t(h / n_rep)];
      const float* qv = q.data() + (i * std::size_t(n_heads) + std::size_t(h)) * D;
      if (vis == 0) continue;
      std::vector<double> w(vis);
      double mx = -1e300, sum = 0;
      for (std::size_t t = 0; t < vis; ++t) {
        double s = 0;
        for (std::size_t c = 0; c < D; ++c) s += double(qv[c]) * K[t * D + c];
        w[t] = s / std::sqrt(double(d));
        mx = std::max(mx, w[t]);
      }
      for (auto& x : w) sum += (x = std::exp(x - mx));
      for (std::size_t c = 0; c < D; ++c) {
        double a = 0;
        for (std::size_t t = 0; t < vis; ++t) a += w[t] * V[t * D + c];
        out[(i * std::size_t(n_heads) + std::size_t(h)) * D + c] = float(a / sum);
      }
    }
  }
  return out;
}

// Dequantized contents of a layer, keys rotated into the query frame when stored pre-RoPE.
void dequantized_arrays(const LayerCache& cache, const RopeSpec& rope,
                        std::vector<std::vector<double>>& keys,
                        std::vector<std::vector<double>>& values) {
  const std::size_t n = cache.tokens(), D = std::size_t(cache.head_dim());
  keys.assign(std::size_t(cache.n_kv_heads()), {});
  values.assign(std::size_t(cache.n_kv_heads()), {});
  for (int h = 0; h < cache.n_kv_heads(); ++h) {
    std::vector<float> k(n * D), v(n * D);
    cache.dequantize(h, k.data(), v.data());
    keys[std::size_t(h)].assign(k.begin(), k.end());
    values[std::size_t(h)].assign(v.begin(), v.end());
    if (cache.config().key_rope == KeyRope::Pre) {
      for (std::size_t t = 0; t < n; ++t) {
        std::vector<double> row(keys[std::size_t(h)].begin() + std::ptrdiff_t(t * D),
                                keys[std::size_t(h)].begin() + std::ptrdiff_t((t + 1) * D));
        test_rope(row, int(D), int(t), rope);
        std::copy(row.begin(), row.end(), keys[std::size_t(h)].begin() + std::ptrdiff_t(t * D));
      }
    }
  }
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

CacheConfig kivi_config(int G, int R, int bits = 2) {
  CacheConfig c;
  c.method = CacheMethod::Kivi;
  c.group_size = G;
  c.residual_length = R;
  c.k_bits = c.v_bits = bits;
  return c;
}

std::size_t expected_bytes(const CacheConfig& c, std::size_t n_kq, std::size_t n_vq, std::size_t n,
                           int n_kv, int d) {
  const std::size_t D = std::size_t(d), G = std::size_t(c.group_size), pb = 2 * 2;  // fp16 s, m
  const std::size_t kb = n_kq / G * D * (G * std::size_t(c.k_bits) / 8 + pb) + (n - n_kq) * D * 2;
  const std::size_t vb = n_vq * (D / G) * (G * std::size_t(c.v_bits) / 8 + pb) + (n - n_vq) * D * 2;
  return (kb + vb) * std::size_t(n_kv);
}

}  // namespace

TEST(KvStore, FlushRulesAfterPrefillOfEveryLength) {
  const int d = 32, n_kv = 2;
  const RopeSpec rope = make_rope(d, RopeLayout::Normal);
  for (auto [G, R] : {std::pair{32, 32}, std::pair{8, 24}}) {
    const CacheConfig cfg = kivi_config(G, R);
    for (int L = 0; L <= 3 * R; ++L) {
      KvCache cache(cfg, 1, n_kv, d, rope);
      const auto k = randn(std::size_t(L * n_kv * d), std::size_t(L) + 1);
      const auto v = randn(std::size_t(L * n_kv * d), std::size_t(L) + 1000);
      LayerCache& layer = cache.layer(0);
      layer.append(k.data(), v.data(), std::size_t(L));
      const std::size_t n = std::size_t(L), kq = std::size_t(L / R * R),
                        vq = std::size_t(std::max(0, L - R));
      EXPECT_EQ(layer.tokens(), n);
      EXPECT_EQ(layer.quantized_keys(), kq) << "G " << G << " R " << R << " L " << L;
      EXPECT_EQ(layer.quantized_values(), vq) << "G " << G << " R " << R << " L " << L;
      EXPECT_EQ(layer.bytes(), expected_bytes(cfg, kq, vq, n, n_kv, d)) << "L " << L;
      if (L > 0) {
        EXPECT_DOUBLE_EQ(layer.bits_per_element(),
                         double(layer.bytes()) * 8 / (double(L) * n_kv * d * 2));
      }
    }
  }
}

TEST(KvStore, FlushRulesWhileDecodingTokenByToken) {
  const int d = 16, n_kv = 1, G = 8, R = 16;
  const CacheConfig cfg = kivi_config(G, R);
  for (int prefill : {0, 5, 16, 21}) {
    KvCache cache(cfg, 1, n_kv, d, make_rope(d, RopeLayout::Neox));
    LayerCache& layer = cache.layer(0);
    const auto k = randn(200 * std::size_t(d), 1), v = randn(200 * std::size_t(d), 2);
    layer.append(k.data(), v.data(), std::size_t(prefill));
    for (int t = prefill; t < 3 * R + 7; ++t) {
      layer.append(k.data() + std::size_t(t * d), v.data() + std::size_t(t * d), 1);
      const int n = t + 1;
      // Keys leave in chunks of R when the buffer reaches R; values one at a time beyond R.
      EXPECT_EQ(layer.quantized_keys(), std::size_t(n / R * R)) << n;
      EXPECT_EQ(layer.quantized_values(), std::size_t(std::max(0, n - R))) << n;
      EXPECT_EQ(layer.bytes(),
                expected_bytes(cfg, std::size_t(n / R * R), std::size_t(std::max(0, n - R)),
                               std::size_t(n), n_kv, d));
    }
  }
}

// SQUAT.md §6: with a fixed subspace (KIVI, or SQuat with given states) a prefill of L tokens
// stores exactly what feeding the same tokens one at a time stores, for every method, key
// group layout and side of RoPE (the flush rules are deterministic). The engine can check this
// only at layer 0 (test_cache_methods), because there the prompt's deeper layers see other
// inputs than token-by-token decoding; here the inputs are the same by construction.
TEST(KvStore, PrefillEqualsTokenByToken) {
  const int d = 64, n_kv = 2, n_heads = 4;
  const std::size_t L = 3 * 32 + 5;
  const RopeSpec rope = make_rope(d, RopeLayout::Normal);
  for (CacheMethod m : {CacheMethod::Kivi, CacheMethod::Squat, CacheMethod::Int4, CacheMethod::Int8,
                        CacheMethod::F16, CacheMethod::F32}) {
    for (GroupLayout layout : {GroupLayout::PerChannel, GroupLayout::PerToken}) {
      for (KeyRope key_rope : {KeyRope::Pre, KeyRope::Post}) {
        CacheConfig cfg = kivi_config(32, 32);
        cfg.method = m;
        cfg.quant_group_size = 32;
        cfg.key_quant = layout;
        cfg.key_rope = key_rope;
        cfg.hadamard = true;
        const std::string what = cfg.describe();
        const auto k = randn(L * n_kv * d, 3), v = randn(L * n_kv * d, 4);
        const auto q = randn(L * n_heads * d, 5);
        KvCache a(cfg, 1, n_kv, d, rope), b(cfg, 1, n_kv, d, rope);
        a.layer(0).set_queries(q.data(), L, n_heads);
        if (m == CacheMethod::Squat) {
          ASSERT_FALSE(a.layer(0).states().at(0).is_identity()) << "a real correction";
          b.layer(0).set_states(a.layer(0).states());
        }
        a.layer(0).append(k.data(), v.data(), L);
        for (std::size_t t = 0; t < L; ++t) {
          b.layer(0).append(k.data() + t * n_kv * d, v.data() + t * n_kv * d, 1);
        }
        EXPECT_EQ(a.bytes(), b.bytes()) << what;
        EXPECT_EQ(a.layer(0).quantized_keys(), b.layer(0).quantized_keys()) << what;
        EXPECT_EQ(a.layer(0).quantized_values(), b.layer(0).quantized_values()) << what;
        for (int h = 0; h < n_kv; ++h) {
          std::vector<float> ka(L * d), va(L * d), kb(L * d), vb(L * d);
          a.layer(0).dequantize(h, ka.data(), va.data());
          b.layer(0).dequantize(h, kb.data(), vb.data());
          EXPECT_EQ(ka, kb) << what;
          EXPECT_EQ(va, vb) << what;
        }
      }
    }
  }
}

namespace {

struct AttnCase {
  CacheMethod method;
  KeyRope key_rope;
  GroupLayout key_quant;
  RopeLayout rope_layout;
  bool hadamard;
  int bits;
};

void check_attention(const AttnCase& c) {
  const int d = 64, n_kv = 2, n_heads = 6;
  const std::size_t prefill = 70, total = 100;
  const RopeSpec rope = make_rope(d, c.rope_layout);
  CacheConfig cfg = kivi_config(16, 32, c.bits);
  cfg.method = c.method;
  cfg.key_rope = c.key_rope;
  cfg.key_quant = c.key_quant;
  cfg.hadamard = c.hadamard;
  cfg.quant_group_size = 32;
  KvCache cache(cfg, 1, n_kv, d, rope);
  LayerCache& layer = cache.layer(0);
  auto k = randn(total * n_kv * d, 7), v = randn(total * n_kv * d, 8);
  for (std::size_t i = 0; i < k.size(); i += 5) k[i] += 3.0f;  // channel offsets
  const auto pq = randn(prefill * n_heads * d, 9, 2.0f);
  layer.set_queries(pq.data(), prefill, n_heads);
  layer.append(k.data(), v.data(), prefill);
  for (std::size_t t = prefill; t < total; ++t) {
    layer.append(k.data() + t * n_kv * d, v.data() + t * n_kv * d, 1);
  }
  const std::vector<int> pos{99, 99, 64, 63, 31, 0, 1000, -1};
  const auto q = randn(pos.size() * n_heads * d, 10, 1.5f);
  std::vector<float> fast(q.size(), 7.0f), ref(q.size(), 7.0f);
  layer.attend(q.data(), pos.size(), n_heads, pos.data(), fast.data());
  layer.attend_reference(q.data(), pos.size(), n_heads, pos.data(), ref.data());
  std::vector<std::vector<double>> keys, values;
  dequantized_arrays(layer, rope, keys, values);
  const auto expect = dense_attention(q, pos.size(), n_heads, pos, keys, values, total, d);
  const std::string what = cfg.describe();
  EXPECT_LT(max_abs_diff(fast, expect), 1e-4) << what;
  EXPECT_LT(max_abs_diff(ref, expect), 1e-5) << what;
  // The query at position -1 sees nothing.
  for (std::size_t i = 7 * n_heads * d; i < 8 * n_heads * d; ++i) EXPECT_EQ(fast[i], 0.0f);
}

}  // namespace

TEST(KvAttention, EqualsAttentionOverDequantizedArrays) {
  std::vector<AttnCase> cases;
  for (CacheMethod m : {CacheMethod::F32, CacheMethod::F16, CacheMethod::Int8, CacheMethod::Int4,
                        CacheMethod::Kivi, CacheMethod::Squat}) {
    for (KeyRope kr : {KeyRope::Pre, KeyRope::Post}) {
      cases.push_back({m, kr, GroupLayout::PerChannel, RopeLayout::Normal, false, 2});
    }
  }
  cases.push_back(
      {CacheMethod::Kivi, KeyRope::Pre, GroupLayout::PerToken, RopeLayout::Neox, true, 4});
  cases.push_back(
      {CacheMethod::Squat, KeyRope::Pre, GroupLayout::PerToken, RopeLayout::Neox, false, 2});
  cases.push_back(
      {CacheMethod::Squat, KeyRope::Pre, GroupLayout::PerChannel, RopeLayout::Neox, true, 4});
  cases.push_back(
      {CacheMethod::Squat, KeyRope::Post, GroupLayout::PerChannel, RopeLayout::Normal, true, 8});
  for (const AttnCase& c : cases) check_attention(c);
}

TEST(KvAttention, HighBitsAndPreOrPostRopeMatchFullPrecision) {
  const int d = 64, n_kv = 1, n_heads = 3;
  const std::size_t n = 90;
  const RopeSpec rope = make_rope(d, RopeLayout::Normal);
  const auto k = randn(n * n_kv * d, 21), v = randn(n * n_kv * d, 22);
  // Rotated keys for the post-RoPE caches and the dense reference.
  std::vector<float> krot = k;
  for (std::size_t t = 0; t < n; ++t)
    squat::rope_rotate(krot.data() + t * d, d, (long long)t, rope.inv_freq.data(), rope.layout);
  const auto q = randn(n * n_heads * d, 23);
  std::vector<int> pos(n);
  for (std::size_t i = 0; i < n; ++i) pos[i] = int(i);
  std::vector<float> dense(q.size());
  attention_dense(q.data(), n, n_heads, pos.data(), krot.data(), v.data(), n, n_kv, d,
                  dense.data());
  struct Tol {
    CacheMethod m;
    int bits;
    double tol;
  };
  for (Tol t : {Tol{CacheMethod::F32, 0, 1e-5}, Tol{CacheMethod::F16, 0, 3e-3},
                Tol{CacheMethod::Int8, 0, 3e-2}, Tol{CacheMethod::Kivi, 8, 3e-2},
                Tol{CacheMethod::Squat, 8, 3e-2}}) {
    for (KeyRope kr : {KeyRope::Pre, KeyRope::Post}) {
      CacheConfig cfg = kivi_config(32, 32, t.bits ? t.bits : 2);
      cfg.method = t.m;
      cfg.key_rope = kr;
      cfg.quant_group_size = 32;
      KvCache cache(cfg, 1, n_kv, d, rope);
      cache.layer(0).set_queries(q.data(), n, n_heads);
      cache.layer(0).append(kr == KeyRope::Pre ? k.data() : krot.data(), v.data(), n);
      std::vector<float> out(q.size());
      cache.layer(0).attend(q.data(), n, n_heads, pos.data(), out.data());
      EXPECT_LT(max_abs_diff(out, dense), t.tol) << cfg.describe();
    }
  }
}

TEST(KvAttention, TwoBitSquatBeatsKiviThroughTheCache) {
  // Queries concentrated in a few directions, keys with outlier channels; the prompt's queries
  // build the subspace, later queries from the same directions attend through the cache.
  const int d = 64, n_kv = 1, n_heads = 2;
  const std::size_t n = 256;
  std::mt19937_64 rng(31);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(n * d), v(n * d), dirs(3 * d), q(n * n_heads * d);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = normal(rng) * ((i % d) % 11 == 0 ? 6.0f : 1.0f);
  for (auto& x : v) x = normal(rng);
  for (auto& x : dirs) x = normal(rng);
  for (std::size_t i = 0; i < n * n_heads; ++i)
    for (int j = 0; j < 3; ++j) {
      const float w = 0.6f * normal(rng);
      for (int c = 0; c < d; ++c) q[i * d + std::size_t(c)] += w * dirs[std::size_t(j * d + c)];
    }
  std::vector<int> pos(n);
  for (std::size_t i = 0; i < n; ++i) pos[i] = int(i);
  std::vector<float> exact(q.size());
  attention_dense(q.data(), n, n_heads, pos.data(), k.data(), v.data(), n, n_kv, d, exact.data());
  double err[2];
  for (int which = 0; which < 2; ++which) {
    CacheConfig cfg = kivi_config(32, 32, 2);
    cfg.method = which ? CacheMethod::Squat : CacheMethod::Kivi;
    cfg.key_rope = KeyRope::Post;
    cfg.quant_group_size = 16;
    cfg.lambda = 0.01;
    KvCache cache(cfg, 1, n_kv, d);
    cache.layer(0).set_queries(q.data(), n, n_heads);
    cache.layer(0).append(k.data(), v.data(), n);
    std::vector<float> out(q.size());
    cache.layer(0).attend(q.data(), n, n_heads, pos.data(), out.data());
    double se = 0, ref = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      se += (double(out[i]) - exact[i]) * (double(out[i]) - exact[i]);
      ref += double(exact[i]) * exact[i];
    }
    err[which] = std::sqrt(se / ref);
  }
  std::printf("attention output relative error: kivi %.4f squat %.4f\n", err[0], err[1]);
  EXPECT_LT(err[1], err[0]);
}

TEST(KvStore, ValidateRefusesImpossibleConfigs) {
  auto refuses = [](CacheConfig c, int d, const char* what) {
    try {
      c.validate(d);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const squat::Error& e) {
      EXPECT_EQ(e.exit_status(), 2) << what;
    }
  };
  CacheConfig base;
  base.validate(64);
  CacheConfig c = base;
  c.k_bits = 3;
  refuses(c, 64, "k_bits 3");
  c = base;
  c.v_bits = 1;
  refuses(c, 64, "v_bits 1");
  c = base;
  c.residual_length = 48;
  refuses(c, 64, "R not a multiple of G");
  c = base;
  c.residual_length = 0;
  refuses(c, 64, "R = 0");
  c = base;
  c.quant_group_size = 48;
  refuses(c, 64, "g does not divide d");
  c = base;
  c.group_size = 128;
  refuses(c, 64, "G > d for value groups");
  c = base;
  c.hadamard = true;
  refuses(c, 96, "hadamard with d = 96");
  c = base;
  c.lambda = -1;
  refuses(c, 64, "negative lambda");
  c = base;
  c.key_quant = GroupLayout::PerToken;
  c.quant_group_size = 16;
  refuses(c, 64, "per-token g < G");
  c = base;
  refuses(c, 63, "odd head_dim with pre-RoPE");
  EXPECT_THROW(parse_method("int3"), squat::Error);
  EXPECT_EQ(parse_method("squat"), CacheMethod::Squat);
  // Pre-RoPE without a RoPE description.
  EXPECT_THROW(LayerCache(base, 1, 64, nullptr), squat::Error);
}

// Named options (the command line's and the Python package's one translation): defaults that
// depend on the method and head_dim resolved as documented, bad names refused with the field.
TEST(KvStore, CacheConfigFromNamedOptions) {
  CacheOptions o;
  o.method = "squat";
  CacheConfig c = make_cache_config(o, 64);
  EXPECT_EQ(c.method, CacheMethod::Squat);
  EXPECT_EQ(c.key_rope, KeyRope::Pre);  // kivi/squat keep keys before RoPE
  EXPECT_EQ(c.quant_group_size, 16);    // head_dim/4 below head_dim 128
  EXPECT_EQ(make_cache_config(o, 128).quant_group_size, 64);
  o.quant_group_size = 32;
  o.key_quant = "per-token";
  o.query_rope = "before";
  c = make_cache_config(o, 64);
  EXPECT_EQ(c.quant_group_size, 32);
  EXPECT_EQ(c.key_quant, GroupLayout::PerToken);
  EXPECT_EQ(c.query_rope, QueryRope::Before);
  CacheOptions f16;
  EXPECT_EQ(make_cache_config(f16, 64).key_rope, KeyRope::Post);  // others after RoPE
  auto message = [](CacheOptions bad) -> std::string {
    try {
      make_cache_config(bad, 64);
    } catch (const squat::Error& e) {
      EXPECT_EQ(e.exit_status(), 2);
      return e.what();
    }
    return "accepted";
  };
  CacheOptions bad = o;
  bad.key_quant = "per-row";
  EXPECT_NE(message(bad).find("key_quant"), std::string::npos);
  bad = o;
  bad.key_rope = "middle";
  EXPECT_NE(message(bad).find("key_rope"), std::string::npos);
  bad = o;
  bad.method = "int3";
  EXPECT_NE(message(bad).find("int3"), std::string::npos);
  bad = o;
  bad.k_bits = 3;
  EXPECT_NE(message(bad).find("method 'squat'"), std::string::npos);
}

TEST(KvStore, SquatFlushWithoutStatesFails) {
  CacheConfig cfg;  // squat, R = 32
  KvCache cache(cfg, 1, 1, 64, make_rope(64, RopeLayout::Normal));
  const auto k = randn(40 * 64, 1), v = randn(40 * 64, 2);
  cache.layer(0).append(k.data(), v.data(), 31);  // no flush yet
  EXPECT_THROW(cache.layer(0).append(k.data(), v.data(), 1), squat::Error);
}

TEST(KvStore, WholeCacheStatesSaveAndLoad) {
  CacheConfig cfg;
  cfg.quant_group_size = 16;
  const int d = 64, n_kv = 2, n_heads = 4, layers = 3;
  KvCache a(cfg, layers, n_kv, d, make_rope(d, RopeLayout::Normal));
  const auto q = randn(20 * n_heads * d, 3);
  for (int l = 0; l < layers; ++l) a.layer(l).set_queries(q.data(), 20, n_heads);
  const std::string path = ::testing::TempDir() + "kvcache_states.bin";
  a.save_states(path);
  KvCache b(cfg, layers, n_kv, d, make_rope(d, RopeLayout::Normal));
  b.load_states(path);
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < n_kv; ++h)
      EXPECT_TRUE(a.layer(l).states()[std::size_t(h)] == b.layer(l).states()[std::size_t(h)]);
  b.reserve(64);
  EXPECT_GT(b.allocated_bytes(), 0u);
  EXPECT_EQ(b.bytes(), 0u);
  KvCache wrong(cfg, layers + 1, n_kv, d, make_rope(d, RopeLayout::Normal));
  EXPECT_THROW(wrong.load_states(path), squat::Error);

  // Tagged files load only where the expected tag matches; untagged ones load anywhere.
  a.save_states(path, "model A");
  EXPECT_NO_THROW(b.load_states(path, "model A"));
  EXPECT_NO_THROW(b.load_states(path));
  try {
    b.load_states(path, "model B");
    ADD_FAILURE() << "a file made for model A loaded as model B";
  } catch (const squat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("was made for model A, not for model B"),
              std::string::npos)
        << e.what();
  }
  a.save_states(path);
  EXPECT_NO_THROW(b.load_states(path, "model B"));
  std::remove(path.c_str());
}

TEST(KvStore, DefaultSquatBlockSize) {
  EXPECT_EQ(default_quant_group_size(64, GroupLayout::PerChannel, 32), 16);
  EXPECT_EQ(default_quant_group_size(128, GroupLayout::PerChannel, 32), 64);  // the reference's
  EXPECT_EQ(default_quant_group_size(256, GroupLayout::PerChannel, 32), 64);
  EXPECT_EQ(default_quant_group_size(80, GroupLayout::PerChannel, 32), 20);
  EXPECT_EQ(default_quant_group_size(64, GroupLayout::PerToken, 32), 32);  // a multiple of G
  EXPECT_EQ(default_quant_group_size(96, GroupLayout::PerToken, 32), 32);
  EXPECT_EQ(default_quant_group_size(64, GroupLayout::PerToken, 16), 16);
  for (int d : {32, 64, 96, 128, 256}) {  // always a valid configuration with the defaults
    for (GroupLayout layout : {GroupLayout::PerChannel, GroupLayout::PerToken}) {
      CacheConfig c;
      c.method = CacheMethod::Squat;
      c.key_quant = layout;
      c.quant_group_size = default_quant_group_size(d, layout, c.group_size);
      EXPECT_NO_THROW(c.validate(d)) << d;
    }
  }
}

// A long prompt appended at once leaves no full-precision buffers of its size behind: what the
// quantized cache holds afterwards is the quantized data plus a window of about R rows.
TEST(KvStore, PromptAppendLeavesNoPromptSizedBuffers) {
  const int d = 64, n_kv = 3, n_heads = 9;
  const std::size_t n = 2048;
  for (CacheMethod method : {CacheMethod::Kivi, CacheMethod::Squat, CacheMethod::Int4}) {
    CacheConfig cfg;
    cfg.method = method;
    cfg.quant_group_size = 32;
    KvCache cache(cfg, 1, n_kv, d, make_rope(d, RopeLayout::Normal));
    const auto k = randn(n * n_kv * d, 7), v = randn(n * n_kv * d, 8);
    if (method == CacheMethod::Squat) {
      const auto q = randn(n * n_heads * d, 9);
      cache.layer(0).set_queries(q.data(), n, n_heads);
    }
    cache.layer(0).append(k.data(), v.data(), n);
    const std::size_t fp16_bytes = n * std::size_t(n_kv) * d * 2 * sizeof(uint16_t);
    // Codes and parameters grow geometrically (at most 2x what they hold); a prompt-sized
    // window would add the whole fp16 size.
    EXPECT_LT(cache.layer(0).allocated_bytes(), 2 * cache.layer(0).bytes() + fp16_bytes / 8)
        << to_string(method) << ": bytes " << cache.layer(0).bytes() << ", fp16 " << fp16_bytes;
  }
}

TEST(KvStore, ReserveAndThreadPoolKeepResults) {
  const int d = 64, n_kv = 3, n_heads = 9;
  const std::size_t n = 150;
  CacheConfig cfg;
  cfg.quant_group_size = 32;
  const RopeSpec rope = make_rope(d, RopeLayout::Neox);
  const auto k = randn(n * n_kv * d, 41), v = randn(n * n_kv * d, 42);
  const auto q = randn(n * n_heads * d, 43);
  std::vector<int> pos(n);
  for (std::size_t i = 0; i < n; ++i) pos[i] = int(i);
  squat::ThreadPool pool(2);
  KvCache a(cfg, 1, n_kv, d, rope), b(cfg, 1, n_kv, d, rope);
  b.layer(0).reserve(n);
  const std::size_t reserved = b.layer(0).allocated_bytes();
  a.layer(0).set_queries(q.data(), n, n_heads);
  b.layer(0).set_queries(q.data(), n, n_heads, &pool);
  for (int h = 0; h < n_kv; ++h) {
    EXPECT_TRUE(a.layer(0).states()[std::size_t(h)] == b.layer(0).states()[std::size_t(h)]);
  }
  a.layer(0).append(k.data(), v.data(), n);
  for (std::size_t t = 0; t < n; ++t) {
    b.layer(0).append(k.data() + t * n_kv * d, v.data() + t * n_kv * d, 1);
  }
  EXPECT_EQ(b.layer(0).allocated_bytes(), reserved);  // no reallocation while decoding
  EXPECT_GE(b.layer(0).allocated_bytes(), b.layer(0).bytes());
  EXPECT_GT(b.layer(0).state_bytes(), 0u);
  std::vector<float> oa(q.size()), ob(q.size());
  a.layer(0).attend(q.data(), n, n_heads, pos.data(), oa.data());
  b.layer(0).attend(q.data(), n, n_heads, pos.data(), ob.data(), &pool);
  EXPECT_EQ(oa, ob);
  // Errors inside pool workers reach the caller.
  std::vector<float> bad = q;
  bad[5] = NAN;
  EXPECT_THROW(b.layer(0).set_queries(bad.data(), n, n_heads, &pool), squat::Error);
}

// The layers of a KvCache share append's scratch and the fused kernel's lane table: each
// layer, appended in turns as the model does (prompt pieces, then token by token), stores and
// attends exactly as a cache of its own (one-layer KvCaches fed the same data).
TEST(KvStore, LayersSharingScratchStoreWhatSeparateCachesStore) {
  const int d = 64, n_kv = 3, n_heads = 9, layers = 3;
  const std::size_t prompt = 100, n = 170;
  const RopeSpec rope = make_rope(d, RopeLayout::Normal);
  for (CacheMethod method : {CacheMethod::Kivi, CacheMethod::Squat, CacheMethod::Int4}) {
    CacheConfig cfg;
    cfg.method = method;
    cfg.quant_group_size = 32;
    KvCache shared(cfg, layers, n_kv, d, rope);
    std::vector<KvCache> own;
    std::vector<std::vector<float>> k, v, q;
    for (int l = 0; l < layers; ++l) {
      own.emplace_back(cfg, 1, n_kv, d, rope);
      k.push_back(randn(n * n_kv * d, 100 + l, 1.0f + float(l)));
      v.push_back(randn(n * n_kv * d, 200 + l));
      q.push_back(randn(n * n_heads * d, 300 + l));
    }
    auto feed = [&](std::size_t t0, std::size_t count) {
      for (int l = 0; l < layers; ++l) {
        const std::size_t at = t0 * n_kv * d;
        if (t0 == 0) {
          shared.layer(l).set_queries(q[l].data(), prompt, n_heads);
          own[l].layer(0).set_queries(q[l].data(), prompt, n_heads);
        }
        shared.layer(l).append(k[l].data() + at, v[l].data() + at, count);
        own[l].layer(0).append(k[l].data() + at, v[l].data() + at, count);
      }
    };
    feed(0, prompt);
    for (std::size_t t = prompt; t < n; ++t) feed(t, 1);
    std::vector<int> pos(n);
    for (std::size_t i = 0; i < n; ++i) pos[i] = int(i);
    for (int l = 0; l < layers; ++l) {
      for (int h = 0; h < n_kv; ++h) {
        std::vector<float> ks(n * d), vs(n * d), ko(n * d), vo(n * d);
        shared.layer(l).dequantize(h, ks.data(), vs.data());
        own[l].layer(0).dequantize(h, ko.data(), vo.data());
        EXPECT_EQ(ks, ko) << to_string(method) << " layer " << l << " head " << h;
        EXPECT_EQ(vs, vo) << to_string(method) << " layer " << l << " head " << h;
      }
      std::vector<float> os(q[l].size()), oo(q[l].size());
      shared.layer(l).attend(q[l].data(), n, n_heads, pos.data(), os.data());
      own[l].layer(0).attend(q[l].data(), n, n_heads, pos.data(), oo.data());
      EXPECT_EQ(os, oo) << to_string(method) << " layer " << l;
    }
  }
}

// A RoPE table of fixed size (shared by a server's sequences) holds the rows a growing table
// computes, and refuses to grow, naming both sizes.
TEST(KvStore, FixedRopeTableHasTheGrownRowsAndRefusesToGrow) {
  for (RopeLayout layout : {RopeLayout::Normal, RopeLayout::Neox}) {
    const RopeSpec rope = make_rope(64, layout);
    RopeTable grown(rope);
    grown.ensure(3000);
    const RopeTable fixed(rope, 2500);
    EXPECT_EQ(fixed.size(), 2500u);
    for (std::size_t p : {0u, 1u, 31u, 1000u, 2499u}) {
      EXPECT_TRUE(std::equal(fixed.c_row(p), fixed.c_row(p) + 64, grown.c_row(p)));
      EXPECT_TRUE(std::equal(fixed.s_row(p), fixed.s_row(p) + 64, grown.s_row(p)));
      EXPECT_TRUE(std::equal(fixed.cs_row(p), fixed.cs_row(p) + 64, grown.cs_row(p)));
    }
    RopeTable again(rope, 100);
    again.ensure(100);  // within: nothing to do
    try {
      again.ensure(101);
      ADD_FAILURE() << "a fixed table grew";
    } catch (const squat::Error& e) {
      EXPECT_NE(std::string(e.what()).find("holds 100 positions, a cache asked for 101"),
                std::string::npos)
          << e.what();
    }
  }
}

// add_queries: one call builds the same states as set_queries bit for bit (a prompt of one
// chunk is quantized as before); over several chunks the states are those of the Gram matrix
// of every query so far, the stored codes follow them, and end_queries frees the Gram
// matrices (counted by state_bytes while they live).
TEST(KvStore, AddQueriesRefinesTheSubspaceChunkByChunk) {
  const int d = 64, n_kv = 2, n_heads = 6, n_rep = n_heads / n_kv;
  const std::size_t n = 200, chunk = 64;
  CacheConfig cfg;
  cfg.quant_group_size = 16;
  cfg.lambda = 0.01;
  cfg.subspace_dim = 4;
  const RopeSpec rope = make_rope(d, RopeLayout::Normal);
  // Queries near 4 directions (a well-separated top-4 subspace, as real queries have), noise.
  auto q = randn(n * n_heads * d, 51, 0.05f);
  const auto dirs = randn(4 * std::size_t(d), 52), weights = randn(n * n_heads * 4, 53, 2.0f);
  for (std::size_t row = 0; row < n * n_heads; ++row)
    for (std::size_t j = 0; j < 4; ++j)
      for (int c = 0; c < d; ++c)
        q[row * d + std::size_t(c)] += weights[row * 4 + j] * dirs[j * d + std::size_t(c)];
  squat::ThreadPool pool(2);
  KvCache one(cfg, 1, n_kv, d, rope), whole(cfg, 1, n_kv, d, rope), chunked(cfg, 1, n_kv, d, rope);
  one.layer(0).set_queries(q.data(), n, n_heads);
  whole.layer(0).add_queries(q.data(), n, n_heads, &pool);
  for (int h = 0; h < n_kv; ++h) {
    EXPECT_TRUE(one.layer(0).states()[std::size_t(h)] == whole.layer(0).states()[std::size_t(h)]);
  }
  const std::size_t gram_bytes = std::size_t(n_kv) * d * d * sizeof(double);
  EXPECT_GE(whole.layer(0).state_bytes(), gram_bytes);
  for (std::size_t t0 = 0; t0 < n; t0 += chunk) {
    const std::size_t m = std::min(chunk, n - t0);
    chunked.layer(0).add_queries(q.data() + t0 * n_heads * d, m, n_heads, &pool);
    // Expected: the Gram matrix of the rows so far, written out in double.
    SubspaceOptions opt;
    opt.subspace_dim = cfg.subspace_dim;
    opt.lambda = cfg.lambda;
    opt.quant_group_size = cfg.quant_group_size;
    for (int h = 0; h < n_kv; ++h) {
      std::vector<double> g(std::size_t(d * d), 0.0);
      for (std::size_t i = 0; i < t0 + m; ++i) {
        for (int r = 0; r < n_rep; ++r) {
          const float* row = q.data() + (i * n_heads + std::size_t(h * n_rep + r)) * d;
          for (int a = 0; a < d; ++a)
            for (int b = 0; b < d; ++b) g[std::size_t(a * d + b)] += double(row[a]) * row[b];
        }
      }
      const SquatState want = SquatState::from_gram(g, (t0 + m) * n_rep, d, opt);
      const SquatState& got = chunked.layer(0).states()[std::size_t(h)];
      for (std::size_t i = 0; i < want.p().size(); ++i) {
        ASSERT_NEAR(got.p()[i], want.p()[i], 1e-6) << "chunk at " << t0 << " head " << h;
      }
    }
  }
  // The last chunk's states are those of all queries: the same subspace as one SVD of them.
  for (int h = 0; h < n_kv; ++h) {
    const auto& a = whole.layer(0).states()[std::size_t(h)].p();
    const auto& b = chunked.layer(0).states()[std::size_t(h)].p();
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-6);
  }
  const std::size_t with_gram = chunked.layer(0).state_bytes();
  chunked.layer(0).end_queries();
  EXPECT_EQ(chunked.layer(0).state_bytes(), with_gram - gram_bytes);
  EXPECT_TRUE(chunked.layer(0).has_states());
  // KIVI ignores queries.
  CacheConfig kivi = cfg;
  kivi.method = CacheMethod::Kivi;
  KvCache k(kivi, 1, n_kv, d, rope);
  k.layer(0).add_queries(q.data(), n, n_heads);
  EXPECT_FALSE(k.layer(0).has_states());
  EXPECT_EQ(k.layer(0).state_bytes(), 0u);
}

// attend's log-denominators: for every query and head, log sum_t exp(q·k_t / sqrt(d)) over
// the visible keys as stored (from dequantize), computed here in double.
TEST(KvAttention, LogDenominatorsMatchTheDequantizedKeys) {
  const int d = 64, n_kv = 2, n_heads = 4, n_rep = n_heads / n_kv;
  const std::size_t n = 150, n_q = 7;
  for (const CacheMethod method : {CacheMethod::Kivi, CacheMethod::F16}) {
    CacheConfig cfg;
    cfg.method = method;
    cfg.key_rope = KeyRope::Pre;
    const RopeSpec rope = make_rope(d, RopeLayout::Normal);
    KvCache cache(cfg, 1, n_kv, d, rope);
    const auto k = randn(n * n_kv * d, 61), v = randn(n * n_kv * d, 62);
    cache.layer(0).append(k.data(), v.data(), n);
    for (const std::size_t queries : {n_q, std::size_t(2)}) {  // prefill tiles and decode split
      const auto q = randn(queries * n_heads * d, 63);
      std::vector<int> pos(queries);
      for (std::size_t i = 0; i < queries; ++i) pos[i] = int(40 + 17 * i);
      std::vector<float> out(q.size()), lse(queries * n_heads);
      squat::ThreadPool pool(2);
      cache.layer(0).attend(q.data(), queries, n_heads, pos.data(), out.data(), &pool, lse.data());
      std::vector<float> keys(n * d), values(n * d);
      for (int h = 0; h < n_kv; ++h) {
        cache.layer(0).dequantize(h, keys.data(), values.data());
        for (std::size_t t = 0; t < n; ++t) {
          rope_rotate(keys.data() + t * d, d, int(t), rope.inv_freq.data(), rope.layout);
        }
        for (std::size_t i = 0; i < queries; ++i) {
          for (int r = 0; r < n_rep; ++r) {
            const std::size_t hq = std::size_t(h * n_rep + r);
            const float* qv = q.data() + (i * n_heads + hq) * d;
            double mx = -1e300;
            std::vector<double> s(std::size_t(pos[i]) + 1);
            for (std::size_t t = 0; t < s.size(); ++t) {
              double dot = 0;
              for (int c = 0; c < d; ++c) dot += double(qv[c]) * keys[t * d + std::size_t(c)];
              s[t] = dot / std::sqrt(double(d));
              mx = std::max(mx, s[t]);
            }
            double sum = 0;
            for (double x : s) sum += std::exp(x - mx);
            EXPECT_NEAR(lse[i * n_heads + hq], mx + std::log(sum), 1e-4)
                << to_string(method) << " query " << i << " head " << hq;
          }
        }
      }
    }
  }
}

// Decode attention split over KV heads x token ranges (flash-decoding) on 1..4 threads equals
// the double-precision reference, and the split does not depend on the number of threads.
TEST(KvAttention, SplitOverTokensMatchesReferenceOnAnyThreadCount) {
  const int d = 64, n_kv = 3, n_heads = 9;
  std::vector<std::unique_ptr<squat::ThreadPool>> pools;
  for (int t = 1; t <= 4; ++t) pools.push_back(std::make_unique<squat::ThreadPool>(t));
  for (CacheMethod m : {CacheMethod::F32, CacheMethod::F16, CacheMethod::Int8, CacheMethod::Int4,
                        CacheMethod::Kivi, CacheMethod::Squat}) {
    for (KeyRope kr : {KeyRope::Pre, KeyRope::Post}) {
      for (std::size_t n : {std::size_t(1), std::size_t(31), std::size_t(129), std::size_t(300),
                            std::size_t(1000), std::size_t(2100)}) {
        CacheConfig cfg = kivi_config(32, 32, 2);
        cfg.method = m;
        cfg.key_rope = kr;
        cfg.quant_group_size = 32;
        const RopeSpec rope = make_rope(d, RopeLayout::Normal);
        KvCache cache(cfg, 1, n_kv, d, rope);
        LayerCache& layer = cache.layer(0);
        const auto k = randn(n * n_kv * d, 50 + n), v = randn(n * n_kv * d, 60 + n);
        const std::size_t prompt = std::min<std::size_t>(n, 64);
        const auto pq = randn(prompt * n_heads * d, 70, 2.0f);
        layer.set_queries(pq.data(), prompt, n_heads);
        layer.append(k.data(), v.data(), prompt);
        for (std::size_t t = prompt; t < n; ++t) {
          layer.append(k.data() + t * n_kv * d, v.data() + t * n_kv * d, 1);
        }
        // 1 query (decode) and a few queries at different positions (still split).
        const int last = int(n) - 1;
        for (const std::vector<int>& pos :
             {std::vector<int>{last}, std::vector<int>{last, last / 2, 0, last - 40}}) {
          const auto q = randn(pos.size() * n_heads * d, 80 + n, 1.5f);
          std::vector<float> ref(q.size());
          layer.attend_reference(q.data(), pos.size(), n_heads, pos.data(), ref.data());
          std::vector<float> first;
          for (auto& pool : pools) {
            std::vector<float> out(q.size(), 7.0f);
            layer.attend(q.data(), pos.size(), n_heads, pos.data(), out.data(), pool.get());
            EXPECT_LT(max_abs_diff(out, ref), 2e-4)
                << cfg.describe() << " n=" << n << " queries=" << pos.size()
                << " threads=" << pool->size();
            if (first.empty()) {
              first = out;
            } else {
              EXPECT_EQ(out, first) << cfg.describe() << " n=" << n;
            }
          }
          std::vector<float> single(q.size());
          layer.attend(q.data(), pos.size(), n_heads, pos.data(), single.data());
          EXPECT_EQ(single, first) << cfg.describe() << " n=" << n << " (no pool)";
        }
      }
    }
  }
}

// Prefill through the store (more than 4 queries: flash-attention tiles over KV head x query
// block) equals the double-precision reference for every method, with GQA, queries that are
// not in order, beyond the cache or before it, and the same result on 1..3 threads.
TEST(KvAttention, PrefillTilesMatchReferenceOnAnyThreadCount) {
  const int d = 64, n_kv = 2, n_heads = 6;
  const std::size_t n = 203;
  std::vector<std::unique_ptr<squat::ThreadPool>> pools;
  for (int t = 1; t <= 3; ++t) pools.push_back(std::make_unique<squat::ThreadPool>(t));
  for (CacheMethod m : {CacheMethod::F32, CacheMethod::F16, CacheMethod::Int8, CacheMethod::Int4,
                        CacheMethod::Kivi, CacheMethod::Squat}) {
    for (KeyRope kr : {KeyRope::Pre, KeyRope::Post}) {
      CacheConfig cfg = kivi_config(32, 32, 4);
      cfg.method = m;
      cfg.key_rope = kr;
      cfg.quant_group_size = 32;
      cfg.hadamard = m == CacheMethod::Kivi;
      const RopeSpec rope = make_rope(d, RopeLayout::Neox);
      KvCache cache(cfg, 1, n_kv, d, rope);
      LayerCache& layer = cache.layer(0);
      const auto k = randn(n * n_kv * d, 31), v = randn(n * n_kv * d, 32);
      const auto pq = randn(n * n_heads * d, 33, 2.0f);
      layer.set_queries(pq.data(), n, n_heads);
      layer.append(k.data(), v.data(), n);
      // A whole prompt's positions (0..n-1), then a shuffled batch with out-of-range ones.
      std::vector<int> all(n);
      for (std::size_t i = 0; i < n; ++i) all[i] = int(i);
      std::vector<int> mixed{150, 3, 202, -1, 64, 63, 500, 0, 17, 100, 101, 199, 31};
      for (const std::vector<int>& pos : {all, mixed}) {
        const auto q = randn(pos.size() * n_heads * d, 34 + pos.size(), 1.5f);
        std::vector<float> ref(q.size());
        layer.attend_reference(q.data(), pos.size(), n_heads, pos.data(), ref.data());
        std::vector<float> first;
        for (auto& pool : pools) {
          std::vector<float> out(q.size(), 7.0f);
          layer.attend(q.data(), pos.size(), n_heads, pos.data(), out.data(), pool.get());
          EXPECT_LT(max_abs_diff(out, ref), 2e-4)
              << cfg.describe() << " queries=" << pos.size() << " threads=" << pool->size();
          if (first.empty()) {
            first = out;
          } else {
            EXPECT_EQ(out, first) << cfg.describe() << " queries=" << pos.size();
          }
        }
        std::vector<float> single(q.size());
        layer.attend(q.data(), pos.size(), n_heads, pos.data(), single.data());
        EXPECT_EQ(single, first) << cfg.describe() << " (no pool)";
      }
    }
  }
}

// The store's semantics for methods without the fused kernel: a batch of queries (prefill
// tiles) gets exactly the bits each query gets alone (decode), while decode does not split the
// tokens (<= 128), so a prompt fed at once or token by token attends identically.
TEST(KvAttention, PrefillTilesEqualSingleQueriesBitForBit) {
  const int d = 64, n_kv = 3, n_heads = 9;
  const std::size_t n = 120;
  squat::ThreadPool pool(2);
  for (CacheMethod m : {CacheMethod::F32, CacheMethod::F16, CacheMethod::Int8, CacheMethod::Int4}) {
    for (KeyRope kr : {KeyRope::Pre, KeyRope::Post}) {
      CacheConfig cfg;
      cfg.method = m;
      cfg.key_rope = kr;
      KvCache cache(cfg, 1, n_kv, d, make_rope(d, RopeLayout::Normal));
      LayerCache& layer = cache.layer(0);
      const auto k = randn(n * n_kv * d, 41), v = randn(n * n_kv * d, 42);
      layer.append(k.data(), v.data(), n);
      std::vector<int> pos(n);
      for (std::size_t i = 0; i < n; ++i) pos[i] = int(i);
      const auto q = randn(n * n_heads * d, 43, 1.5f);
      std::vector<float> batch(q.size()), one(std::size_t(n_heads * d));
      layer.attend(q.data(), n, n_heads, pos.data(), batch.data(), &pool);
      for (std::size_t i = 0; i < n; ++i) {
        layer.attend(q.data() + i * n_heads * d, 1, n_heads, &pos[i], one.data(), &pool);
        const std::vector<float> row(batch.begin() + std::ptrdiff_t(i * n_heads * d),
                                     batch.begin() + std::ptrdiff_t((i + 1) * n_heads * d));
        ASSERT_EQ(one, row) << cfg.describe() << " query " << i << " differs by "
                            << max_abs_diff(one, row);
      }
    }
  }
}

namespace {
// Largest |a - b| / (1 + |b|); equal values (also an untouched row's -inf max) count as 0.
double flash_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    const double e = std::fabs(double(a[i]) - double(b[i])) / (1.0 + std::fabs(double(b[i])));
    worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
  }
  return worst;
}
}  // namespace

// flash_tile against flash_tile_reference: random tiles with carried partials, rows not a
// multiple of 4, keys not a multiple of the vector width, strided keys/values, masked rows.
TEST(KvAttention, FlashTileKernelMatchesScalarReferenceOnEveryTarget) {
  std::mt19937_64 rng(5);
  int checked = 0;
  for (std::size_t d : {std::size_t(8), std::size_t(20), std::size_t(64), std::size_t(128)}) {
    for (std::size_t rows : {std::size_t(1), std::size_t(3), std::size_t(4), std::size_t(13)}) {
      for (std::size_t nb :
           {std::size_t(1), std::size_t(7), std::size_t(32), std::size_t(64), std::size_t(70)}) {
        const std::size_t ld = d + 3, stride = d + 2;
        const auto qs = randn(rows * d, 10 + std::size_t(checked), 2.0f);
        const auto k = randn(nb * ld, 20 + std::size_t(checked), 1.0f);
        const auto v = randn(nb * ld, 30 + std::size_t(checked), 1.0f);
        std::vector<std::size_t> vis(rows);
        std::vector<float> part(rows * stride);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (std::size_t r = 0; r < rows; ++r) {
          vis[r] = r == 2 ? 0 : (r * 5 + nb) % (nb + 1);  // causal prefixes, one masked row
          float* p = part.data() + r * stride;
          if (r % 2 == 0) {  // fresh row
            p[0] = -std::numeric_limits<float>::infinity();
            std::fill(p + 1, p + stride, 0.0f);
          } else {  // carried from earlier tiles
            p[0] = 1.5f;
            p[1] = 2.0f;
            for (std::size_t c = 0; c < d; ++c) p[2 + c] = normal(rng);
          }
        }
        std::vector<float> want = part;
        const float scale = 1.0f / std::sqrt(float(d));
        squat::kv::simd::flash_tile_reference(qs.data(), rows, vis.data(), k.data(), ld, v.data(),
                                              ld, nb, d, scale, want.data(), stride);
        squat::kernels::for_each_simd_target([&] {
          std::vector<float> got = part;
          std::vector<float> work(squat::kv::simd::flash_work_floats(rows, nb, d));
          squat::kv::simd::flash_tile(qs.data(), rows, vis.data(), k.data(), ld, v.data(), ld, nb,
                                      d, scale, got.data(), stride, work.data());
          ASSERT_LT(flash_rel_diff(got, want), 1e-5)
              << "d " << d << " rows " << rows << " nb " << nb;
        });
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 80);
}

// The fused decode kernel (token-lane keys, RoPE by the block offset, online softmax, values in
// registers) against its scalar reference on random codes, all bit widths, RoPE layouts, row
// counts and partial blocks, on every SIMD target compiled in that this CPU runs (Highway's
// dispatch pinned to one target at a time).
TEST(KvAttention, FusedBlockKernelMatchesScalarReferenceOnEveryTarget) {
  // Blocks start near 0, 1K, 8K and 30K: the kernel rotates the query by the block start and
  // the keys by their offset in it (R_b0 R_j), the reference each key by its own position's
  // row (R_(b0+j)), so they agree only if the tables' angles compose (squat::rope_cos_sin).
  const std::size_t kStarts[] = {0, 1024, 8192, 30016};
  std::vector<RopeTable> tables;  // [D 64, 128] x [Normal, Neox], built once
  for (int D : {64, 128}) {
    for (RopeLayout layout : {RopeLayout::Normal, RopeLayout::Neox}) {
      tables.emplace_back(make_rope(D, layout));
      tables.back().ensure(30016 + 7 * 32);
    }
  }
  int targets_run = 0;
  double worst = 0.0;
  for (const int64_t target : squat::kernels::simd_targets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    std::mt19937_64 rng(99);
    std::uniform_int_distribution<int> byte(0, 255);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    int checked = 0, refused = 0;
    for (std::size_t D : {std::size_t(64), std::size_t(128)}) {
      for (std::size_t G : {std::size_t(16), std::size_t(32)}) {
        for (int kbits : {2, 4, 8}) {
          for (int vbits : {2, 4, 8}) {
            for (int rope_kind = 0; rope_kind < 3; ++rope_kind) {  // none, normal, neox
              for (std::size_t rows :
                   {std::size_t(1), std::size_t(3), std::size_t(5), std::size_t(9)}) {
                // Mostly whole groups; some blocks end early (a partial vector of tokens).
                const std::size_t nb = checked % 5 == 4 ? G - 3 : G;
                std::vector<uint8_t> kc(nb * D + 64), vc(nb * D + 64);
                for (auto& x : kc) x = uint8_t(byte(rng));
                for (auto& x : vc) x = uint8_t(byte(rng));
                std::vector<float> ks(D), km(D), vs(nb * D / G), vm(nb * D / G);
                for (auto& x : ks) x = std::fabs(normal(rng)) * 0.3f;
                for (auto& x : km) x = normal(rng);
                for (auto& x : vs) x = std::fabs(normal(rng)) * 0.3f;
                for (auto& x : vm) x = normal(rng);
                const RopeTable& table = tables[(D == 64 ? 0 : 2) + (rope_kind == 2 ? 1 : 0)];
                std::vector<float> lanes(D * G);
                squat::kv::simd::rope_lane_table(table.spec().inv_freq.data(), D / 2, G,
                                                 lanes.data());
                // 8-bit keys (codes to 255, keys to ~75) make an angle error show most.
                const std::size_t p0 =
                    kStarts[std::size_t(checked) % 4] + nb * std::size_t(checked % 7);
                squat::kv::simd::FusedBlock b;
                b.kcodes = kc.data();
                b.vcodes = vc.data();
                b.kscale = ks.data();
                b.kmin = km.data();
                b.vscale = vs.data();
                b.vmin = vm.data();
                if (rope_kind > 0) {
                  b.rope_cs = table.cs_row(p0);
                  b.rope_lanes = lanes.data();
                  b.neox = rope_kind == 2;
                }
                b.kbits = kbits;
                b.vbits = vbits;
                b.G = G;
                b.nb = nb;
                b.d = D;
                const auto qs = randn(rows * D, 100 + std::size_t(checked), 0.5f);
                std::vector<const float*> q(rows);
                std::vector<std::size_t> vis(rows);
                std::vector<float> pf(rows * (D + 2)), pr;
                for (std::size_t r = 0; r < rows; ++r) {
                  q[r] = qs.data() + r * D;
                  vis[r] = r == 1 ? 0 : (r * 7 + nb) % (nb + 1);
                  float* p = pf.data() + r * (D + 2);
                  if (r % 2 == 0) {  // fresh partial
                    p[0] = -std::numeric_limits<float>::infinity();
                    std::fill(p + 1, p + D + 2, 0.0f);
                  } else {  // partial from earlier blocks
                    p[0] = 2.0f;
                    p[1] = 3.0f;
                    for (std::size_t c = 0; c < D; ++c) p[2 + c] = normal(rng);
                  }
                }
                pr = pf;
                std::vector<float*> partf(rows), partr(rows);
                for (std::size_t r = 0; r < rows; ++r) {
                  partf[r] = pf.data() + r * (D + 2);
                  partr[r] = pr.data() + r * (D + 2);
                }
                std::vector<float> work(squat::kv::simd::fused_work_floats(nb, D, G));
                const float scale = 1.0f / std::sqrt(float(D));
                if (!squat::kv::simd::fused_block(b, q.data(), vis.data(), rows, scale,
                                                  partf.data(), work.data())) {
                  ++refused;  // shape unsupported at this vector width: the store falls back
                  continue;
                }
                squat::kv::simd::fused_block_reference(b, q.data(), vis.data(), rows, scale,
                                                       partr.data());
                for (std::size_t i = 0; i < pf.size(); ++i) {
                  const double err =
                      std::fabs(double(pf[i]) - double(pr[i])) / (1.0 + std::fabs(double(pr[i])));
                  worst = std::max(worst, err);
                  // 6e-5: measured at most 3.4e-5 (float sums of 8-bit keys' logits) from any
                  // start; angles rounded to float before cos/sin gave 1.9e-4 from 1K, 2.3e-3
                  // from 8K and 1.6e-2 from 30K.
                  ASSERT_LT(err, 6e-5)
                      << "D=" << D << " G=" << G << " k" << kbits << "v" << vbits
                      << " rope=" << rope_kind << " rows=" << rows << " from " << p0 << " at " << i;
                }
                ++checked;
              }
            }
          }
        }
      }
    }
    std::printf("  %s: %d shapes checked, %d refused, worst relative difference %.2e\n",
                hwy::TargetName(target), checked, refused, worst);
    if (target != HWY_SCALAR) {
      // Every vector target runs the shapes the models use (2/4-bit, d 64 and 128).
      EXPECT_GE(checked, 2 * 2 * 2 * 2 * 3 * 4) << "refused " << refused;
      ++targets_run;
    }
  }
  hwy::SetSupportedTargetsForTest(0);
  EXPECT_GT(targets_run, 0);
}
