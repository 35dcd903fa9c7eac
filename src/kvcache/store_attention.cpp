// Attention over the cache store: block loading (dequantization, RoPE of pre-RoPE keys) and
// flash-decoding / flash-attention tiles with an online softmax, on the fused SIMD kernels of
// attention_simd.cpp where the layout allows.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/scratch.h"
#include "core/thread_pool.h"
#include "kvcache/layer_cache_impl.h"
#include "kvcache/softmax_partials.h"

namespace squat::kv {

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
  std::vector<float> kb, vb, s, tmp, part, work, qs, tpart, fwork;
  FusedParams fparams;
  std::vector<uint8_t> kpad, vpad;
  std::vector<const float*> qptr;
  std::vector<float*> pptr;
  std::vector<std::size_t> vis, tvis;
};
AttnScratch& attn_scratch() { return thread_scratch<AttnScratch>(); }

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

}  // namespace

std::size_t LayerCache::Impl::block() const { return kivi_like ? std::size_t(G) : 32; }

void LayerCache::Impl::fused_setup(int h, std::size_t b0, std::size_t nb, simd::FusedBlock& fb,
                                   FusedParams& fp, std::vector<uint8_t>& kpad,
                                   std::vector<uint8_t>& vpad) const {
  const std::size_t Dd = D(), Gs = std::size_t(G), ng = Dd / Gs, W = FusedParams::kWindow;
  const std::size_t krb = Dd * std::size_t(kbits) / 8, vrb = Dd * std::size_t(vbits) / 8;
  const HeadStore& hs = heads[std::size_t(h)];
  fb.kcodes = padded_codes(hs.kq.codes, b0 * krb, nb * krb, kpad);
  fb.vcodes = padded_codes(hs.vq.codes, b0 * vrb, nb * vrb, vpad);
  float* ks = fp.buf.data();
  float* km = ks + W * Dd;
  float* vs = km + W * Dd;
  float* vm = vs + W * Gs * ng;
  float* vs_block = vm + W * Gs * ng;
  float* vm_block = vs_block + ng * Gs;
  const std::size_t group = b0 / Gs;
  if (group < fp.first || group >= fp.first + fp.groups) {
    // The window from this block: whole key groups, as many value tokens as are quantized.
    const std::size_t tokens = std::min(W * Gs, std::min(n_kq, n_vq) - b0);
    const std::size_t groups = (tokens + Gs - 1) / Gs;
    hs.kq.scale.get(group * Dd, groups * Dd, ks);
    hs.kq.min.get(group * Dd, groups * Dd, km);
    hs.vq.scale.get(b0 * ng, tokens * ng, vs);
    hs.vq.min.get(b0 * ng, tokens * ng, vm);
    fp.first = group;
    fp.groups = groups;
  }
  const std::size_t at = group - fp.first;
  fb.kscale = ks + at * Dd;
  fb.kmin = km + at * Dd;
  // The store keeps value scales token-major ([t][g]); the kernel reads them group-major.
  const float* vs_rows = vs + at * Gs * ng;
  const float* vm_rows = vm + at * Gs * ng;
  for (std::size_t t = 0; t < nb; ++t) {
    for (std::size_t g = 0; g < ng; ++g) {
      vs_block[g * nb + t] = vs_rows[t * ng + g];
      vm_block[g * nb + t] = vm_rows[t * ng + g];
    }
  }
  fb.vscale = vs_block;
  fb.vmin = vm_block;
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
  const std::size_t Dd = D(), stride = softmax_partial_stride(Dd);
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
  const std::size_t n_both = std::min(n_kq, n_vq);
  const std::size_t krb = Dd * std::size_t(kbits) / 8, vrb = Dd * std::size_t(vbits) / 8;
  if (fusable) {
    grow(sc.qptr, rows);
    grow(sc.pptr, rows);
    grow(sc.vis, rows);
    grow(sc.fparams.buf, fused_params_floats());
    sc.fparams.groups = 0;
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
      fused_setup(h, b0, nb, fb, sc.fparams, sc.kpad, sc.vpad);
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
  const std::size_t Dd = D(), stride = softmax_partial_stride(Dd), B = block();
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
    grow(sc.fparams.buf, fused_params_floats());
    sc.fparams.groups = 0;
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
      fused_setup(h, b0, nb, fb, sc.fparams, sc.kpad, sc.vpad);
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
  const std::size_t D = m.D(), stride = softmax_partial_stride(D);
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
  const std::size_t D = m.D(), stride = softmax_partial_stride(D), B = m.block();
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

}  // namespace squat::kv
