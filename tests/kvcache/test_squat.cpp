// SQuat: double-precision scalar reference of SQUAT.md §2, KIVI equivalence, quality on
// synthetic data, and state files.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <vector>

#include "core/error.h"
#include "squat/kv_quant.h"

using namespace squat::kv;

namespace {

using Mat = Eigen::MatrixXd;

// Keys with a few outlier channels; queries concentrated in a few directions.
struct Synthetic {
  std::size_t n, d, rows;
  std::vector<float> keys, queries;
};

Synthetic make_synthetic(std::size_t n, std::size_t d, std::size_t rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Synthetic s{n, d, rows, std::vector<float>(n * d), std::vector<float>(rows * d)};
  std::vector<float> chan_scale(d, 1.0f);
  for (std::size_t c = 0; c < d; c += 13) chan_scale[c] = 8.0f;  // outlier channels
  std::vector<float> chan_mean(d);
  for (auto& m : chan_mean) m = normal(rng);
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t c = 0; c < d; ++c)
      s.keys[t * d + c] = chan_mean[c] + chan_scale[c] * normal(rng);
  const std::size_t k = 4;  // query directions
  std::vector<float> dirs(k * d);
  for (auto& v : dirs) v = normal(rng);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t c = 0; c < d; ++c) s.queries[i * d + c] = 0.05f * normal(rng);
    for (std::size_t j = 0; j < k; ++j) {
      const float w = 2.0f * normal(rng);
      for (std::size_t c = 0; c < d; ++c) s.queries[i * d + c] += w * dirs[j * d + c];
    }
  }
  return s;
}

double logit_error(const std::vector<float>& q, std::size_t rows, const std::vector<float>& k,
                   const std::vector<float>& khat, std::size_t n, std::size_t d) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t t = 0; t < n; ++t) {
      double a = 0, e = 0;
      for (std::size_t c = 0; c < d; ++c) {
        a += double(q[i * d + c]) * k[t * d + c];
        e += double(q[i * d + c]) * (double(khat[t * d + c]) - k[t * d + c]);
      }
      num += e * e;
      den += a * a;
    }
  }
  return std::sqrt(num / den);
}

double mse(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s / double(a.size());
}

// ---- Scalar double-precision reference ----------------------------------------------------

// A = I + λ Q̂ᵀQ̂ with Q̂ from the eigen-decomposition of QᵀQ (QᵀQ = V S² Vᵀ).
Mat ref_metric(const std::vector<float>& q, std::size_t rows, std::size_t d, int r, double lambda) {
  Mat G = Mat::Zero(Eigen::Index(d), Eigen::Index(d));
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t a = 0; a < d; ++a)
      for (std::size_t b = 0; b < d; ++b)
        G(Eigen::Index(a), Eigen::Index(b)) += double(q[i * d + a]) * double(q[i * d + b]);
  Eigen::SelfAdjointEigenSolver<Mat> eig(G);
  Mat A = Mat::Identity(Eigen::Index(d), Eigen::Index(d));
  for (int j = 0; j < r; ++j) {
    const Eigen::Index src = Eigen::Index(d) - 1 - j;  // ascending eigenvalues
    const Eigen::VectorXd v = eig.eigenvectors().col(src);
    A += lambda * eig.eigenvalues()(src) * v * v.transpose();
  }
  return A;
}

struct RefChain {
  Mat P;
  std::vector<Mat> H;  // H[t-1] = H_t
};

RefChain ref_chain(const Mat& A, int g) {
  const int d = int(A.rows()), T = d / g;
  RefChain rc;
  rc.P = A.inverse();
  rc.H.resize(std::size_t(std::max(T - 1, 0)));
  Mat At = A;
  for (int t = T - 1; t >= 1; --t) {
    const int c = t * g;
    Mat M = At.topLeftCorner(c, c), N = At.block(c, 0, g, c), O = At.block(c, c, g, g);
    O += 1e-7 * Mat::Identity(g, g);
    At = M - N.transpose() * O.inverse() * N;
    rc.H[std::size_t(t - 1)] = At.rightCols(g);
  }
  return rc;
}

// Literal block-sequential quantizer in double, per-channel groups, fp32 params.
std::vector<int> ref_quantize(const std::vector<float>& keys, std::size_t n, std::size_t d,
                              int bits, int G, int g, const RefChain& rc,
                              std::vector<double>* khat_out) {
  Mat target(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(d));
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t c = 0; c < d; ++c) target(Eigen::Index(t), Eigen::Index(c)) = keys[t * d + c];
  std::vector<int> codes(n * d);
  std::vector<double> khat(n * d);
  const int T = int(d) / g, levels = (1 << bits) - 1;
  for (int i = 1; i <= T; ++i) {
    const int c0 = (i - 1) * g;
    Mat E(Eigen::Index(n), g);
    for (int c = c0; c < c0 + g; ++c) {
      for (std::size_t t0 = 0; t0 < n; t0 += std::size_t(G)) {
        double mn = 1e300, mx = -1e300;
        for (std::size_t t = t0; t < t0 + std::size_t(G); ++t) {
          mn = std::min(mn, target(Eigen::Index(t), c));
          mx = std::max(mx, target(Eigen::Index(t), c));
        }
        const double scale = (mx - mn) / levels;
        for (std::size_t t = t0; t < t0 + std::size_t(G); ++t) {
          int code = 0;
          if (scale > 0) {
            code = int(std::nearbyint((target(Eigen::Index(t), c) - mn) / scale));
            code = std::clamp(code, 0, levels);
          }
          codes[t * d + std::size_t(c)] = code;
          khat[t * d + std::size_t(c)] = code * scale + mn;
          E(Eigen::Index(t), c - c0) = khat[t * d + std::size_t(c)] - target(Eigen::Index(t), c);
        }
      }
    }
    if (i < T) {
      const int F = i * g;
      const Mat corr =
          E * rc.H[std::size_t(i - 1)].transpose() * rc.P.block(F, 0, int(d) - F, F).transpose();
      target.rightCols(int(d) - F) += corr;
    }
  }
  if (khat_out) *khat_out = khat;
  return codes;
}

}  // namespace

TEST(Squat, PrecomputationMatchesReference) {
  const std::size_t d = 64;
  Synthetic s = make_synthetic(32, d, 300, 5);
  SubspaceOptions opt;
  opt.subspace_dim = 20;
  opt.lambda = 0.001;
  opt.quant_group_size = 16;
  const SquatState st = SquatState::from_queries(s.queries.data(), s.rows, int(d), opt);
  const Mat A = ref_metric(s.queries, s.rows, d, 20, 0.001);
  const RefChain rc = ref_chain(A, 16);
  ASSERT_FALSE(st.is_identity());
  ASSERT_EQ(st.n_blocks(), 4);
  Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> P(st.p().data(), 64, 64);
  EXPECT_LT((P - rc.P).norm() / rc.P.norm(), 1e-9);
  for (int t = 1; t < 4; ++t) {
    Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> H(st.h(t).data(), t * 16, 16);
    EXPECT_LT((H - rc.H[std::size_t(t - 1)]).norm() / rc.H[std::size_t(t - 1)].norm(), 1e-9) << t;
    // A_t is the inverse of the top-left t*g block of P (up to the 1e-7 regularization).
    const Mat At_inv = rc.P.topLeftCorner(t * 16, t * 16).inverse();
    EXPECT_LT((At_inv.rightCols(16) - rc.H[std::size_t(t - 1)]).norm() / At_inv.norm(), 1e-5);
  }
}

TEST(Squat, FastPathAgreesWithDoubleReference) {
  const std::size_t n = 64, d = 128;
  const int g = 32, G = 32;
  Synthetic s = make_synthetic(n, d, 400, 9);
  SubspaceOptions opt;
  opt.subspace_dim = 20;
  opt.lambda = 0.001;
  opt.quant_group_size = g;
  for (int bits : {2, 4}) {
    const SquatState st = SquatState::from_queries(s.queries.data(), s.rows, int(d), opt);
    QuantizedChunk q = squat_quantize_chunk(s.keys.data(), n, d, bits, G, GroupLayout::PerChannel,
                                            ParamType::F32, st);
    const RefChain rc = ref_chain(ref_metric(s.queries, s.rows, d, 20, 0.001), g);
    std::vector<double> ref_khat;
    const std::vector<int> ref_codes = ref_quantize(s.keys, n, d, bits, G, g, rc, &ref_khat);
    std::size_t same = 0;
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t c = 0; c < d; ++c) same += q.code(t, c) == ref_codes[t * d + c];
    std::printf("bits %d: %zu of %zu codes equal to the double reference\n", bits, same, n * d);
    EXPECT_GE(double(same) / double(n * d), 0.995) << "bits " << bits;
    std::vector<float> khat(n * d), rk(ref_khat.begin(), ref_khat.end());
    dequantize_chunk(q, khat.data());
    const double e_fast = logit_error(s.queries, s.rows, s.keys, khat, n, d);
    const double e_ref = logit_error(s.queries, s.rows, s.keys, rk, n, d);
    EXPECT_NEAR(e_fast, e_ref, 0.02 * e_ref) << "bits " << bits;
  }
}

TEST(Squat, LambdaZeroOrRankZeroIsKiviBitForBit) {
  const std::size_t n = 64, d = 64;
  Synthetic s = make_synthetic(n, d, 100, 2);
  for (GroupLayout layout : {GroupLayout::PerChannel, GroupLayout::PerToken}) {
    for (int bits : {2, 4, 8}) {
      const QuantizedChunk kivi =
          quantize_chunk(s.keys.data(), n, d, bits, 32, layout, ParamType::F16);
      std::vector<SquatState> states;
      SubspaceOptions opt;
      opt.quant_group_size = 32;
      opt.lambda = 0.0;
      states.push_back(SquatState::from_queries(s.queries.data(), s.rows, int(d), opt));
      opt.lambda = 0.5;
      opt.subspace_dim = 0;
      states.push_back(SquatState::from_queries(s.queries.data(), s.rows, int(d), opt));
      // The general path with A = I (W = 0) must also leave the keys untouched.
      std::vector<double> eye(d * d, 0.0);
      for (std::size_t i = 0; i < d; ++i) eye[i * d + i] = 1.0;
      states.push_back(SquatState::from_metric(eye, int(d), 32));
      if (layout == GroupLayout::PerChannel) {
        // Blocks of 2 channels: 2-bit codes of neighbouring blocks share a byte.
        states.push_back(SquatState::from_metric(eye, int(d), 2));
      }
      EXPECT_TRUE(states[0].is_identity());
      EXPECT_TRUE(states[1].is_identity());
      EXPECT_FALSE(states[2].is_identity());
      for (const SquatState& st : states) {
        const QuantizedChunk sq =
            squat_quantize_chunk(s.keys.data(), n, d, bits, 32, layout, ParamType::F16, st);
        EXPECT_EQ(sq.codes, kivi.codes);
        EXPECT_EQ(sq.scale, kivi.scale);
        EXPECT_EQ(sq.min, kivi.min);
      }
    }
  }
}

TEST(Squat, EightBitIsCloseToInput) {
  const std::size_t n = 64, d = 128;
  Synthetic s = make_synthetic(n, d, 200, 4);
  SubspaceOptions opt;
  opt.quant_group_size = 32;
  opt.lambda = 0.001;
  const SquatState st = SquatState::from_queries(s.queries.data(), s.rows, int(d), opt);
  QuantizedChunk q =
      squat_quantize_chunk(s.keys.data(), n, d, 8, 32, GroupLayout::PerChannel, ParamType::F16, st);
  std::vector<float> khat(n * d);
  dequantize_chunk(q, khat.data());
  double var = 0;
  for (float k : s.keys) var += double(k) * k;
  var /= double(s.keys.size());
  EXPECT_LT(mse(khat, s.keys) / var, 1e-4);
  // 8-bit steps are range/255 (outlier channels have a range of ~50): the logit error is
  // small, and no worse than KIVI's at 8 bits.
  const QuantizedChunk kq =
      quantize_chunk(s.keys.data(), n, d, 8, 32, GroupLayout::PerChannel, ParamType::F16);
  std::vector<float> kk(n * d);
  dequantize_chunk(kq, kk.data());
  const double es = logit_error(s.queries, s.rows, s.keys, khat, n, d);
  EXPECT_LT(es, 5e-3);
  EXPECT_LE(es, logit_error(s.queries, s.rows, s.keys, kk, n, d));
}

TEST(Squat, BeatsKiviOnLogitsAtTwoBits) {
  const std::size_t n = 256, d = 128;
  Synthetic s = make_synthetic(n, d, 512, 17);
  for (GroupLayout layout : {GroupLayout::PerChannel, GroupLayout::PerToken}) {
    SubspaceOptions opt;
    opt.quant_group_size = 32;
    opt.subspace_dim = 20;
    opt.lambda = 0.001;
    const SquatState st = SquatState::from_queries(s.queries.data(), s.rows, int(d), opt);
    const QuantizedChunk kq = quantize_chunk(s.keys.data(), n, d, 2, 32, layout, ParamType::F16);
    const QuantizedChunk sq =
        squat_quantize_chunk(s.keys.data(), n, d, 2, 32, layout, ParamType::F16, st);
    std::vector<float> kk(n * d), ss(n * d);
    dequantize_chunk(kq, kk.data());
    dequantize_chunk(sq, ss.data());
    const double ek = logit_error(s.queries, s.rows, s.keys, kk, n, d);
    const double es = logit_error(s.queries, s.rows, s.keys, ss, n, d);
    RecordProperty("kivi_logit_error", std::to_string(ek));
    RecordProperty("squat_logit_error", std::to_string(es));
    std::printf("layout %s: logit error kivi %.4f squat %.4f; key mse kivi %.4f squat %.4f\n",
                layout == GroupLayout::PerChannel ? "per-channel" : "per-token", ek, es,
                mse(kk, s.keys), mse(ss, s.keys));
    EXPECT_LT(es, 0.6 * ek);
  }
}

TEST(Squat, PowerMethodFindsTheSameSubspace) {
  const std::size_t d = 64;
  Synthetic s = make_synthetic(32, d, 300, 8);
  int r1 = 0, r2 = 0;
  const std::vector<double> svd =
      query_subspace(s.queries.data(), s.rows, int(d), 4, false, 0, &r1);
  const std::vector<double> pw = query_subspace(s.queries.data(), s.rows, int(d), 4, true, 30, &r2);
  ASSERT_EQ(r1, 4);
  ASSERT_EQ(r2, 4);
  Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> A(svd.data(), 4, 64),
      B(pw.data(), 4, 64);
  const Mat ga = A.transpose() * A, gb = B.transpose() * B;  // sign-independent
  EXPECT_LT((ga - gb).norm() / ga.norm(), 1e-6);
}

// Worked example: Q = diag(3, 2, 1) in the first three of four channels (plus a zero row).
// Its top-2 right singular vectors are e1 and e2 with singular values 3 and 2, so
// Q̂ᵀQ̂ = diag(9, 4, 0, 0) whatever the signs; G = QᵀQ = diag(9, 4, 1, 0) must give the same.
TEST(Squat, GramSubspaceEqualsSvdOnAWorkedExample) {
  const std::vector<float> q = {3, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
  const std::vector<double> gram = {9, 0, 0, 0, 0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
  int r_svd = 0, r_gram = 0;
  const std::vector<double> a = query_subspace(q.data(), 4, 4, 2, false, 0, &r_svd);
  const std::vector<double> b = gram_subspace(gram, 4, 4, 2, false, 0, &r_gram);
  ASSERT_EQ(r_svd, 2);
  ASSERT_EQ(r_gram, 2);
  const double expected[4] = {9, 4, 0, 0};
  for (const std::vector<double>* qh : {&a, &b}) {
    Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> Qh(qh->data(), 2, 4);
    const Mat m = Qh.transpose() * Qh;  // sign- and rotation-independent
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) EXPECT_NEAR(m(i, j), i == j ? expected[i] : 0.0, 1e-9);
    }
  }
  EXPECT_THROW(gram_subspace(std::vector<double>(15), 4, 4, 2, false, 0, nullptr), squat::Error);
}

// On queries with a few dominant directions: the subspace from G = QᵀQ accumulated over row
// chunks equals the SVD of the whole Q (projector onto the subspace, scaled by S²), and the
// states built from either quantize keys alike.
TEST(Squat, GramOfChunksGivesTheSubspaceOfAllQueries) {
  const std::size_t d = 64, rows = 900;
  Synthetic s = make_synthetic(64, d, rows, 11);
  std::vector<double> gram(d * d, 0.0);
  for (std::size_t r0 = 0; r0 < rows; r0 += 256) {  // chunks of 256 rows, the last shorter
    const std::size_t r1 = std::min(rows, r0 + 256);
    for (std::size_t i = r0; i < r1; ++i)
      for (std::size_t a = 0; a < d; ++a)
        for (std::size_t b = 0; b < d; ++b)
          gram[a * d + b] += double(s.queries[i * d + a]) * double(s.queries[i * d + b]);
  }
  for (const bool power : {false, true}) {
    int r1 = 0, r2 = 0;
    const std::vector<double> svd =
        query_subspace(s.queries.data(), rows, int(d), 6, power, 30, &r1);
    const std::vector<double> from_gram = gram_subspace(gram, rows, int(d), 6, power, 30, &r2);
    ASSERT_EQ(r1, 6);
    ASSERT_EQ(r2, 6);
    Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> A(svd.data(), 6, 64),
        B(from_gram.data(), 6, 64);
    const Mat ga = A.transpose() * A, gb = B.transpose() * B;
    EXPECT_LT((ga - gb).norm() / ga.norm(), 1e-6) << (power ? "power method" : "svd");
  }
  SubspaceOptions opt;
  opt.subspace_dim = 6;
  opt.lambda = 0.05;
  opt.quant_group_size = 16;
  const SquatState a = SquatState::from_queries(s.queries.data(), rows, int(d), opt);
  const SquatState b = SquatState::from_gram(gram, rows, int(d), opt);
  for (std::size_t i = 0; i < d * d; ++i) ASSERT_NEAR(a.p()[i], b.p()[i], 1e-9);
  // No rows or λ = 0: no correction.
  EXPECT_TRUE(SquatState::from_gram(gram, 0, int(d), opt).is_identity());
  std::vector<double> bad = gram;
  bad[3] = NAN;
  EXPECT_THROW(SquatState::from_gram(bad, rows, int(d), opt), squat::Error);
}

TEST(Squat, StateFileRoundTripsAndRejectsCorruption) {
  const std::size_t d = 64;
  Synthetic s = make_synthetic(32, d, 100, 3);
  SubspaceOptions opt;
  opt.quant_group_size = 16;
  std::vector<SquatState> states{SquatState::from_queries(s.queries.data(), s.rows, int(d), opt),
                                 SquatState::identity(int(d), 16)};
  const std::string path = ::testing::TempDir() + "squat_state_test.bin";
  SquatStateFile::save(path, states);
  const std::vector<SquatState> back = SquatStateFile::load(path);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_TRUE(back[0] == states[0]);
  EXPECT_TRUE(back[1] == states[1]);
  const QuantizedChunk a = squat_quantize_chunk(s.keys.data(), 32, d, 2, 32,
                                                GroupLayout::PerChannel, ParamType::F16, states[0]);
  const QuantizedChunk b = squat_quantize_chunk(s.keys.data(), 32, d, 2, 32,
                                                GroupLayout::PerChannel, ParamType::F16, back[0]);
  EXPECT_EQ(a.codes, b.codes);

  const std::vector<uint8_t> good = SquatStateFile::serialize(states);
  auto rejects = [&](std::vector<uint8_t> bytes, const char* what) {
    EXPECT_THROW(SquatStateFile::deserialize(bytes, "x.bin"), squat::Error) << what;
  };
  std::vector<uint8_t> flipped = good;
  flipped[good.size() / 2] ^= 0x10;
  rejects(flipped, "flipped byte");
  rejects(std::vector<uint8_t>(good.begin(), good.end() - 9), "truncated");
  std::vector<uint8_t> magic = good;
  magic[0] = 'X';
  rejects(magic, "magic");
  std::vector<uint8_t> version = good;
  version[8] = 9;
  rejects(version, "version");
  rejects({}, "empty");
  EXPECT_THROW(SquatStateFile::load(path + ".missing"), squat::Error);
  std::remove(path.c_str());
}

TEST(Squat, DroppedMetricQuantizesAlikeButCannotBeSaved) {
  const std::size_t d = 64;
  Synthetic s = make_synthetic(32, d, 100, 5);
  SubspaceOptions opt;
  opt.quant_group_size = 16;
  const SquatState full = SquatState::from_queries(s.queries.data(), s.rows, int(d), opt);
  SquatState lean = full;
  lean.drop_metric();
  EXPECT_TRUE(full.has_metric());
  EXPECT_FALSE(lean.has_metric());
  EXPECT_LT(lean.bytes() * 5, full.bytes()) << "P and H (doubles) dominate a state";
  const QuantizedChunk a = squat_quantize_chunk(s.keys.data(), 32, d, 2, 32,
                                                GroupLayout::PerChannel, ParamType::F16, full);
  const QuantizedChunk b = squat_quantize_chunk(s.keys.data(), 32, d, 2, 32,
                                                GroupLayout::PerChannel, ParamType::F16, lean);
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.scale, b.scale);
  EXPECT_THROW(SquatStateFile::serialize({lean}), squat::Error);
  SquatState identity = SquatState::identity(int(d), 16);
  identity.drop_metric();  // nothing to drop: still saveable
  EXPECT_NO_THROW(SquatStateFile::serialize({identity}));
}

uint64_t fnv1a_64(const uint8_t* p, std::size_t n) {  // FNV-1a as published (64-bit)
  uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

TEST(Squat, StateFileKeepsItsTagAndReadsVersionOneFiles) {
  const std::vector<SquatState> states{SquatState::identity(64, 32)};
  const std::string tag = "model 'x' (llama, 3 tensors, weights 00ff)";
  const std::vector<uint8_t> bytes = SquatStateFile::serialize(states, tag);
  std::string back;
  ASSERT_EQ(SquatStateFile::deserialize(bytes, "t.bin", &back).size(), 1u);
  EXPECT_EQ(back, tag);
  // Layout: magic (8), version (4), tag length (4), tag, ...
  uint32_t length = 0;
  std::memcpy(&length, bytes.data() + 12, 4);
  EXPECT_EQ(length, tag.size());
  EXPECT_EQ(std::string(bytes.begin() + 16, bytes.begin() + 16 + std::ptrdiff_t(tag.size())), tag);

  // A version 1 file (no tag field) written by hand: still loads, with an empty tag.
  // (Appends by resize + memcpy: GCC 12 misreports vector::insert here, -Warray-bounds.)
  std::vector<uint8_t> v1;
  auto append = [&v1](const void* p, std::size_t n) {
    const std::size_t at = v1.size();
    v1.resize(at + n);
    std::memcpy(v1.data() + at, p, n);
  };
  const uint32_t one = 1;
  const std::size_t states_at = 16 + tag.size();
  append(bytes.data(), 8);
  append(&one, 4);
  append(bytes.data() + states_at, bytes.size() - 8 - states_at);
  const uint64_t sum = fnv1a_64(v1.data(), v1.size());
  append(&sum, 8);
  back = "not cleared";
  const std::vector<SquatState> old = SquatStateFile::deserialize(v1, "v1.bin", &back);
  ASSERT_EQ(old.size(), 1u);
  EXPECT_TRUE(old[0] == states[0]);
  EXPECT_EQ(back, "");

  EXPECT_THROW(SquatStateFile::serialize(states, std::string(5000, 'x')), squat::Error);
}
