// The cache store (residual window and flush rules of docs/SQUAT.md §1, byte accounting) and
// attention over it (block-by-block dequantization, online softmax, RoPE for pre-RoPE keys).
#include <Eigen/Dense>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kvcache/internal.h"
#include "kvcache/simd.h"
#include "squat/kvcache.h"

namespace squat::kv {

// ---- Configuration -------------------------------------------------------------------------

const char* to_string(CacheMethod m) {
  switch (m) {
    case CacheMethod::F32:
      return "f32";
    case CacheMethod::F16:
      return "f16";
    case CacheMethod::Int8:
      return "int8";
    case CacheMethod::Int4:
      return "int4";
    case CacheMethod::Kivi:
      return "kivi";
    case CacheMethod::Squat:
      return "squat";
  }
  return "?";
}

CacheMethod parse_method(const std::string& s) {
  for (CacheMethod m : kCacheMethods) {
    if (s == to_string(m)) return m;
  }
  fail_usage("unknown KV cache method '{}' (expected f32, f16, int8, int4, kivi or squat)", s);
}

namespace {
// Bits per element the method fixes, or `chosen` (k_bits / v_bits) for kivi and squat.
int method_bits(CacheMethod method, int chosen) {
  switch (method) {
    case CacheMethod::F32:
      return 32;
    case CacheMethod::F16:
      return 16;
    case CacheMethod::Int8:
      return 8;
    case CacheMethod::Int4:
      return 4;
    default:
      return chosen;
  }
}
}  // namespace

int CacheConfig::key_bits() const { return method_bits(method, k_bits); }
int CacheConfig::value_bits() const { return method_bits(method, v_bits); }
int default_quant_group_size(int head_dim, GroupLayout key_quant, int group_size) {
  int g = head_dim >= 128 ? 64 : head_dim % 4 == 0 ? head_dim / 4 : head_dim;
  if (key_quant == GroupLayout::PerToken && group_size > 0 && g % group_size != 0) {
    g = group_size;
    while (g < head_dim && head_dim % g != 0) g += group_size;
  }
  return std::clamp(g, 1, std::max(1, head_dim));
}

CacheConfig make_cache_config(const CacheOptions& o, int head_dim) {
  CacheConfig c;
  c.method = parse_method(o.method);
  c.k_bits = o.k_bits;
  c.v_bits = o.v_bits;
  c.group_size = o.group_size;
  c.residual_length = o.residual_length;
  c.subspace_dim = o.subspace_dim;
  c.lambda = o.lambda;
  if (o.key_quant != "per-channel" && o.key_quant != "per-token") {
    fail_usage("key_quant must be 'per-channel' or 'per-token', got '{}'", o.key_quant);
  }
  c.key_quant = o.key_quant == "per-token" ? GroupLayout::PerToken : GroupLayout::PerChannel;
  if (head_dim <= 0) fail_usage("head_dim must be positive, got {}", head_dim);
  if (o.group_size <= 0) fail_usage("group_size must be positive, got {}", o.group_size);
  if (o.quant_group_size < 0) {
    fail_usage("quant_group_size must be positive (0: automatic), got {}", o.quant_group_size);
  }
  c.quant_group_size = o.quant_group_size > 0
                           ? o.quant_group_size
                           : default_quant_group_size(head_dim, c.key_quant, c.group_size);
  const bool kivi_like = c.method == CacheMethod::Kivi || c.method == CacheMethod::Squat;
  const std::string rope = o.key_rope.empty() ? (kivi_like ? "pre" : "post") : o.key_rope;
  if (rope != "pre" && rope != "post") {
    fail_usage("key_rope must be 'pre' or 'post', got '{}'", o.key_rope);
  }
  c.key_rope = rope == "pre" ? KeyRope::Pre : KeyRope::Post;
  if (o.query_rope != "after" && o.query_rope != "before") {
    fail_usage("query_rope must be 'after' or 'before', got '{}'", o.query_rope);
  }
  c.query_rope = o.query_rope == "before" ? QueryRope::Before : QueryRope::After;
  c.power_method = o.power_method;
  c.hadamard = o.hadamard;
  try {
    c.validate(head_dim);
  } catch (const Error& e) {
    fail_usage("invalid KV cache options for method '{}': {}", o.method, e.what());
  }
  return c;
}

int CacheConfig::window() const {
  return (method == CacheMethod::Kivi || method == CacheMethod::Squat) ? residual_length : 0;
}

void CacheConfig::validate(int head_dim) const {
  if (head_dim <= 0) fail_usage("head_dim must be positive, got {}", head_dim);
  if (key_rope == KeyRope::Pre && head_dim % 2 != 0) {
    fail_usage("pre-RoPE keys need an even head_dim, got {}", head_dim);
  }
  if (hadamard && (head_dim & (head_dim - 1)) != 0) {
    fail_usage("the Hadamard rotation of values needs head_dim a power of two, got {}", head_dim);
  }
  if (!quantized()) return;
  if (group_size <= 0) fail_usage("group_size must be positive, got {}", group_size);
  if (head_dim % group_size != 0) {
    fail_usage(
        "group_size {} must divide head_dim {} (values are quantized in groups of "
        "group_size channels)",
        group_size, head_dim);
  }
  if (method == CacheMethod::Int8 || method == CacheMethod::Int4) return;
  if (head_dim % 4 != 0) {
    fail_usage("quantized KV caches need head_dim a multiple of 4, got {}", head_dim);
  }
  for (auto [name, b] : {std::pair<const char*, int>{"k_bits", k_bits}, {"v_bits", v_bits}}) {
    if (b != 2 && b != 4 && b != 8) fail_usage("{} must be 2, 4 or 8, got {}", name, b);
  }
  if (residual_length <= 0 || residual_length % group_size != 0) {
    fail_usage("residual_length {} must be a positive multiple of group_size {}", residual_length,
               group_size);
  }
  if (method != CacheMethod::Squat) return;
  if (quant_group_size <= 0 || head_dim % quant_group_size != 0) {
    fail_usage("quant_group_size {} must divide head_dim {}", quant_group_size, head_dim);
  }
  if (key_quant == GroupLayout::PerToken && quant_group_size % group_size != 0) {
    fail_usage("per-token SQuat keys need quant_group_size {} to be a multiple of group_size {}",
               quant_group_size, group_size);
  }
  if (subspace_dim < 0) fail_usage("subspace_dim must be >= 0, got {}", subspace_dim);
  if (!(lambda >= 0) || !std::isfinite(lambda)) {
    fail_usage("lambda must be finite and >= 0, got {}", lambda);
  }
  if (power_method && power_iterations < 1) {
    fail_usage("power_iterations must be >= 1, got {}", power_iterations);
  }
}

std::string CacheConfig::describe() const {
  std::string s = to_string(method);
  if (method == CacheMethod::Kivi || method == CacheMethod::Squat) {
    s += fmt::format(" k{}v{} G={} R={} keys={} {}-RoPE", k_bits, v_bits, group_size,
                     residual_length,
                     key_quant == GroupLayout::PerChannel ? "per-channel" : "per-token",
                     key_rope == KeyRope::Pre ? "pre" : "post");
  }
  if (method == CacheMethod::Squat) {
    s += fmt::format(" g={} r={} lambda={}{}", quant_group_size, subspace_dim, lambda,
                     power_method ? " power" : "");
  }
  if (method == CacheMethod::Int8 || method == CacheMethod::Int4) {
    s += fmt::format(" G={}", group_size);
  }
  if (hadamard) s += " hadamard-V";
  return s;
}

// ---- Store ---------------------------------------------------------------------------------

namespace {

struct QuantPart {
  std::vector<uint8_t> codes;
  detail::FloatStore scale, min;
  explicit QuantPart(bool f16) : scale(f16), min(f16) {}
  std::size_t bytes() const { return codes.size() + scale.bytes() + min.bytes(); }
  void append(const QuantizedChunk& q) {
    codes.insert(codes.end(), q.codes.begin(), q.codes.end());
    scale.push(q.scale.data(), q.scale.size());
    min.push(q.min.data(), q.min.size());
  }
  void clear() {
    codes.clear();
    scale.clear();
    min.clear();
  }
};

struct HeadStore {
  QuantPart kq, vq;
  detail::FloatStore kres, vres;  // full-precision rows [rows, d]
  HeadStore(bool param16, bool res16) : kq(param16), vq(param16), kres(res16), vres(res16) {}
};

}  // namespace

// append's scratch (append is not thread-safe anyway): sized by reserve or the first flush,
// then reused, so decoding allocates nothing. One per KvCache, shared by its layers.
struct AppendScratch {
  QuantizedChunk chunk;
  detail::QuantScratch qscratch;
  std::vector<float> flush_buf, rowbuf;
};

struct LayerCache::Impl {
  CacheConfig cfg;
  int n_kv = 0, d = 0;
  std::shared_ptr<RopeTable> rope;
  std::vector<HeadStore> heads;
  std::vector<SquatState> states;
  // add_queries: per KV head, QᵀQ of the queries added so far (d x d) and their row count.
  std::vector<std::vector<double>> gram;
  std::size_t gram_rows = 0;
  std::size_t n = 0, n_kq = 0, n_vq = 0;
  int kbits = 0, vbits = 0, G = 0, R = 0;
  GroupLayout key_layout = GroupLayout::PerToken;
  bool kivi_like = false, int_method = false;
  std::shared_ptr<AppendScratch> scratch = std::make_shared<AppendScratch>();
  // Pre-RoPE KIVI/SQuat keys: the fused kernel's RoPE table of the offsets inside a key group
  // (simd::rope_lane_table), built once (the same for every layer of a KvCache, so shared).
  std::shared_ptr<const std::vector<float>> rope_lanes;

  std::size_t D() const { return std::size_t(d); }
  std::size_t gb(int bits) const { return packed_bytes(std::size_t(G), bits); }

  void append_piece(const float* k, const float* v, std::size_t n_new);
  void flush_keys(int h, std::size_t rows_to_flush);
  void flush_values(int h, std::size_t rows_to_flush);
  // Token-major floats of tokens [t0, t0+nb) (keys as stored; values in the stored basis).
  void load_keys(int h, std::size_t t0, std::size_t nb, float* out, float* scratch) const;
  void load_values(int h, std::size_t t0, std::size_t nb, float* out, float* scratch) const;
  void load_rows(const QuantPart& part, int bits, std::size_t row, std::size_t nb, float* out,
                 float* scratch) const;
  // Attention block length (tokens dequantized at once): the key group for KIVI/SQuat.
  std::size_t block() const;
  // Tokens visible to the latest of the queries.
  std::size_t visible_limit(const int* q_pos, std::size_t n_q) const;
  // Partial online softmax of the query heads of KV head h over tokens [t0, t1): per row
  // (query i, repeat r) at part + row*(D+2): max, sum, accumulator[D].
  void attend_range(int h, const float* q, std::size_t n_q, int n_heads, const int* q_pos,
                    std::size_t t0, std::size_t t1, float* part) const;
  // Fills fb for the fused kernel over block [b0, b0 + nb) of head h (params: 2*D + 2*nb*D/G
  // floats; codes padded through kpad/vpad when needed).
  void fused_setup(int h, std::size_t b0, std::size_t nb, simd::FusedBlock& fb, float* params,
                   std::vector<uint8_t>& kpad, std::vector<uint8_t>& vpad) const;
  // Prefill: queries [i0, i1) of KV head h's group over their visible tokens, flash-attention
  // tiles (query rows of the group x a block of keys loaded as floats), written to out.
  void attend_tiles(int h, const float* q, std::size_t i0, std::size_t i1, int n_heads,
                    const int* q_pos, float* out, float* lse) const;
  // Merges n_split partials of one row into o (and undoes the Hadamard rotation); returns the
  // log of the softmax denominator (-inf when the row saw no key).
  float finish_row(const float* part, std::size_t n_split, std::size_t split_stride,
                   float* o) const;
  SubspaceOptions subspace_options() const;
  void check_query_heads(int n_heads) const;  // n_heads a multiple of n_kv, else fail_usage
  // KV head h's query rows (query head, token) of q [n_q, n_heads, d], as set_queries stacks them.
  void stack_queries(int h, const float* q, std::size_t n_q, int n_heads,
                     std::vector<float>& rows) const;
};

LayerCache::LayerCache(const CacheConfig& config, int n_kv_heads, int head_dim,
                       std::shared_ptr<RopeTable> rope)
    : impl_(std::make_unique<Impl>()) {
  config.validate(head_dim);
  if (n_kv_heads <= 0) fail_usage("n_kv_heads must be positive, got {}", n_kv_heads);
  Impl& m = *impl_;
  m.cfg = config;
  m.n_kv = n_kv_heads;
  m.d = head_dim;
  m.rope = std::move(rope);
  if (config.key_rope == KeyRope::Pre) {
    if (!m.rope || m.rope->half() * 2 != head_dim) {
      fail_usage("pre-RoPE keys need a RoPE description with head_dim/2 = {} frequencies",
                 head_dim / 2);
    }
  }
  m.kivi_like = config.method == CacheMethod::Kivi || config.method == CacheMethod::Squat;
  m.int_method = config.method == CacheMethod::Int8 || config.method == CacheMethod::Int4;
  m.kbits = config.key_bits();
  m.vbits = config.value_bits();
  m.G = config.group_size;
  m.R = config.window();
  m.key_layout = m.kivi_like ? config.key_quant : GroupLayout::PerToken;
  if (m.kivi_like && config.key_rope == KeyRope::Pre) {
    auto lanes = std::make_shared<std::vector<float>>(std::size_t(head_dim) * std::size_t(m.G));
    simd::rope_lane_table(m.rope->spec().inv_freq.data(), std::size_t(head_dim / 2),
                          std::size_t(m.G), lanes->data());
    m.rope_lanes = std::move(lanes);
  }
  const bool res16 = config.method == CacheMethod::F16 ||
                     (config.method != CacheMethod::F32 && config.residual_f16);
  for (int h = 0; h < n_kv_heads; ++h) {
    m.heads.emplace_back(config.param_type == ParamType::F16, res16);
  }
}

LayerCache::~LayerCache() = default;
LayerCache::LayerCache(LayerCache&&) noexcept = default;
LayerCache& LayerCache::operator=(LayerCache&&) noexcept = default;

const CacheConfig& LayerCache::config() const { return impl_->cfg; }
int LayerCache::n_kv_heads() const { return impl_->n_kv; }
int LayerCache::head_dim() const { return impl_->d; }
std::size_t LayerCache::tokens() const { return impl_->n; }
std::size_t LayerCache::quantized_keys() const { return impl_->n_kq; }
std::size_t LayerCache::quantized_values() const { return impl_->n_vq; }
const std::vector<SquatState>& LayerCache::states() const { return impl_->states; }
bool LayerCache::has_states() const { return !impl_->states.empty(); }

void LayerCache::clear_states() {
  impl_->states.clear();
  end_queries();
}

void LayerCache::end_queries() {
  std::vector<std::vector<double>>().swap(impl_->gram);
  impl_->gram_rows = 0;
}

namespace {

// Empty online-softmax partials: per row max = -inf, then sum and accumulator zero.
void reset_partials(float* part, std::size_t rows, std::size_t stride) {
  for (std::size_t row = 0; row < rows; ++row) {
    float* p = part + row * stride;
    p[0] = -std::numeric_limits<float>::infinity();
    std::fill(p + 1, p + stride, 0.0f);
  }
}

// Runs body(h) for every KV head, on the pool when given (which rethrows the first exception
// on the calling thread). Used by set_queries (once per prompt), not by the decode path.
void for_each_head(int n, ThreadPool* pool, FunctionRef<void(int)> body) {
  if (!pool || pool->size() <= 1 || n <= 1) {
    for (int h = 0; h < n; ++h) body(h);
    return;
  }
  pool->parallel_for(std::size_t(n), [&](std::size_t begin, std::size_t end, int) {
    for (std::size_t h = begin; h < end; ++h) body(int(h));
  });
}

}  // namespace

void LayerCache::drop_state_metrics() {
  for (SquatState& s : impl_->states) s.drop_metric();
}

SubspaceOptions LayerCache::Impl::subspace_options() const {
  SubspaceOptions opt;
  opt.subspace_dim = cfg.subspace_dim;
  opt.lambda = cfg.lambda;
  opt.quant_group_size = cfg.quant_group_size;
  opt.power_method = cfg.power_method;
  opt.power_iterations = cfg.power_iterations;
  return opt;
}

void LayerCache::Impl::check_query_heads(int n_heads) const {
  if (n_heads % n_kv != 0) {
    fail_usage("n_heads {} must be a multiple of n_kv_heads {}", n_heads, n_kv);
  }
}

void LayerCache::Impl::stack_queries(int h, const float* q, std::size_t n_q, int n_heads,
                                     std::vector<float>& rows) const {
  // Rows ordered (query head, token) like stacking the n_rep heads' [L, d] matrices.
  const int n_rep = n_heads / n_kv;
  rows.resize(n_q * std::size_t(n_rep) * D());
  for (int r = 0; r < n_rep; ++r) {
    for (std::size_t i = 0; i < n_q; ++i) {
      const float* src = q + (i * std::size_t(n_heads) + std::size_t(h * n_rep + r)) * D();
      std::copy(src, src + D(), rows.data() + (std::size_t(r) * n_q + i) * D());
    }
  }
}

void LayerCache::set_queries(const float* q, std::size_t n_q, int n_heads, ThreadPool* pool) {
  Impl& m = *impl_;
  if (m.cfg.method != CacheMethod::Squat) return;
  m.check_query_heads(n_heads);
  const SubspaceOptions opt = m.subspace_options();
  std::vector<SquatState> states(std::size_t(m.n_kv));
  for_each_head(m.n_kv, pool, [&](int h) {
    std::vector<float> rows;
    m.stack_queries(h, q, n_q, n_heads, rows);
    states[std::size_t(h)] = SquatState::from_queries(rows.data(), rows.size() / m.D(), m.d, opt);
  });
  m.states = std::move(states);
}

void LayerCache::add_queries(const float* q, std::size_t n_q, int n_heads, ThreadPool* pool) {
  Impl& m = *impl_;
  if (m.cfg.method != CacheMethod::Squat) return;
  m.check_query_heads(n_heads);
  const SubspaceOptions opt = m.subspace_options();
  const bool first = m.gram.empty();
  const std::size_t new_rows = n_q * std::size_t(n_heads / m.n_kv), dd = m.D() * m.D();
  std::vector<SquatState> states(std::size_t(m.n_kv));
  if (first) m.gram.assign(std::size_t(m.n_kv), std::vector<double>(dd, 0.0));
  for_each_head(m.n_kv, pool, [&](int h) {
    std::vector<float> rows;
    m.stack_queries(h, q, n_q, n_heads, rows);
    // G += QᵀQ: the product in float (Q's own precision), accumulated across chunks in double.
    const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Q(
        rows.data(), Eigen::Index(new_rows), m.d);
    const Eigen::MatrixXf chunk = Q.transpose() * Q;  // symmetric: storage order does not matter
    std::vector<double>& g = m.gram[std::size_t(h)];
    for (std::size_t i = 0; i < dd; ++i) g[i] += double(chunk.data()[i]);
    states[std::size_t(h)] = first ? SquatState::from_queries(rows.data(), new_rows, m.d, opt)
                                   : SquatState::from_gram(g, m.gram_rows + new_rows, m.d, opt);
  });
  m.states = std::move(states);
  m.gram_rows += new_rows;
}

void LayerCache::set_states(std::vector<SquatState> states) {
  Impl& m = *impl_;
  if (states.size() != std::size_t(m.n_kv)) {
    fail_usage("expected {} SQuat states (one per KV head), got {}", m.n_kv, states.size());
  }
  for (const SquatState& s : states) {
    if (s.head_dim() != m.d || s.block_size() != m.cfg.quant_group_size) {
      fail_usage("SQuat state for head_dim {} / block {} does not match the cache ({} / {})",
                 s.head_dim(), s.block_size(), m.d, m.cfg.quant_group_size);
    }
  }
  m.states = std::move(states);
}

void LayerCache::Impl::flush_keys(int h, std::size_t rows) {
  HeadStore& hs = heads[std::size_t(h)];
  AppendScratch& sc = *scratch;
  if (sc.flush_buf.size() < rows * D()) sc.flush_buf.resize(rows * D());
  hs.kres.get(0, rows * D(), sc.flush_buf.data());
  const SquatState* state = nullptr;
  if (cfg.method == CacheMethod::Squat) {
    if (states.empty()) {
      fail(
          "SQuat cache: no query subspace for this layer (call set_queries or set_states "
          "before keys are flushed)");
    }
    state = &states[std::size_t(h)];
  }
  detail::quantize_chunk_into(sc.flush_buf.data(), rows, D(), kbits, G, key_layout, cfg.param_type,
                              state, sc.chunk, sc.qscratch);
  hs.kq.append(sc.chunk);  // per-channel chunks are already token-major rows of codes
  hs.kres.erase_front(rows * D());
}

void LayerCache::Impl::flush_values(int h, std::size_t rows) {
  HeadStore& hs = heads[std::size_t(h)];
  AppendScratch& sc = *scratch;
  if (sc.flush_buf.size() < rows * D()) sc.flush_buf.resize(rows * D());
  hs.vres.get(0, rows * D(), sc.flush_buf.data());
  detail::quantize_chunk_into(sc.flush_buf.data(), rows, D(), vbits, G, GroupLayout::PerToken,
                              cfg.param_type, nullptr, sc.chunk, sc.qscratch);
  hs.vq.append(sc.chunk);
  hs.vres.erase_front(rows * D());
}

void LayerCache::append(const float* k, const float* v, std::size_t n_new) {
  Impl& m = *impl_;
  // Quantized methods take the tokens a residual window at a time, so the full-precision
  // window (and the flush scratch) never holds more than 2R rows: pushing a whole prompt first
  // would leave buffers the size of an fp16 cache of the prompt behind (vectors keep their
  // capacity), more memory than the quantized cache itself. Flushes happen at the same token
  // counts either way (keys in chunks of R from the last flush, values row by row), so the
  // stored codes are identical.
  const std::size_t piece =
      m.kivi_like || m.int_method ? std::max<std::size_t>(std::size_t(m.R), 32) : n_new;
  const std::size_t stride = std::size_t(m.n_kv) * m.D();
  for (std::size_t done = 0; done < n_new; done += piece) {
    const std::size_t n = std::min(piece, n_new - done);
    m.append_piece(k + done * stride, v + done * stride, n);
  }
}

void LayerCache::Impl::append_piece(const float* k, const float* v, std::size_t n_new) {
  Impl& m = *this;
  if (n_new == 0) return;
  const std::size_t D = m.D(), stride = std::size_t(m.n_kv) * D;
  if (m.rope) m.rope->ensure(m.n + n_new);
  std::vector<float>& row_scratch = m.scratch->rowbuf;
  if (row_scratch.size() < D) row_scratch.resize(D);
  float* rowbuf = row_scratch.data();
  for (int h = 0; h < m.n_kv; ++h) {
    HeadStore& hs = m.heads[std::size_t(h)];
    for (std::size_t i = 0; i < n_new; ++i) {
      hs.kres.push(k + i * stride + std::size_t(h) * D, D);
      const float* vrow = v + i * stride + std::size_t(h) * D;
      if (m.cfg.hadamard) {
        std::copy(vrow, vrow + D, rowbuf);
        hadamard_transform(rowbuf, m.d);
        vrow = rowbuf;
      }
      hs.vres.push(vrow, D);
    }
  }
  const std::size_t total = m.n + n_new;
  if (m.int_method) {
    // Every token is quantized at once (per-token groups, no window).
    for (int h = 0; h < m.n_kv; ++h) {
      m.flush_keys(h, n_new);
      m.flush_values(h, n_new);
    }
    m.n_kq = m.n_vq = total;
  } else if (m.kivi_like) {
    const std::size_t R = std::size_t(m.R);
    const std::size_t key_res = total - m.n_kq;       // full-precision keys after the push
    const std::size_t key_flush = (key_res / R) * R;  // keys leave in chunks of R
    const std::size_t val_keep = std::min(total, R);  // values: last R stay
    const std::size_t val_flush = total - val_keep - m.n_vq;
    for (int h = 0; h < m.n_kv; ++h) {
      for (std::size_t c = 0; c < key_flush; c += R) m.flush_keys(h, R);
      if (val_flush) m.flush_values(h, val_flush);
    }
    m.n_kq += key_flush;
    m.n_vq += val_flush;
  }
  m.n = total;
}

void LayerCache::clear() {
  Impl& m = *impl_;
  for (HeadStore& hs : m.heads) {
    hs.kq.clear();
    hs.vq.clear();
    hs.kres.clear();
    hs.vres.clear();
  }
  m.n = m.n_kq = m.n_vq = 0;
}

std::size_t LayerCache::key_bytes() const {
  std::size_t b = 0;
  for (const HeadStore& hs : impl_->heads) b += hs.kq.bytes() + hs.kres.bytes();
  return b;
}
std::size_t LayerCache::value_bytes() const {
  std::size_t b = 0;
  for (const HeadStore& hs : impl_->heads) b += hs.vq.bytes() + hs.vres.bytes();
  return b;
}
std::size_t LayerCache::state_bytes() const {
  std::size_t b = 0;
  for (const SquatState& st : impl_->states) b += st.bytes();
  for (const std::vector<double>& g : impl_->gram) b += g.size() * sizeof(double);
  return b;
}

double LayerCache::bits_per_element() const {
  const Impl& m = *impl_;
  if (m.n == 0) return 0.0;
  return double(bytes()) * 8.0 / (double(m.n) * double(m.n_kv) * double(m.d) * 2.0);
}

// ---- Loading blocks (fast path) -----------------------------------------------------------

void LayerCache::Impl::load_rows(const QuantPart& part, int bits, std::size_t row, std::size_t nb,
                                 float* out, float* scratch) const {
  // Per-token groups: rows of d/G groups, each group packed in gb(bits) bytes.
  const std::size_t per_row = D() / std::size_t(G), bytes = gb(bits);
  const std::size_t n_groups = nb * per_row, g0 = row * per_row;
  if (std::size_t(G) * std::size_t(bits) % 8 == 0) {
    // Groups are byte-aligned, so the rows are one contiguous run of packed codes.
    simd::unpack_f32(part.codes.data() + g0 * bytes, n_groups * std::size_t(G), bits, out);
  } else {
    for (std::size_t g = 0; g < n_groups; ++g) {
      simd::unpack_f32(part.codes.data() + (g0 + g) * bytes, std::size_t(G), bits,
                       out + g * std::size_t(G));
    }
  }
  part.scale.get(g0, n_groups, scratch);
  part.min.get(g0, n_groups, scratch + n_groups);
  simd::affine_groups(out, n_groups, std::size_t(G), scratch, scratch + n_groups);
}

void LayerCache::Impl::load_keys(int h, std::size_t t0, std::size_t nb, float* out,
                                 float* scratch) const {
  const HeadStore& hs = heads[std::size_t(h)];
  std::size_t t = t0;
  const std::size_t end = t0 + nb;
  if (t < n_kq && key_layout == GroupLayout::PerChannel) {
    const std::size_t Gs = std::size_t(G), rb = packed_bytes(D(), kbits);
    while (t < std::min(end, n_kq)) {
      const std::size_t tg = t / Gs;
      const std::size_t take = std::min({(tg + 1) * Gs - t, end - t, n_kq - t});
      float* dst = out + (t - t0) * D();
      if (D() * std::size_t(kbits) % 8 == 0) {
        simd::unpack_f32(hs.kq.codes.data() + t * rb, take * D(), kbits, dst);
      } else {
        for (std::size_t i = 0; i < take; ++i) {
          simd::unpack_f32(hs.kq.codes.data() + (t + i) * rb, D(), kbits, dst + i * D());
        }
      }
      hs.kq.scale.get(tg * D(), D(), scratch);
      hs.kq.min.get(tg * D(), D(), scratch + D());
      simd::affine_channels(dst, take, D(), scratch, scratch + D());
      t += take;
    }
  } else if (t < n_kq) {
    const std::size_t take = std::min(end, n_kq) - t;
    load_rows(hs.kq, kbits, t, take, out, scratch);
    t += take;
  }
  if (t < end) hs.kres.get((t - n_kq) * D(), (end - t) * D(), out + (t - t0) * D());
}

void LayerCache::Impl::load_values(int h, std::size_t t0, std::size_t nb, float* out,
                                   float* scratch) const {
  const HeadStore& hs = heads[std::size_t(h)];
  std::size_t t = t0;
  const std::size_t end = t0 + nb;
  if (t < n_vq) {
    const std::size_t take = std::min(end, n_vq) - t;
    load_rows(hs.vq, vbits, t, take, out, scratch);
    t += take;
  }
  if (t < end) hs.vres.get((t - n_vq) * D(), (end - t) * D(), out + (t - t0) * D());
}

// ---- Attention -----------------------------------------------------------------------------
//
// Flash-decoding: the work of one call is split into tasks (KV head, range of tokens); each
// task keeps, per query row, a partial online softmax (max m, sum l, unnormalised value
// accumulator acc) over its range, and the partials are merged with the log-sum-exp rule
// (M = max m_j, L = sum l_j e^(m_j - M), out = sum acc_j e^(m_j - M) / L). The split depends
// only on the number of visible tokens and queries, never on the pool, so the result is the
// same with any number of threads. Scratch is per thread and grow-only (no allocation once
// warm), the pool takes a non-allocating function reference, and nothing locks.

namespace {

// Per-thread attention scratch: token blocks of keys/values as floats, logits, dequantization
// parameters, and (on the calling thread) the partials of all tasks.
struct AttnScratch {
  std::vector<float> kb, vb, s, tmp, part, params, work, qs, tpart, fwork;
  std::vector<uint8_t> kpad, vpad;
  std::vector<const float*> qptr;
  std::vector<float*> pptr;
  std::vector<std::size_t> vis, tvis;
};
AttnScratch& attn_scratch() {
  thread_local AttnScratch scratch;
  return scratch;
}
template <typename T>
void grow(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

// Codes of a block for the fused kernel, which may read up to 64 bytes past them: straight
// from the store when that stays inside it, else through a zero-padded copy.
const uint8_t* padded_codes(const std::vector<uint8_t>& codes, std::size_t offset,
                            std::size_t bytes, std::vector<uint8_t>& pad) {
  if (offset + bytes + 64 <= codes.size()) return codes.data() + offset;
  grow(pad, bytes + 64);
  std::memcpy(pad.data(), codes.data() + offset, bytes);
  std::memset(pad.data() + bytes, 0, 64);
  return pad.data();
}

constexpr std::size_t kSplitTokens = 128;    // shortest token range of a task
constexpr std::size_t kMaxSplits = 16;       // token ranges per KV head at most
constexpr std::size_t kSplitMaxQueries = 4;  // more queries (prefill): tiles (attend_tiles)
constexpr std::size_t kTileRows = 48;        // prefill: query rows (queries x group heads) per task

// Merges n partials (m, l, acc[D]) spaced `stride` floats apart into o[D]; returns the log of
// the merged denominator, M + log L (-inf when no partial saw a key).
float merge_partials(const float* part, std::size_t n, std::size_t stride, std::size_t D,
                     float* o) {
  float M = -std::numeric_limits<float>::infinity();
  for (std::size_t j = 0; j < n; ++j) {
    if (part[j * stride + 1] > 0.0f) M = std::max(M, part[j * stride]);
  }
  std::fill(o, o + D, 0.0f);
  if (M == -std::numeric_limits<float>::infinity()) return M;  // sees no key: zeros
  float L = 0.0f;
  for (std::size_t j = 0; j < n; ++j) {
    const float* p = part + j * stride;
    if (!(p[1] > 0.0f)) continue;
    const float w = std::exp(p[0] - M);
    L += w * p[1];
    for (std::size_t c = 0; c < D; ++c) o[c] += w * p[2 + c];
  }
  const float inv = 1.0f / L;
  for (std::size_t c = 0; c < D; ++c) o[c] *= inv;
  return M + std::log(L);
}

}  // namespace

std::size_t LayerCache::Impl::block() const { return kivi_like ? std::size_t(G) : 32; }

void LayerCache::Impl::fused_setup(int h, std::size_t b0, std::size_t nb, simd::FusedBlock& fb,
                                   float* prm, std::vector<uint8_t>& kpad,
                                   std::vector<uint8_t>& vpad) const {
  const std::size_t Dd = D(), ng = Dd / std::size_t(G);
  const std::size_t krb = Dd * std::size_t(kbits) / 8, vrb = Dd * std::size_t(vbits) / 8;
  const HeadStore& hs = heads[std::size_t(h)];
  fb.kcodes = padded_codes(hs.kq.codes, b0 * krb, nb * krb, kpad);
  fb.vcodes = padded_codes(hs.vq.codes, b0 * vrb, nb * vrb, vpad);
  hs.kq.scale.get(b0 / std::size_t(G) * Dd, Dd, prm);
  hs.kq.min.get(b0 / std::size_t(G) * Dd, Dd, prm + Dd);
  hs.vq.scale.get(b0 * ng, nb * ng, prm + 2 * Dd);
  hs.vq.min.get(b0 * ng, nb * ng, prm + 2 * Dd + nb * ng);
  fb.kscale = prm;
  fb.kmin = prm + Dd;
  fb.vscale = prm + 2 * Dd;
  fb.vmin = prm + 2 * Dd + nb * ng;
  if (cfg.key_rope == KeyRope::Pre) {
    fb.rope_cs = rope->cs_row(b0);
    fb.rope_lanes = rope_lanes ? rope_lanes->data() : nullptr;
    fb.neox = rope->layout() == RopeLayout::Neox;
  }
  fb.kbits = kbits;
  fb.vbits = vbits;
  fb.G = std::size_t(G);
  fb.nb = nb;
  fb.d = Dd;
}

void LayerCache::Impl::attend_range(int h, const float* q, std::size_t n_q, int n_heads,
                                    const int* q_pos, std::size_t t0, std::size_t t1,
                                    float* part) const {
  const std::size_t Dd = D(), stride = Dd + 2;
  const int n_rep = n_heads / n_kv;
  const std::size_t rows = n_q * std::size_t(n_rep);
  const float scale = 1.0f / std::sqrt(float(d));
  const std::size_t B = block();
  AttnScratch& sc = attn_scratch();
  grow(sc.kb, B * Dd);
  grow(sc.vb, B * Dd);
  grow(sc.s, simd::flash_work_floats(std::size_t(n_rep), B, Dd));
  grow(sc.tvis, std::size_t(n_rep));
  grow(sc.tmp, 2 * std::max(B * Dd, Dd));
  reset_partials(part, rows, stride);
  const bool pre = cfg.key_rope == KeyRope::Pre;
  const bool neox = pre && rope->layout() == RopeLayout::Neox;
  float* kb = sc.kb.data();
  float* vb = sc.vb.data();
  float* s = sc.s.data();
  // Fused kernel (KIVI/SQuat blocks whose keys and values are all quantized).
  const bool fusable = kivi_like && key_layout == GroupLayout::PerChannel &&
                       Dd * std::size_t(kbits) % 8 == 0 && Dd * std::size_t(vbits) % 8 == 0 &&
                       std::size_t(G) * std::size_t(vbits) % 8 == 0;
  const std::size_t n_both = std::min(n_kq, n_vq), ng = Dd / std::size_t(G);
  const std::size_t krb = Dd * std::size_t(kbits) / 8, vrb = Dd * std::size_t(vbits) / 8;
  if (fusable) {
    grow(sc.qptr, rows);
    grow(sc.pptr, rows);
    grow(sc.vis, rows);
    grow(sc.params, 2 * Dd + 2 * B * ng);
    grow(sc.work, simd::fused_work_floats(B, Dd, std::size_t(G)));
    grow(sc.kpad, B * krb + 64);  // sized for a whole block now: no allocation later
    grow(sc.vpad, B * vrb + 64);
    for (std::size_t i = 0; i < n_q; ++i) {
      for (int r = 0; r < n_rep; ++r) {
        const std::size_t row = i * std::size_t(n_rep) + std::size_t(r);
        sc.qptr[row] = q + (i * std::size_t(n_heads) + std::size_t(h * n_rep + r)) * Dd;
        sc.pptr[row] = part + row * stride;
      }
    }
  }
  for (std::size_t b0 = t0; b0 < t1; b0 += B) {
    const std::size_t nb = std::min(B, t1 - b0);
    if (fusable && b0 + nb <= n_both && b0 % std::size_t(G) == 0) {
      simd::FusedBlock fb;
      fused_setup(h, b0, nb, fb, sc.params.data(), sc.kpad, sc.vpad);
      for (std::size_t i = 0; i < n_q; ++i) {
        const long long v =
            std::clamp<long long>((long long)q_pos[i] - (long long)b0 + 1, 0, (long long)nb);
        for (int r = 0; r < n_rep; ++r)
          sc.vis[i * std::size_t(n_rep) + std::size_t(r)] = std::size_t(v);
      }
      if (simd::fused_block(fb, sc.qptr.data(), sc.vis.data(), rows, scale, sc.pptr.data(),
                            sc.work.data())) {
        continue;
      }
    }
    load_keys(h, b0, nb, kb, sc.tmp.data());
    if (pre) simd::rope_rows(kb, nb, Dd, rope->c_row(b0), rope->s_row(b0), neox);
    load_values(h, b0, nb, vb, sc.tmp.data());
    for (std::size_t i = 0; i < n_q; ++i) {
      const long long vis_ll =
          std::min<long long>((long long)nb, (long long)q_pos[i] - (long long)b0 + 1);
      if (vis_ll <= 0) continue;
      // The group's n_rep query heads are adjacent rows of q: one tile shares each key and
      // value load among them (per row the same arithmetic as the prefill tiles).
      std::fill(sc.tvis.begin(), sc.tvis.begin() + n_rep, std::size_t(vis_ll));
      simd::flash_tile(q + (i * std::size_t(n_heads) + std::size_t(h * n_rep)) * Dd,
                       std::size_t(n_rep), sc.tvis.data(), kb, Dd, vb, Dd, nb, Dd, scale,
                       part + i * std::size_t(n_rep) * stride, stride, s);
    }
  }
}

void LayerCache::Impl::attend_tiles(int h, const float* q, std::size_t i0, std::size_t i1,
                                    int n_heads, const int* q_pos, float* out, float* lse) const {
  const std::size_t Dd = D(), stride = Dd + 2, B = block();
  const std::size_t n_rep = std::size_t(n_heads / n_kv), rows = (i1 - i0) * n_rep;
  // Key blocks of the decode path's block length: the same online-softmax steps, so the same
  // bits as tokens fed one at a time (while decode does not split the tokens).
  const std::size_t KB = B;
  const float scale = 1.0f / std::sqrt(float(d));
  AttnScratch& sc = attn_scratch();
  grow(sc.kb, KB * Dd);
  grow(sc.vb, KB * Dd);
  grow(sc.tmp, 2 * KB * Dd);
  grow(sc.qs, rows * Dd);
  grow(sc.tpart, rows * stride);
  grow(sc.tvis, rows);
  grow(sc.work, simd::flash_work_floats(rows, KB, Dd));
  float* part = sc.tpart.data();
  std::size_t limit = 0;
  for (std::size_t i = i0; i < i1; ++i) {
    limit = std::max(limit,
                     std::size_t(std::clamp<long long>((long long)q_pos[i] + 1, 0, (long long)n)));
    for (std::size_t r = 0; r < n_rep; ++r) {
      const float* src = q + (i * std::size_t(n_heads) + std::size_t(h) * n_rep + r) * Dd;
      float* dst = sc.qs.data() + ((i - i0) * n_rep + r) * Dd;
      std::copy(src, src + Dd, dst);
    }
  }
  reset_partials(part, rows, stride);
  const bool pre = cfg.key_rope == KeyRope::Pre;
  const bool neox = pre && rope->layout() == RopeLayout::Neox;
  // Blocks whose keys and values are all quantized go through the fused kernel, as in decode
  // (it computes each row alone, so the rows' grouping does not change their bits).
  const bool fusable = kivi_like && key_layout == GroupLayout::PerChannel &&
                       Dd * std::size_t(kbits) % 8 == 0 && Dd * std::size_t(vbits) % 8 == 0 &&
                       std::size_t(G) * std::size_t(vbits) % 8 == 0;
  const std::size_t n_both = std::min(n_kq, n_vq);
  if (fusable) {
    grow(sc.qptr, rows);
    grow(sc.pptr, rows);
    grow(sc.params, 2 * Dd + 2 * B * (Dd / std::size_t(G)));
    grow(sc.fwork, simd::fused_work_floats(B, Dd, std::size_t(G)));
    grow(sc.kpad, B * Dd * std::size_t(kbits) / 8 + 64);
    grow(sc.vpad, B * Dd * std::size_t(vbits) / 8 + 64);
    for (std::size_t row = 0; row < rows; ++row) {
      sc.qptr[row] = sc.qs.data() + row * Dd;
      sc.pptr[row] = part + row * stride;
    }
  }
  for (std::size_t b0 = 0; b0 < limit; b0 += KB) {
    const std::size_t nb = std::min(KB, limit - b0);
    for (std::size_t i = i0; i < i1; ++i) {
      const std::size_t seen = std::size_t(
          std::clamp<long long>((long long)q_pos[i] + 1 - (long long)b0, 0, (long long)nb));
      for (std::size_t r = 0; r < n_rep; ++r) sc.tvis[(i - i0) * n_rep + r] = seen;
    }
    if (fusable && b0 + nb <= n_both && b0 % std::size_t(G) == 0) {
      simd::FusedBlock fb;
      fused_setup(h, b0, nb, fb, sc.params.data(), sc.kpad, sc.vpad);
      if (simd::fused_block(fb, sc.qptr.data(), sc.tvis.data(), rows, scale, sc.pptr.data(),
                            sc.fwork.data())) {
        continue;
      }
    }
    load_keys(h, b0, nb, sc.kb.data(), sc.tmp.data());
    if (pre) simd::rope_rows(sc.kb.data(), nb, Dd, rope->c_row(b0), rope->s_row(b0), neox);
    load_values(h, b0, nb, sc.vb.data(), sc.tmp.data());
    simd::flash_tile(sc.qs.data(), rows, sc.tvis.data(), sc.kb.data(), Dd, sc.vb.data(), Dd, nb, Dd,
                     scale, part, stride, sc.work.data());
  }
  for (std::size_t i = i0; i < i1; ++i) {
    for (std::size_t r = 0; r < n_rep; ++r) {
      const std::size_t at = i * std::size_t(n_heads) + std::size_t(h) * n_rep + r;
      const float l = finish_row(part + ((i - i0) * n_rep + r) * stride, 1, stride, out + at * Dd);
      if (lse) lse[at] = l;
    }
  }
}

std::size_t LayerCache::Impl::visible_limit(const int* q_pos, std::size_t n_q) const {
  long long max_pos = -1;
  for (std::size_t i = 0; i < n_q; ++i) max_pos = std::max<long long>(max_pos, q_pos[i]);
  return std::size_t(std::clamp<long long>(max_pos + 1, 0, (long long)n));
}

float LayerCache::Impl::finish_row(const float* part, std::size_t n_split, std::size_t split_stride,
                                   float* o) const {
  const float lse = merge_partials(part, n_split, split_stride, D(), o);
  if (cfg.hadamard) hadamard_transform(o, d);
  return lse;
}

void LayerCache::attend_head(int kv_head, const float* q, std::size_t n_q, int n_heads,
                             const int* q_pos, float* out) const {
  const Impl& m = *impl_;
  m.check_query_heads(n_heads);
  const std::size_t D = m.D(), stride = D + 2;
  const int n_rep = n_heads / m.n_kv;
  const std::size_t rows = n_q * std::size_t(n_rep);
  AttnScratch& sc = attn_scratch();
  grow(sc.part, rows * stride);
  float* part = sc.part.data();
  m.attend_range(kv_head, q, n_q, n_heads, q_pos, 0, m.visible_limit(q_pos, n_q), part);
  for (std::size_t i = 0; i < n_q; ++i) {
    for (int r = 0; r < n_rep; ++r) {
      const std::size_t row = i * std::size_t(n_rep) + std::size_t(r);
      m.finish_row(part + row * stride, 1, stride,
                   out + (i * std::size_t(n_heads) + std::size_t(kv_head * n_rep + r)) * D);
    }
  }
}

void LayerCache::attend(const float* q, std::size_t n_q, int n_heads, const int* q_pos, float* out,
                        ThreadPool* pool, float* lse) const {
  const Impl& m = *impl_;
  m.check_query_heads(n_heads);
  if (n_q == 0) return;
  const std::size_t D = m.D(), stride = D + 2, B = m.block();
  const int n_rep = n_heads / m.n_kv;
  if (n_q > kSplitMaxQueries) {
    // Prefill: tasks (KV head, block of queries), each writing its own output rows, handed
    // out one at a time through an atomic counter (last blocks, the costliest, first).
    const std::size_t qb = std::max<std::size_t>(1, kTileRows / std::size_t(n_rep));
    const std::size_t n_blocks = (n_q + qb - 1) / qb, n_kv = std::size_t(m.n_kv);
    const std::size_t n_tasks = n_blocks * n_kv;
    std::atomic<std::size_t> next{0};
    const auto work = [&](int) {
      for (std::size_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) {
        const std::size_t blk = n_blocks - 1 - t / n_kv;
        m.attend_tiles(int(t % n_kv), q, blk * qb, std::min(n_q, blk * qb + qb), n_heads, q_pos,
                       out, lse);
      }
    };
    if (pool && pool->size() > 1) {
      pool->run_on_all(work);
    } else {
      work(0);
    }
    return;
  }
  const std::size_t rows = n_q * std::size_t(n_rep), limit = m.visible_limit(q_pos, n_q);
  // Token ranges: multiples of the block (so ranges start on quantization groups).
  std::size_t n_split = 1, span = std::max<std::size_t>(limit, 1);
  if (n_q <= kSplitMaxQueries && limit > kSplitTokens) {
    span = std::max(kSplitTokens, (limit + kMaxSplits - 1) / kMaxSplits);
    span = (span + B - 1) / B * B;
    n_split = (limit + span - 1) / span;
  }
  const std::size_t n_tasks = std::size_t(m.n_kv) * n_split, task_floats = rows * stride;
  AttnScratch& sc = attn_scratch();
  // Decode sizes the partials for the most splits at once, so a growing context never
  // reallocates them.
  grow(sc.part, n_q <= kSplitMaxQueries ? std::size_t(m.n_kv) * kMaxSplits * kSplitMaxQueries *
                                              std::size_t(n_rep) * stride
                                        : n_tasks * task_floats);
  float* part = sc.part.data();
  const auto run = [&](std::size_t begin, std::size_t end, int) {
    for (std::size_t task = begin; task < end; ++task) {
      // Token-range-major order: a thread runs the KV heads of one range back to back, so the
      // range's RoPE table rows are read from cache again. Partials are stored head-major.
      const std::size_t h = task % std::size_t(m.n_kv), j = task / std::size_t(m.n_kv);
      const std::size_t t0 = j * span, t1 = std::min(limit, t0 + span);
      m.attend_range(int(h), q, n_q, n_heads, q_pos, t0, t1,
                     part + (h * n_split + j) * task_floats);
    }
  };
  if (pool && pool->size() > 1 && n_tasks > 1) {
    pool->parallel_for(n_tasks, run, 1);
  } else {
    run(0, n_tasks, 0);
  }
  for (int h = 0; h < m.n_kv; ++h) {
    for (std::size_t i = 0; i < n_q; ++i) {
      for (int r = 0; r < n_rep; ++r) {
        const std::size_t row = i * std::size_t(n_rep) + std::size_t(r);
        const std::size_t at = i * std::size_t(n_heads) + std::size_t(h * n_rep + r);
        const float l = m.finish_row(part + std::size_t(h) * n_split * task_floats + row * stride,
                                     n_split, task_floats, out + at * D);
        if (lse) lse[at] = l;
      }
    }
  }
}

void LayerCache::reserve(std::size_t n_tokens) {
  Impl& m = *impl_;
  const std::size_t D = m.D();
  for (HeadStore& hs : m.heads) {
    if (m.kivi_like || m.int_method) {
      const bool pc = m.key_layout == GroupLayout::PerChannel;
      const std::size_t kgroups =
          pc ? (n_tokens / std::size_t(m.G) + 1) * D : n_tokens * (D / std::size_t(m.G));
      hs.kq.codes.reserve(pc ? n_tokens * packed_bytes(D, m.kbits) : kgroups * m.gb(m.kbits));
      hs.kq.scale.reserve(kgroups);
      hs.kq.min.reserve(kgroups);
      const std::size_t vgroups = n_tokens * (D / std::size_t(m.G));
      hs.vq.codes.reserve(vgroups * m.gb(m.vbits));
      hs.vq.scale.reserve(vgroups);
      hs.vq.min.reserve(vgroups);
      hs.kres.reserve((std::size_t(m.R) + 1) * D);
      hs.vres.reserve((std::size_t(m.R) + 1) * D);
    } else {
      hs.kres.reserve(n_tokens * D);
      hs.vres.reserve(n_tokens * D);
    }
  }
  if (m.rope) m.rope->ensure(n_tokens);
  // append's flush scratch for a chunk of R keys (or one token's values).
  const std::size_t rows = std::max<std::size_t>(std::size_t(m.R), 1);
  AppendScratch& sc = *m.scratch;
  if (sc.flush_buf.size() < rows * D) sc.flush_buf.resize(rows * D);
  if (sc.rowbuf.size() < D) sc.rowbuf.resize(D);
  sc.qscratch.reserve(rows, D);
  sc.chunk.codes.reserve(rows * D);
  sc.chunk.scale.reserve(rows * D);
  sc.chunk.min.reserve(rows * D);
}

std::size_t LayerCache::allocated_bytes() const {
  std::size_t b = 0;
  for (const HeadStore& hs : impl_->heads) {
    b += hs.kq.codes.capacity() + hs.kq.scale.capacity_bytes() + hs.kq.min.capacity_bytes() +
         hs.vq.codes.capacity() + hs.vq.scale.capacity_bytes() + hs.vq.min.capacity_bytes() +
         hs.kres.capacity_bytes() + hs.vres.capacity_bytes();
  }
  return b;
}

// ---- Scalar reference ----------------------------------------------------------------------

void LayerCache::dequantize(int kv_head, float* keys, float* values) const {
  const Impl& m = *impl_;
  const HeadStore& hs = m.heads.at(std::size_t(kv_head));
  const std::size_t D = m.D(), Gs = std::size_t(m.G);
  std::vector<uint8_t> codes(std::max<std::size_t>(Gs, 1));
  // Keys.
  std::vector<uint8_t> row(D);
  for (std::size_t t = 0; t < m.n_kq; ++t) {
    if (m.key_layout == GroupLayout::PerChannel) {
      // Token rows of d packed codes; scale/min per (token group, channel).
      unpack_codes(hs.kq.codes.data() + t * packed_bytes(D, m.kbits), D, m.kbits, row.data());
      for (std::size_t c = 0; c < D; ++c) {
        const std::size_t g = (t / Gs) * D + c;
        keys[t * D + c] = float(row[c]) * hs.kq.scale.get(g) + hs.kq.min.get(g);
      }
    } else {
      for (std::size_t c = 0; c < D; ++c) {
        const std::size_t g = t * (D / Gs) + c / Gs;
        unpack_codes(hs.kq.codes.data() + g * m.gb(m.kbits), Gs, m.kbits, codes.data());
        keys[t * D + c] = float(codes[c % Gs]) * hs.kq.scale.get(g) + hs.kq.min.get(g);
      }
    }
  }
  for (std::size_t t = m.n_kq; t < m.n; ++t)
    for (std::size_t c = 0; c < D; ++c) keys[t * D + c] = hs.kres.get((t - m.n_kq) * D + c);
  // Values.
  for (std::size_t t = 0; t < m.n_vq; ++t) {
    for (std::size_t c = 0; c < D; ++c) {
      const std::size_t g = t * (D / Gs) + c / Gs;
      unpack_codes(hs.vq.codes.data() + g * m.gb(m.vbits), Gs, m.vbits, codes.data());
      values[t * D + c] = float(codes[c % Gs]) * hs.vq.scale.get(g) + hs.vq.min.get(g);
    }
  }
  for (std::size_t t = m.n_vq; t < m.n; ++t)
    for (std::size_t c = 0; c < D; ++c) values[t * D + c] = hs.vres.get((t - m.n_vq) * D + c);
  if (m.cfg.hadamard) {
    for (std::size_t t = 0; t < m.n; ++t) hadamard_transform(values + t * D, m.d);
  }
}

void LayerCache::attend_reference(const float* q, std::size_t n_q, int n_heads, const int* q_pos,
                                  float* out) const {
  const Impl& m = *impl_;
  m.check_query_heads(n_heads);
  const int n_rep = n_heads / m.n_kv;
  const std::size_t D = m.D();
  std::vector<float> keys(m.n * D), values(m.n * D);
  std::vector<double> logits(m.n);
  for (int h = 0; h < m.n_kv; ++h) {
    dequantize(h, keys.data(), values.data());
    if (m.cfg.key_rope == KeyRope::Pre) {
      for (std::size_t t = 0; t < m.n; ++t) {
        rope_rotate(keys.data() + t * D, D, (long long)t, m.rope->spec().inv_freq.data(),
                    m.rope->layout());
      }
    }
    for (std::size_t i = 0; i < n_q; ++i) {
      const std::size_t vis =
          std::size_t(std::clamp<long long>((long long)q_pos[i] + 1, 0, (long long)m.n));
      for (int r = 0; r < n_rep; ++r) {
        const std::size_t hq = std::size_t(h * n_rep + r);
        const float* qv = q + (i * std::size_t(n_heads) + hq) * D;
        float* o = out + (i * std::size_t(n_heads) + hq) * D;
        std::fill(o, o + D, 0.0f);
        if (vis == 0) continue;
        double mxl = -std::numeric_limits<double>::infinity();
        for (std::size_t t = 0; t < vis; ++t) {
          double dot = 0;
          for (std::size_t c = 0; c < D; ++c) dot += double(qv[c]) * double(keys[t * D + c]);
          logits[t] = dot / std::sqrt(double(m.d));
          mxl = std::max(mxl, logits[t]);
        }
        double sum = 0;
        for (std::size_t t = 0; t < vis; ++t) sum += std::exp(logits[t] - mxl);
        for (std::size_t c = 0; c < D; ++c) {
          double a = 0;
          for (std::size_t t = 0; t < vis; ++t) {
            a += std::exp(logits[t] - mxl) * double(values[t * D + c]);
          }
          o[c] = float(a / sum);
        }
      }
    }
  }
}

// ---- Whole cache ---------------------------------------------------------------------------

KvCache::KvCache(const CacheConfig& config, int n_layers, int n_kv_heads, int head_dim,
                 RopeSpec rope)
    : config_(config) {
  config.validate(head_dim);
  if (n_layers <= 0) fail_usage("n_layers must be positive, got {}", n_layers);
  if (config.key_rope == KeyRope::Pre) rope_ = std::make_shared<RopeTable>(std::move(rope));
  make_layers(n_layers, n_kv_heads, head_dim);
}

KvCache::KvCache(const CacheConfig& config, int n_layers, int n_kv_heads, int head_dim,
                 std::shared_ptr<RopeTable> rope)
    : config_(config), rope_(config.key_rope == KeyRope::Pre ? std::move(rope) : nullptr) {
  config.validate(head_dim);
  if (n_layers <= 0) fail_usage("n_layers must be positive, got {}", n_layers);
  make_layers(n_layers, n_kv_heads, head_dim);
}

void KvCache::make_layers(int n_layers, int n_kv_heads, int head_dim) {
  layers_.reserve(std::size_t(n_layers));
  for (int i = 0; i < n_layers; ++i) {
    layers_.emplace_back(config_, n_kv_heads, head_dim, rope_);
    if (i > 0) {  // one scratch and one lane table for all layers
      layers_.back().impl_->scratch = layers_[0].impl_->scratch;
      layers_.back().impl_->rope_lanes = layers_[0].impl_->rope_lanes;
    }
  }
}

std::size_t KvCache::bytes() const {
  std::size_t b = 0;
  for (const LayerCache& l : layers_) b += l.bytes();
  return b;
}

std::size_t KvCache::allocated_bytes() const {
  std::size_t b = 0;
  for (const LayerCache& l : layers_) b += l.allocated_bytes();
  return b;
}

void KvCache::reserve(std::size_t n_tokens) {
  for (LayerCache& l : layers_) l.reserve(n_tokens);
}

double KvCache::bits_per_element() const {
  const std::size_t n = tokens();
  if (n == 0 || layers_.empty()) return 0.0;
  const double elems = double(n) * double(layers_.size()) * double(layers_[0].n_kv_heads()) *
                       double(layers_[0].head_dim()) * 2.0;
  return double(bytes()) * 8.0 / elems;
}

void KvCache::clear() {
  for (LayerCache& l : layers_) l.clear();
}

void KvCache::save_states(const std::string& path, const std::string& tag) const {
  std::vector<SquatState> all;
  for (const LayerCache& l : layers_) {
    if (!l.has_states()) fail("cannot save SQuat states: a layer has none yet");
    all.insert(all.end(), l.states().begin(), l.states().end());
  }
  SquatStateFile::save(path, all, tag);
}

void KvCache::load_states(const std::string& path, const std::string& expected_tag) {
  std::string tag;
  std::vector<SquatState> all = SquatStateFile::load(path, &tag);
  if (!expected_tag.empty() && !tag.empty() && tag != expected_tag) {
    fail("SQuat state file {} was made for {}, not for {}", path, tag, expected_tag);
  }
  const std::size_t per = std::size_t(layers_.at(0).n_kv_heads());
  if (all.size() != per * layers_.size()) {
    fail("SQuat state file {} holds {} states, the cache needs {} ({} layers x {} KV heads)", path,
         all.size(), per * layers_.size(), layers_.size(), per);
  }
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    std::vector<SquatState> s(all.begin() + std::ptrdiff_t(i * per),
                              all.begin() + std::ptrdiff_t((i + 1) * per));
    layers_[i].set_states(std::move(s));
  }
}

}  // namespace squat::kv
