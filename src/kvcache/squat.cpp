// SQuat: query subspace, metric, Schur-complement chain and the block-sequential key quantizer
// (docs/SQUAT.md §2). The per-prompt algebra runs in double (Eigen); the per-chunk quantizer
// runs in float with the precomputed W_i = (P[F:, :F] H_i)ᵀ.
#include <Eigen/Dense>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "core/error.h"
#include "core/files.h"
#include "core/hash.h"
#include "kvcache/internal.h"
#include "kvcache/simd.h"
#include "squat/kv_quant.h"

namespace squat::kv {
namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace

namespace {

// Q̂ = diag(S) Vᵀ as row-major [rr, d] (V: d x rr, directions as columns).
std::vector<double> scaled_rows(const Eigen::MatrixXd& V, const Eigen::VectorXd& S) {
  const Eigen::Index d = V.rows(), rr = V.cols();
  std::vector<double> out(std::size_t(rr) * std::size_t(d));
  for (Eigen::Index j = 0; j < rr; ++j)
    for (Eigen::Index c = 0; c < d; ++c) out[std::size_t(j * d + c)] = S(j) * V(c, j);
  return out;
}

// Top-rr eigenpairs of the symmetric G (d x d) as Q̂ rows sqrt(λ_j) v_jᵀ, descending. With
// `power_method`, block power iteration on G then Rayleigh-Ritz on the found subspace;
// otherwise a full symmetric eigendecomposition.
std::vector<double> scaled_top_eigenvectors(const Eigen::MatrixXd& G, int d, int rr,
                                            bool power_method, int power_iterations) {
  Eigen::MatrixXd V(d, rr);  // columns: directions, descending
  Eigen::VectorXd S(rr);     // their singular values sqrt(eigenvalue)
  if (power_method) {
    std::mt19937_64 rng(12345);
    std::normal_distribution<double> normal(0.0, 1.0);
    Eigen::MatrixXd X(d, rr);
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < rr; ++j) X(i, j) = normal(rng);
    for (int it = 0; it < std::max(power_iterations, 1); ++it) {
      Eigen::HouseholderQR<Eigen::MatrixXd> qr(G * X);
      X = qr.householderQ() * Eigen::MatrixXd::Identity(d, rr);
    }
    const Eigen::MatrixXd B = X.transpose() * G * X;
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(B);
    for (int j = 0; j < rr; ++j) {  // eigenvalues ascending: reverse to descending
      const int src = rr - 1 - j;
      V.col(j) = X * eig.eigenvectors().col(src);
      S(j) = std::sqrt(std::max(eig.eigenvalues()(src), 0.0));
    }
  } else {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(G);
    for (int j = 0; j < rr; ++j) {
      const int src = d - 1 - j;
      V.col(j) = eig.eigenvectors().col(src);
      S(j) = std::sqrt(std::max(eig.eigenvalues()(src), 0.0));
    }
  }
  return scaled_rows(V, S);
}

int kept_directions(int r, std::size_t rows, int d) {
  return int(std::min<std::size_t>({std::size_t(std::max(r, 0)), rows, std::size_t(d)}));
}

}  // namespace

std::vector<double> query_subspace(const float* q, std::size_t rows, int d, int r,
                                   bool power_method, int power_iterations, int* r_out) {
  const int rr = kept_directions(r, rows, d);
  if (r_out) *r_out = rr;
  if (rr == 0) return {};
  MatD Q(Eigen::Index(rows), d);
  for (std::size_t i = 0; i < rows; ++i)
    for (int c = 0; c < d; ++c)
      Q(Eigen::Index(i), c) = double(q[i * std::size_t(d) + std::size_t(c)]);
  if (power_method) {
    return scaled_top_eigenvectors(Q.transpose() * Q, d, rr, true, power_iterations);
  }
  // Tall Q (rows > d): Q = Q_1 R, and R (d x d) has the same singular values and right
  // singular vectors as Q, so the SVD runs on the small triangular factor.
  Eigen::MatrixXd small;
  if (Q.rows() > d) {
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(Q);
    small = qr.matrixQR().topRows(d).triangularView<Eigen::Upper>();
  } else {
    small = Q;
  }
  Eigen::BDCSVD<Eigen::MatrixXd> svd(small, Eigen::ComputeThinV);
  const Eigen::MatrixXd V = svd.matrixV().leftCols(rr);
  const Eigen::VectorXd S = svd.singularValues().head(rr);
  return scaled_rows(V, S);
}

std::vector<double> gram_subspace(const std::vector<double>& gram, std::size_t rows, int d, int r,
                                  bool power_method, int power_iterations, int* r_out) {
  if (gram.size() != std::size_t(d) * std::size_t(d)) {
    fail_usage("Gram matrix has {} entries, expected {} x {}", gram.size(), d, d);
  }
  const int rr = kept_directions(r, rows, d);
  if (r_out) *r_out = rr;
  if (rr == 0) return {};
  const Eigen::MatrixXd G = Eigen::Map<const MatD>(gram.data(), d, d);
  return scaled_top_eigenvectors(G, d, rr, power_method, power_iterations);
}

SquatState SquatState::identity(int d, int g) {
  if (d <= 0 || g <= 0 || d % g != 0) {
    fail_usage("SQuat block size (quant_group_size) {} must divide head_dim {}", g, d);
  }
  SquatState s;
  s.d_ = d;
  s.g_ = g;
  s.identity_ = true;
  return s;
}

SquatState SquatState::from_metric(const std::vector<double>& a, int d, int g) {
  SquatState s = identity(d, g);
  s.identity_ = false;
  const int T = d / g;
  Eigen::Map<const MatD> A(a.data(), d, d);
  const MatD P = A.llt().solve(Eigen::MatrixXd::Identity(d, d));
  s.p_.assign(P.data(), P.data() + std::size_t(d) * std::size_t(d));
  s.h_.resize(std::size_t(std::max(T - 1, 0)));
  MatD At = A;  // A_T
  for (int t = T - 1; t >= 1; --t) {
    const int c = t * g;
    const MatD M = At.topLeftCorner(c, c);
    const MatD N = At.block(c, 0, g, c);
    const MatD O = At.block(c, c, g, g) + 1e-7 * Eigen::MatrixXd::Identity(g, g);
    const MatD X = O.partialPivLu().solve(N);  // (O + 1e-7 I)⁻¹ N
    const MatD next = M - N.transpose() * X;   // A_t
    At = next;
    const MatD H = At.rightCols(g);
    s.h_[std::size_t(t - 1)].assign(H.data(), H.data() + std::size_t(c) * std::size_t(g));
  }
  s.derive_w();
  return s;
}

void SquatState::derive_w() {
  w_.clear();
  if (identity_) return;
  const int T = d_ / g_;
  Eigen::Map<const MatD> P(p_.data(), d_, d_);
  for (int i = 1; i < T; ++i) {
    const int F = i * g_;
    Eigen::Map<const MatD> H(h_[std::size_t(i - 1)].data(), F, g_);
    const MatD W = (P.bottomLeftCorner(d_ - F, F) * H).transpose();  // g x (d-F)
    std::vector<float> w(std::size_t(g_) * std::size_t(d_ - F));
    for (std::size_t k = 0; k < w.size(); ++k) w[k] = float(W.data()[k]);
    w_.push_back(std::move(w));
  }
}

namespace {

// Refuses bad options; true when they ask for no correction at all (λ = 0, r = 0, no rows).
bool identity_options(const SubspaceOptions& opt, std::size_t rows) {
  if (opt.lambda < 0 || !std::isfinite(opt.lambda)) {
    fail_usage("lambda must be finite and >= 0, got {}", opt.lambda);
  }
  if (opt.subspace_dim < 0) fail_usage("subspace dimension must be >= 0, got {}", opt.subspace_dim);
  return opt.lambda == 0.0 || opt.subspace_dim == 0 || rows == 0;
}

}  // namespace

SquatState SquatState::from_subspace(const std::vector<double>& qh, int r, int d,
                                     const SubspaceOptions& opt) {
  Eigen::Map<const MatD> Qh(qh.data(), r, d);
  MatD A = MatD::Identity(d, d) + opt.lambda * (Qh.transpose() * Qh);
  if (!A.allFinite()) fail("SQuat metric is not finite (queries contain NaN/Inf or overflow)");
  std::vector<double> a(A.data(), A.data() + std::size_t(d) * std::size_t(d));
  return from_metric(a, d, opt.quant_group_size);
}

SquatState SquatState::from_queries(const float* q, std::size_t rows, int d,
                                    const SubspaceOptions& opt) {
  if (identity_options(opt, rows)) return identity(d, opt.quant_group_size);
  identity(d, opt.quant_group_size);  // validates d and g
  for (std::size_t i = 0; i < rows * std::size_t(d); ++i) {
    if (!std::isfinite(q[i])) {
      fail("SQuat queries contain a non-finite value ({}) at row {}, column {}", q[i],
           i / std::size_t(d), i % std::size_t(d));
    }
  }
  int r = 0;
  const std::vector<double> qh =
      query_subspace(q, rows, d, opt.subspace_dim, opt.power_method, opt.power_iterations, &r);
  return from_subspace(qh, r, d, opt);
}

SquatState SquatState::from_gram(const std::vector<double>& gram, std::size_t rows, int d,
                                 const SubspaceOptions& opt) {
  if (identity_options(opt, rows)) return identity(d, opt.quant_group_size);
  identity(d, opt.quant_group_size);  // validates d and g
  for (double x : gram) {
    if (!std::isfinite(x)) fail("SQuat query Gram matrix holds a non-finite value ({})", x);
  }
  int r = 0;
  const std::vector<double> qh =
      gram_subspace(gram, rows, d, opt.subspace_dim, opt.power_method, opt.power_iterations, &r);
  return from_subspace(qh, r, d, opt);
}

void SquatState::drop_metric() {
  if (identity_) return;
  std::vector<double>().swap(p_);
  std::vector<std::vector<double>>().swap(h_);
  metric_dropped_ = true;
}

bool SquatState::operator==(const SquatState& o) const {
  return d_ == o.d_ && g_ == o.g_ && identity_ == o.identity_ && h_ == o.h_ && p_ == o.p_ &&
         w_ == o.w_ && metric_dropped_ == o.metric_dropped_;
}

std::size_t SquatState::bytes() const {
  std::size_t b = p_.size() * sizeof(double);
  for (const auto& h : h_) b += h.size() * sizeof(double);
  for (const auto& w : w_) b += w.size() * sizeof(float);
  return b;
}

QuantizedChunk squat_quantize_chunk(const float* keys, std::size_t n, std::size_t d, int bits,
                                    int group_size, GroupLayout layout, ParamType p,
                                    const SquatState& state) {
  QuantizedChunk q;
  detail::QuantScratch scratch;
  detail::quantize_chunk_into(keys, n, d, bits, group_size, layout, p, &state, q, scratch);
  return q;
}

namespace detail {

void quantize_chunk_into(const float* keys, std::size_t n, std::size_t d, int bits, int group_size,
                         GroupLayout layout, ParamType p, const SquatState* state,
                         QuantizedChunk& q, QuantScratch& scratch) {
  check_chunk_params(n, d, bits, group_size, layout);
  if (state && (state->empty() || std::size_t(state->head_dim()) != d)) {
    fail_usage("SQuat state is for head_dim {}, keys have {}", state->head_dim(), d);
  }
  const std::size_t g = state ? std::size_t(state->block_size()) : d;
  if (state && layout == GroupLayout::PerToken && g % std::size_t(group_size) != 0) {
    fail_usage("per-token SQuat needs quant_group_size {} divisible by group size {}", g,
               group_size);
  }
  init_chunk(q, n, d, bits, group_size, layout, p);
  if (!state || state->is_identity()) {
    quantize_columns(keys, d, 0, d, q, nullptr, 0, scratch);
    return;
  }
  const std::size_t T = d / g;
  scratch.reserve(n, d);
  float* target = scratch.target.data();  // [n, d]
  float* E = scratch.err.data();          // [n, g]
  std::copy(keys, keys + n * d, target);
  for (std::size_t i = 1; i <= T; ++i) {
    const std::size_t c0 = (i - 1) * g;
    // Quantize block i of the current target; E receives K̂[:, block i].
    quantize_columns(target, d, c0, c0 + g, q, E, g, scratch);
    if (i == T) break;
    for (std::size_t t = 0; t < n; ++t) {
      for (std::size_t c = 0; c < g; ++c) E[t * g + c] -= target[t * d + c0 + c];
    }
    const std::size_t F = i * g;
    simd::gemm_acc(E, n, g, state->w(int(i)).data(), d - F, target + F, d);
  }
}

}  // namespace detail

// ---- State files --------------------------------------------------------------------------

namespace {

constexpr char kMagic[8] = {'S', 'Q', 'U', 'A', 'T', 'S', 'T', '\0'};
// Version 2 added the tag (who the states were made for); version 1 files load with an empty tag.
constexpr uint32_t kVersion = 2;
constexpr uint32_t kMaxTagBytes = 4096;

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const std::size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

struct Reader {
  const std::vector<uint8_t>& bytes;
  std::size_t pos;
  std::size_t end;
  const std::string& name;
  template <typename T>
  T get(const char* what) {
    if (end - pos < sizeof(T)) fail("SQuat state file {}: truncated while reading {}", name, what);
    T v;
    std::memcpy(&v, bytes.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
};

}  // namespace

std::vector<uint8_t> SquatStateFile::serialize(const std::vector<SquatState>& states,
                                               const std::string& tag) {
  if (tag.size() > kMaxTagBytes) {
    fail("SQuat state file tag is {} bytes, at most {} are allowed", tag.size(), kMaxTagBytes);
  }
  std::vector<uint8_t> out(8);
  std::memcpy(out.data(), kMagic, 8);
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, uint32_t(tag.size()));
  if (!tag.empty()) {  // resize + memcpy: GCC 12 misreports insert() here (-Warray-bounds)
    const std::size_t at = out.size();
    out.resize(at + tag.size());
    std::memcpy(out.data() + at, tag.data(), tag.size());
  }
  put<uint32_t>(out, uint32_t(states.size()));
  for (const SquatState& s : states) {
    if (!s.has_metric()) {
      fail(
          "cannot save a SQuat state whose P and H were dropped to save memory (the cache was "
          "made without keeping its subspace for saving)");
    }
    put<uint32_t>(out, uint32_t(s.d_));
    put<uint32_t>(out, uint32_t(s.g_));
    put<uint8_t>(out, s.identity_ ? 1 : 0);
    if (s.identity_) continue;
    for (double v : s.p_) put<double>(out, v);
    for (const auto& h : s.h_)
      for (double v : h) put<double>(out, v);
  }
  put<uint64_t>(out, fnv1a(out.data(), out.size()));
  return out;
}

std::vector<SquatState> SquatStateFile::deserialize(const std::vector<uint8_t>& bytes,
                                                    const std::string& name, std::string* tag) {
  if (bytes.size() < 8 + 4 + 4 + 8 || std::memcmp(bytes.data(), kMagic, 8) != 0) {
    fail("{} is not a SQuat state file (bad magic or too short)", name);
  }
  const std::size_t body = bytes.size() - 8;
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + body, 8);
  Reader r{bytes, 8, body, name};
  const uint32_t version = r.get<uint32_t>("version");
  if (version != 1 && version != kVersion) {
    fail("SQuat state file {}: version {} is not supported (expected 1 or {})", name, version,
         kVersion);
  }
  if (fnv1a(bytes.data(), body) != stored) {
    fail("SQuat state file {}: checksum mismatch (file is corrupt)", name);
  }
  std::string file_tag;
  if (version >= 2) {
    const uint32_t length = r.get<uint32_t>("tag length");
    if (length > kMaxTagBytes || r.end - r.pos < length) {
      fail("SQuat state file {}: invalid tag length {}", name, length);
    }
    file_tag.assign(reinterpret_cast<const char*>(bytes.data() + r.pos), length);
    r.pos += length;
  }
  if (tag) *tag = file_tag;
  const uint32_t count = r.get<uint32_t>("count");
  std::vector<SquatState> states;
  for (uint32_t k = 0; k < count; ++k) {
    const uint32_t d = r.get<uint32_t>("head_dim");
    const uint32_t g = r.get<uint32_t>("block size");
    const uint8_t ident = r.get<uint8_t>("identity flag");
    if (d == 0 || d > 4096 || g == 0 || d % g != 0 || ident > 1) {
      fail("SQuat state file {}: state {} has invalid head_dim {} / block size {}", name, k, d, g);
    }
    SquatState s = SquatState::identity(int(d), int(g));
    if (!ident) {
      s.identity_ = false;
      const std::size_t dd = std::size_t(d) * d;
      if ((r.end - r.pos) / 8 < dd) fail("SQuat state file {}: truncated P of state {}", name, k);
      s.p_.resize(dd);
      for (auto& v : s.p_) v = r.get<double>("P");
      const uint32_t T = d / g;
      for (uint32_t t = 1; t < T; ++t) {
        std::vector<double> h(std::size_t(t) * g * g);
        for (auto& v : h) v = r.get<double>("H");
        s.h_.push_back(std::move(h));
      }
      for (double v : s.p_)
        if (!std::isfinite(v)) fail("SQuat state file {}: non-finite value in state {}", name, k);
      for (const auto& h : s.h_)
        for (double v : h)
          if (!std::isfinite(v)) fail("SQuat state file {}: non-finite value in state {}", name, k);
      s.derive_w();
    }
    states.push_back(std::move(s));
  }
  if (r.pos != r.end) fail("SQuat state file {}: {} trailing bytes", name, r.end - r.pos);
  return states;
}

void SquatStateFile::save(const std::string& path, const std::vector<SquatState>& states,
                          const std::string& tag) {
  const std::vector<uint8_t> bytes = serialize(states, tag);
  write_file_atomically(
      path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::vector<SquatState> SquatStateFile::load(const std::string& path, std::string* tag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open SQuat state file {}", path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return deserialize(bytes, path, tag);
}

}  // namespace squat::kv
