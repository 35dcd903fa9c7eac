// KV-cache quantization primitives and the SQuat key quantizer (docs/SQUAT.md §1-§2).
//
// Everything here works on plain row-major float arrays ([tokens, head_dim]) and does not know
// about models, so it can be tested, benchmarked and used offline (`squat quant`) on its own.
//
// Conventions:
//  - Asymmetric min-max group quantization to 2, 4 or 8 bits. The group's scale and minimum are
//    stored in `ParamType` precision (fp16 like the reference, or fp32); codes are computed
//    against the *stored* (rounded) scale and minimum, so dequantization error stays within half
//    a step of the stored grid.
//  - Bit packing: code i of a group lives in byte (i*b)/8 at bit offset (i*b)%8 (little end
//    first). A group of n codes takes ceil(n*b/8) bytes.
//  - Layouts of a quantized [n, d] chunk:
//      PerChannel: for each channel, `group_size` consecutive tokens form a group (n % G == 0).
//                  Groups (scale, min) are ordered (token group, channel): index = tg*d + c.
//                  Codes are packed token-major: token t's d codes fill packed_bytes(d, b)
//                  bytes (a group's scale/min are shared by all its tokens, so a token row
//                  dequantizes as codes * scale[c] + min[c] with vector loads).
//      PerToken:   for each token, `group_size` consecutive channels form a group (d % G == 0).
//                  Groups are ordered (token, channel group): index = t*(d/G) + cg, and each
//                  group's G codes fill packed_bytes(G, b) bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace squat::kv {

enum class GroupLayout { PerChannel, PerToken };
enum class ParamType { F16, F32 };

inline int param_bytes(ParamType p) { return p == ParamType::F16 ? 2 : 4; }
inline std::size_t packed_bytes(std::size_t n_codes, int bits) {
  return (n_codes * std::size_t(bits) + 7) / 8;
}

// ---- Group quantization and bit packing -------------------------------------------------

// Rounds a scale or minimum to the storage precision (identity for F32).
float round_param(float x, ParamType p);

// Quantizes one group of n values read with `stride` (x[i*stride]) to `bits` bits.
// Writes n unpacked codes (one per byte) and the stored scale and minimum.
// scale == 0 (constant group, including n == 1) gives all codes 0 and x̂ = min.
void quantize_group(const float* x, std::size_t n, std::size_t stride, int bits, ParamType p,
                    uint8_t* codes, float* scale, float* min);

// Packs n codes (each < 2^bits, 1 <= bits <= 8) into packed_bytes(n, bits) bytes, code i at
// bits [i*bits, (i+1)*bits) of the byte stream, low bits first (3-bit codes straddle bytes);
// unpacks them back.
void pack_codes(const uint8_t* codes, std::size_t n, int bits, uint8_t* out);
void unpack_codes(const uint8_t* packed, std::size_t n, int bits, uint8_t* codes);

// A quantized [n, d] chunk: packed codes per group, then scale and min per group.
struct QuantizedChunk {
  std::size_t n = 0, d = 0;
  int bits = 2;
  int group_size = 32;
  GroupLayout layout = GroupLayout::PerChannel;
  ParamType param_type = ParamType::F16;
  std::vector<uint8_t> codes;  // codes_bytes()
  std::vector<float> scale;    // n_groups(), already rounded to param_type
  std::vector<float> min;      // n_groups(), already rounded to param_type

  std::size_t n_groups() const { return n * d / std::size_t(group_size); }
  std::size_t group_bytes() const { return packed_bytes(std::size_t(group_size), bits); }
  std::size_t codes_bytes() const {
    return layout == GroupLayout::PerChannel ? n * packed_bytes(d, bits)
                                             : n_groups() * group_bytes();
  }
  // Bytes this chunk occupies with codes packed and params in param_type.
  std::size_t storage_bytes() const {
    return codes_bytes() + n_groups() * 2 * std::size_t(param_bytes(param_type));
  }
  // Unpacked code of element (t, c).
  uint8_t code(std::size_t t, std::size_t c) const;
};

// Checks the shape/parameter combination (bits in {2,4,8}, divisibility); fail_usage otherwise.
void check_chunk_params(std::size_t n, std::size_t d, int bits, int group_size, GroupLayout layout);

// KIVI-style quantization of a whole [n, d] row-major chunk (no correction).
QuantizedChunk quantize_chunk(const float* x, std::size_t n, std::size_t d, int bits,
                              int group_size, GroupLayout layout, ParamType p);
// Writes the dequantized [n, d] chunk.
void dequantize_chunk(const QuantizedChunk& q, float* out);

// ---- SQuat ------------------------------------------------------------------------------

struct SubspaceOptions {
  int subspace_dim = 20;      // r; min(r, rows) directions are kept
  double lambda = 0.001;      // λ in A = I + λ Q̂ᵀQ̂
  int quant_group_size = 64;  // g: channels per SQuat block (d % g == 0)
  bool power_method = false;  // block power iteration instead of a thin SVD
  int power_iterations = 12;  // iterations of the block power method
};

// Per-prompt SQuat state of one (layer, KV head): H_1..H_{T-1} and P = A⁻¹ (SQUAT.md §2 step 3),
// plus the derived correction matrices W_i = (P[F:, :F] · H_i)ᵀ (g x (d-F)) used by the
// quantizer. `identity()` states (λ = 0 or r = 0) make the quantizer exactly KIVI.
class SquatState {
 public:
  SquatState() = default;

  // From A (d x d, row-major, double): the Schur chain, P and W. g must divide d.
  static SquatState from_metric(const std::vector<double>& a, int d, int g);
  // From a [rows, d] query matrix: Q̂ by thin SVD (or power method), A = I + λ Q̂ᵀQ̂, then as above.
  static SquatState from_queries(const float* q, std::size_t rows, int d,
                                 const SubspaceOptions& opt);
  // From the Gram matrix G = QᵀQ (d x d, row-major, double) of `rows` query rows: Q̂ from G's
  // top-r eigenpairs (eigenvectors = Q's right singular vectors, eigenvalues = S²; power
  // method: block power iteration on G), then as from_queries. The same subspace as
  // from_queries on Q up to rounding, without keeping Q: a prompt fed in chunks adds each
  // chunk's QᵀQ to G.
  static SquatState from_gram(const std::vector<double>& gram, std::size_t rows, int d,
                              const SubspaceOptions& opt);
  // The state for A = I (λ = 0 or r = 0): no correction at all.
  static SquatState identity(int d, int g);

  int head_dim() const { return d_; }
  int block_size() const { return g_; }
  int n_blocks() const { return g_ > 0 ? d_ / g_ : 0; }
  bool is_identity() const { return identity_; }
  bool empty() const { return d_ == 0; }
  // H_t, t = 1..T-1, row-major (t*g) x g.
  const std::vector<double>& h(int t) const { return h_[std::size_t(t - 1)]; }
  // P = A⁻¹, row-major d x d.
  const std::vector<double>& p() const { return p_; }
  // W_i, i = 1..T-1, row-major g x (d - i*g), float.
  const std::vector<float>& w(int i) const { return w_[std::size_t(i - 1)]; }

  // Frees P and H (the quantizer needs only W): a cache that will not save its states keeps
  // a tenth of the bytes. Such a state cannot be saved (SquatStateFile refuses it).
  void drop_metric();
  bool has_metric() const { return identity_ || !metric_dropped_; }

  bool operator==(const SquatState& o) const;
  // Bytes held by this state (P, H_t as double; W_i as float).
  std::size_t bytes() const;

 private:
  friend class SquatStateFile;
  // From Q̂ ([r, d], row-major): A = I + λ Q̂ᵀQ̂, then from_metric.
  static SquatState from_subspace(const std::vector<double>& qh, int r, int d,
                                  const SubspaceOptions& opt);
  void derive_w();

  int d_ = 0, g_ = 0;
  bool identity_ = true;
  bool metric_dropped_ = false;
  std::vector<std::vector<double>> h_;
  std::vector<double> p_;
  std::vector<std::vector<float>> w_;
};

// Top-r scaled directions Q̂ = diag(S_1..S_r) V_rᵀ of a [rows, d] query matrix, row-major
// [r', d] with r' = min(r, rows, d) (power method: same shape, approximate).
std::vector<double> query_subspace(const float* q, std::size_t rows, int d, int r,
                                   bool power_method, int power_iterations, int* r_out);

// The same directions from G = QᵀQ (d x d, row-major) of `rows` query rows (see from_gram).
std::vector<double> gram_subspace(const std::vector<double>& gram, std::size_t rows, int d, int r,
                                  bool power_method, int power_iterations, int* r_out);

// Block-sequential SQuat quantization of a [n, d] chunk of keys (SQUAT.md §2 step 4) with the
// given state (state.block_size() is g). Layout/group_size as in quantize_chunk; with an
// identity state the result equals quantize_chunk bit for bit.
QuantizedChunk squat_quantize_chunk(const float* keys, std::size_t n, std::size_t d, int bits,
                                    int group_size, GroupLayout layout, ParamType p,
                                    const SquatState& state);

// A set of states (e.g. layers x KV heads, in the caller's order) saved to / loaded from a file.
// Format (little endian): magic "SQUATST\0", u32 version (2), u32 tag length and the tag's bytes
// (free text naming what the states were made for, e.g. the model; at most 4096 bytes; version
// 1 files have no tag), u32 count, then per state u32 d, u32 g, u8 identity, and unless
// identity the doubles of P and H_1..H_{T-1}; then a u64 FNV-1a checksum of everything before
// it. Loading checks magic, version, sizes, finiteness and the checksum and fails
// (squat::fail) with a message naming the file. Saving replaces the file atomically.
class SquatStateFile {
 public:
  static void save(const std::string& path, const std::vector<SquatState>& states,
                   const std::string& tag = {});
  // `tag`, when given, receives the file's tag (empty for version 1 files).
  static std::vector<SquatState> load(const std::string& path, std::string* tag = nullptr);
  static std::vector<uint8_t> serialize(const std::vector<SquatState>& states,
                                        const std::string& tag = {});
  static std::vector<SquatState> deserialize(const std::vector<uint8_t>& bytes,
                                             const std::string& name, std::string* tag = nullptr);
};

}  // namespace squat::kv
