// The private state of a LayerCache (LayerCache::Impl) and the storage it is made of, shared by
// the files that implement it: store.cpp (append, flush rules, queries, bytes), store_attention.cpp
// (block loading and attention), store_reference.cpp (the scalar reference).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kvcache/internal.h"
#include "kvcache/simd.h"
#include "squat/kvcache.h"

namespace squat::kv {

// Quantized codes of one stream (keys or values of one KV head) and their per-group parameters.
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

// append's scratch (append is not thread-safe anyway): sized by reserve or the first flush,
// then reused, so decoding allocates nothing. One per KvCache, shared by its layers.
struct AppendScratch {
  QuantizedChunk chunk;
  detail::QuantScratch qscratch;
  std::vector<float> flush_buf, rowbuf;
};

// The fused kernel's quantization parameters as floats for a window of up to kWindow key
// groups of one head, converted from the store one array at a time (not four small conversions
// per block). Valid within one attend call (the store does not change there).
struct FusedParams {
  static constexpr std::size_t kWindow = 8;
  std::size_t first = 0, groups = 0;  // key groups [first, first + groups) are loaded
  std::vector<float> buf;  // key scale, min [kWindow][D]; value scale, min [kWindow*G][D/G]
                           // (token-major); one block's value scale, min [D/G][G]
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
  std::size_t fused_params_floats() const {
    const std::size_t ng = D() / std::size_t(G), W = FusedParams::kWindow;
    return 2 * W * D() + 2 * W * std::size_t(G) * ng + 2 * std::size_t(G) * ng;
  }
  // Fills fb for the fused kernel over block [b0, b0 + nb) of head h (b0 a multiple of G,
  // quantized keys and values), loading params' window when it does not hold the block
  // (params.buf: fused_params_floats(); params.groups = 0 at the start of each attend call);
  // codes padded through kpad/vpad when needed.
  void fused_setup(int h, std::size_t b0, std::size_t nb, simd::FusedBlock& fb, FusedParams& params,
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

}  // namespace squat::kv
