// The cache store: the residual window and flush rules of docs/SQUAT.md §1 (append), SQuat's
// subspace from the prompt's queries (set_queries, add_queries), byte accounting and reserve.
// Attention over the store is store_attention.cpp; its scalar reference store_reference.cpp.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/scratch.h"
#include "core/thread_pool.h"
#include "kvcache/layer_cache_impl.h"

namespace squat::kv {

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
  grow(sc.flush_buf, rows * D());
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
  grow(sc.flush_buf, rows * D());
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
  grow(row_scratch, D);
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
  grow(sc.flush_buf, rows * D);
  grow(sc.rowbuf, D);
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

}  // namespace squat::kv
