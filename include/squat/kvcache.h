// The quantized KV cache: configuration, per-layer store with the residual window and flush
// rules of docs/SQUAT.md §1, SQuat per-prompt state, exact byte accounting, and attention over
// the store (online softmax, dequantizing block by block, RoPE for pre-RoPE keys, GQA).
//
// Typical use by a model, per layer and sequence (positions are implicit: the i-th token ever
// appended to a LayerCache has position i):
//   prefill of L tokens:  layer.set_queries(q, L, n_heads);   // SQuat only, before append
//                         layer.append(k, v, L);               // pre-RoPE keys by default
//                         layer.attend(q, L, n_heads, pos, out) // or dense attention on k, v
//   decode:               layer.append(k, v, 1); layer.attend(q, 1, n_heads, &pos, out);
// Not thread-safe for concurrent append; attend/attend_head are const and may run concurrently
// (e.g. one KV head per thread) once appends are done.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "squat/kv_quant.h"
#include "squat/rope.h"

namespace squat {
class ThreadPool;
}

namespace squat::kv {

enum class CacheMethod { F32, F16, Int8, Int4, Kivi, Squat };
inline constexpr CacheMethod kCacheMethods[] = {CacheMethod::F32,  CacheMethod::F16,
                                                CacheMethod::Int8, CacheMethod::Int4,
                                                CacheMethod::Kivi, CacheMethod::Squat};
enum class KeyRope { Pre, Post };        // keys stored before RoPE (rotated in attention) or after
enum class QueryRope { After, Before };  // which queries the engine passes to set_queries
using squat::RopeLayout;                 // rotated pairs: (2i, 2i+1) or (i, i + d/2) (squat/rope.h)

// The method's name as the --kv flag and CacheOptions::method spell it: "f32", "f16", "int8",
// "int4", "kivi", "squat" (the one place these names are written).
const char* to_string(CacheMethod m);
// Parses one of those names; fail_usage otherwise.
CacheMethod parse_method(const std::string& s);
// Full-precision methods (f32, f16) store every token as it comes; the others quantize.
constexpr bool is_quantized(CacheMethod m) {
  return m != CacheMethod::F32 && m != CacheMethod::F16;
}
// KIVI and SQuat keep the most recent tokens in a full-precision residual window.
constexpr bool has_residual_window(CacheMethod m) {
  return m == CacheMethod::Kivi || m == CacheMethod::Squat;
}

// SQuat's block size g (channels per block of the key quantizer) when the user gives none: the
// reference's 64 from head_dim 128 on (two or more blocks); below, head_dim/4. With one block
// SQuat has nothing to correct and equals KIVI, and with two (g = 32 at head_dim 64) it did
// not beat KIVI-2 on SmolLM2-135M, while four (g = 16) lowered the KL to the fp16 cache 5%
// below KIVI-2's (3.1 standard errors; docs/RESULTS.md, Quality). Per-token keys need g to be
// a multiple of `group_size`, so they get the smallest such g that divides head_dim.
int default_quant_group_size(int head_dim, GroupLayout key_quant, int group_size);

struct CacheConfig {
  CacheMethod method = CacheMethod::Squat;
  int k_bits = 2;  // Kivi/Squat: 2, 4 or 8 (Int8/Int4 imply 8/4)
  int v_bits = 2;
  int group_size = 32;        // tokens per per-channel key group; channels per value group
  int residual_length = 32;   // full-precision recent tokens (multiple of group_size)
  int quant_group_size = 64;  // SQuat block size g (divides head_dim)
  int subspace_dim = 20;      // r
  double lambda = 0.001;      // λ
  GroupLayout key_quant = GroupLayout::PerChannel;
  KeyRope key_rope = KeyRope::Pre;
  QueryRope query_rope = QueryRope::After;
  bool power_method = false;  // block power iteration instead of the thin SVD
  int power_iterations = 12;
  bool shared_subspace = false;  // engine-level: reuse the first sequence's states (info only)
  bool hadamard = false;         // rotate values by a normalized Walsh-Hadamard matrix
  ParamType param_type = ParamType::F16;  // storage of scale and min
  bool residual_f16 = true;               // full-precision window (and F16 method) stored as fp16

  bool quantized() const { return is_quantized(method); }
  // Bits actually used for keys / values by the method.
  int key_bits() const;
  int value_bits() const;
  // Tokens kept in full precision (0 for f32/f16/int8/int4 which store every token at once).
  int window() const;
  // Refuses impossible combinations (fail_usage with a message naming the field).
  void validate(int head_dim) const;
  std::string describe() const;
};

// The cache options by name, as the command line's flags (`--kv`, `--k-bits`, ...) and the
// Python package's squat.CacheConfig spell them: enumerations as their flag values, 0 for an
// automatic quant_group_size, an empty key_rope for the method's default (pre for kivi/squat,
// post otherwise).
struct CacheOptions {
  std::string method = "f16";
  int k_bits = 2, v_bits = 2;
  int group_size = 32;
  int residual_length = 32;
  int quant_group_size = 0;
  int subspace_dim = 20;
  double lambda = 0.001;
  std::string key_quant = "per-channel";
  std::string key_rope;
  std::string query_rope = "after";
  bool power_method = false;
  bool hadamard = false;
};

// The one translation of named options into a CacheConfig for a model with this head_dim:
// resolves the defaults, refuses unknown names and impossible combinations (fail_usage, the
// message naming the field and the method).
CacheConfig make_cache_config(const CacheOptions& options, int head_dim);

// RoPE description: inv_freq has head_dim/2 entries; token at position p rotates pair i by
// angle p * inv_freq[i] (cos/sin from squat::rope_cos_sin).
struct RopeSpec {
  std::vector<float> inv_freq;
  RopeLayout layout = RopeLayout::Normal;
};

// cos/sin per position, grown on demand; shared by all layers of a cache. Rows are stored
// expanded to head_dim entries so a rotation is x' = x * C + partner(x) * S with
// partner = the other element of the pair (C = cos at both, S = -sin at the first, +sin at the
// second element of each pair). 768 bytes per position at head_dim 64, so a server shares one
// table among its sequences: made with a fixed number of positions, a table is filled once and
// never grows (read-only, safe to share across threads); ensure() beyond it fails.
class RopeTable {
 public:
  explicit RopeTable(RopeSpec spec);
  RopeTable(RopeSpec spec, std::size_t fixed_positions);
  void ensure(std::size_t n_positions);
  std::size_t size() const { return n_; }
  int half() const { return half_; }
  RopeLayout layout() const { return spec_.layout; }
  const RopeSpec& spec() const { return spec_; }
  const float* c_row(std::size_t pos) const { return c_.data() + pos * std::size_t(2 * half_); }
  const float* s_row(std::size_t pos) const { return s_.data() + pos * std::size_t(2 * half_); }
  // Compact row (head_dim floats, half the bytes of c_row + s_row, for streaming kernels):
  // Normal layout: cos and sin of pair i at 2i and 2i+1; NeoX: cos of pair i at i, sin at
  // head_dim/2 + i.
  const float* cs_row(std::size_t pos) const { return cs_.data() + pos * std::size_t(2 * half_); }

 private:
  void grow(std::size_t n_positions);

  RopeSpec spec_;
  int half_ = 0;
  std::size_t n_ = 0;
  bool fixed_ = false;
  std::vector<float> c_, s_, cs_;
};

// In-place normalized Walsh-Hadamard transform (n a power of two); its own inverse.
void hadamard_transform(float* x, int n);

// Full-precision causal attention over dense arrays (reference for the engine's plain
// prefill): q [n_q, n_heads, d] at q_pos, keys/values [n_k, n_kv_heads, d] (keys already
// rotated) at positions 0..n_k-1; out [n_q, n_heads, d]. Scale 1/sqrt(d).
void attention_dense(const float* q, std::size_t n_q, int n_heads, const int* q_pos, const float* k,
                     const float* v, std::size_t n_k, int n_kv_heads, int d, float* out);

class LayerCache {
 public:
  // `rope` is needed (non-null, head_dim/2 frequencies) when keys are stored pre-RoPE.
  LayerCache(const CacheConfig& config, int n_kv_heads, int head_dim,
             std::shared_ptr<RopeTable> rope = nullptr);
  ~LayerCache();
  LayerCache(LayerCache&&) noexcept;
  LayerCache& operator=(LayerCache&&) noexcept;

  const CacheConfig& config() const;
  int n_kv_heads() const;
  int head_dim() const;

  // SQuat: builds the per-prompt state of every KV head from the prompt's queries
  // q [n_q, n_heads, d] (query heads h with h / n_rep == kv_head are stacked as rows).
  // Call before appending the prompt's keys. Calling again replaces the states for later
  // flushes. No-op for other methods.
  // With a pool, KV heads are processed in parallel.
  void set_queries(const float* q, std::size_t n_q, int n_heads, ThreadPool* pool = nullptr);
  // SQuat, a prompt fed in chunks: adds the chunk's queries (same layout as set_queries) to a
  // per-KV-head Gram matrix G = QᵀQ of all queries added so far (d x d, double) and rebuilds
  // the states from it (SquatState::from_gram), so the chunk's keys, flushed after this call,
  // are quantized with the subspace of every query seen up to and including the chunk. The
  // first call after clear_states (or end_queries) builds the states from its queries by SVD,
  // exactly as set_queries does, so a prompt of one chunk gives the same states bit for bit.
  // No-op for other methods.
  void add_queries(const float* q, std::size_t n_q, int n_heads, ThreadPool* pool = nullptr);
  // Frees the Gram matrices (the prompt is over; the states stay).
  void end_queries();
  // Uses given states (one per KV head), e.g. loaded from a file.
  void set_states(std::vector<SquatState> states);
  const std::vector<SquatState>& states() const;
  bool has_states() const;
  // Forgets the states (a new prompt will build its own).
  void clear_states();
  // SquatState::drop_metric for every state of this layer (they can no longer be saved).
  void drop_state_metrics();

  // Appends n tokens: k and v are [n, n_kv_heads, d] (keys pre- or post-RoPE per config).
  // Applies the flush rules; a SQuat flush without states fails (squat::fail).
  void append(const float* k, const float* v, std::size_t n);

  // Attention of q [n_q, n_heads, d] (RoPE-rotated, at positions q_pos) over everything
  // stored, causal (a query at p sees keys at positions <= p); out [n_q, n_heads, d].
  // Queries that see no key get zeros.
  // With a pool, KV heads run in parallel. `lse`, when given, receives per query and head
  // ([n_q, n_heads]) the log of the softmax's denominator, log sum_t exp(q·k_t / sqrt(d))
  // (-inf for a query that sees no key), so the result can be merged with attention over
  // other keys (a prompt chunk over its own full-precision keys).
  void attend(const float* q, std::size_t n_q, int n_heads, const int* q_pos, float* out,
              ThreadPool* pool = nullptr, float* lse = nullptr) const;
  // Only the query heads of one KV head (the rest of out is untouched).
  void attend_head(int kv_head, const float* q, std::size_t n_q, int n_heads, const int* q_pos,
                   float* out) const;
  // Scalar double-precision reference of attend (dequantizes the whole head first).
  void attend_reference(const float* q, std::size_t n_q, int n_heads, const int* q_pos,
                        float* out) const;

  std::size_t tokens() const;
  std::size_t quantized_keys() const;    // tokens whose keys are quantized
  std::size_t quantized_values() const;  // tokens whose values are quantized
  // Bytes of stored cache data (codes, scales/mins, full-precision windows) over all heads.
  std::size_t key_bytes() const;
  std::size_t value_bytes() const;
  std::size_t bytes() const { return key_bytes() + value_bytes(); }
  // Per-prompt SQuat state held in memory (P and H_t in double, W_i in float, and the query
  // Gram matrices while a chunked prompt is fed), not per token and not included in bytes().
  std::size_t state_bytes() const;
  // bytes()*8 / (tokens * n_kv_heads * d * 2); 0 when empty.
  double bits_per_element() const;
  // Stored contents of one KV head as floats [tokens, d]: keys as stored (pre-RoPE keys not
  // rotated), values in the original basis (Hadamard undone). Scalar path.
  void dequantize(int kv_head, float* keys, float* values) const;
  void clear();  // drops tokens, keeps states (and capacity)
  // Reserves storage for n_tokens (avoids reallocation while decoding) and RoPE rows.
  void reserve(std::size_t n_tokens);
  // Bytes actually allocated (vector capacities), >= bytes().
  std::size_t allocated_bytes() const;

 private:
  struct Impl;
  friend class KvCache;  // shares append's scratch among a sequence's layers
  std::unique_ptr<Impl> impl_;
};

// All layers of one sequence. The layers share their RoPE table and append's scratch (a
// sequence's layers are appended one after another, never at once).
class KvCache {
 public:
  KvCache(const CacheConfig& config, int n_layers, int n_kv_heads, int head_dim,
          RopeSpec rope = {});
  // With a RoPE table shared with other caches (pre-RoPE keys; a fixed table when the caches
  // are used on different threads).
  KvCache(const CacheConfig& config, int n_layers, int n_kv_heads, int head_dim,
          std::shared_ptr<RopeTable> rope);
  LayerCache& layer(int i) { return layers_.at(std::size_t(i)); }
  const LayerCache& layer(int i) const { return layers_.at(std::size_t(i)); }
  int n_layers() const { return int(layers_.size()); }
  std::size_t tokens() const { return layers_.empty() ? 0 : layers_[0].tokens(); }
  std::size_t bytes() const;
  std::size_t allocated_bytes() const;
  double bits_per_element() const;
  void clear();
  void reserve(std::size_t n_tokens);  // every layer
  // SQuat states of all layers (layer-major, then KV head) to / from a file. `tag` names what
  // they were made for (the engine passes a model fingerprint); loading with a non-empty
  // expected tag refuses a file tagged for something else (untagged files are accepted).
  void save_states(const std::string& path, const std::string& tag = {}) const;
  void load_states(const std::string& path, const std::string& expected_tag = {});

 private:
  void make_layers(int n_layers, int n_kv_heads, int head_dim);

  CacheConfig config_;
  std::shared_ptr<RopeTable> rope_;
  std::vector<LayerCache> layers_;
};

}  // namespace squat::kv
