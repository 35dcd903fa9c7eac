// SIMD kernels of the attention fast path (Highway, dispatched at run time to the best target).
#pragma once

#include <cstddef>
#include <cstdint>

namespace squat::kv::simd {

// s[t] = scale * dot(q, k + t*d), t < nb.
void block_logits(const float* q, const float* k, std::size_t nb, std::size_t d, float scale,
                  float* s);
// s[t] = exp(s[t] - m) (0 below -87), returns the sum.
float exp_sum(float* s, std::size_t n, float m);
// acc = acc * corr + sum_t p[t] * v[t*d ..].
void accumulate(float* acc, float corr, const float* p, const float* v, std::size_t nb,
                std::size_t d);
// x[t*d + c] = x[t*d + c] * scale[c] + min[c] (per-channel groups).
void affine_channels(float* x, std::size_t nb, std::size_t d, const float* scale, const float* min);
// x[i*G + j] = x[i*G + j] * scale[i] + min[i] for n_groups groups of G (per-token groups).
void affine_groups(float* x, std::size_t n_groups, std::size_t G, const float* scale,
                   const float* min);
// Rotates nb rows of d: x' = x * C + partner(x) * S with C/S rows c + t*d, s + t*d
// (RopeTable's expanded rows); partner is the pair element ((2i, 2i+1) or (i, i + d/2)).
void rope_rows(float* x, std::size_t nb, std::size_t d, const float* c, const float* s, bool neox);

// T[t*ldt + j] += sum_k E[t*g + k] * W[k*cols + j] for t < n, j < cols (SQuat correction).
void gemm_acc(const float* E, std::size_t n, std::size_t g, const float* W, std::size_t cols,
              float* T, std::size_t ldt);
// out[i] = half_to_float(in[i]).
void f16_to_f32(const uint16_t* in, std::size_t n, float* out);

// One block of a KIVI/SQuat cache whose keys (per-channel groups) and values (per-token groups)
// are all quantized: the fused decode kernel attends over the codes without writing the block
// out as floats.
//
// Keys go in token lanes: a vector holds one channel of N tokens (N = the float lanes), so a
// query's logits for N tokens are sums over channels with no horizontal sum per key. The token
// rows of codes are transposed in registers (N rows of d*kbits/32 words -> one vector per word)
// and a channel is expanded by one AND with its bit mask and one int->float conversion: the
// float is code * 2^(bit position mod 16), and the power of two is folded into the channel's
// scale (KeyCodeExpand; a codebook format replaces that step). Pre-RoPE keys are rotated
// relative to the block's first token: R_(b0+j) = R_b0 R_j, so the query is rotated once by
// b0 (q' = R_b0^T q) and each dequantized key pair by R_j from a small table in token lanes
// (rope_lanes, j < G), shared by all the block's query rows. Values stay channel-major (a
// vector holds N channels of one token) and are accumulated with p_t * scale_t per token group.
struct FusedBlock {
  const uint8_t* kcodes = nullptr;  // nb token rows of d codes at kbits; readable 64 bytes past
  const float* kscale = nullptr;    // d: the block's per-channel key scale and min
  const float* kmin = nullptr;
  // Pre-RoPE keys: nb compact RoPE rows (RopeTable::cs_row) from the block's first token (the
  // kernel reads the first row; the reference all), and rope_lane_table(G) for the offsets
  // inside the block. Both null: post-RoPE keys.
  const float* rope_cs = nullptr;
  const float* rope_lanes = nullptr;
  bool neox = false;
  const uint8_t* vcodes = nullptr;  // nb token rows of d codes at vbits; readable 64 bytes past
  const float* vscale = nullptr;    // d/G x nb value group scale and min, group-major: [g * nb + t]
  const float* vmin = nullptr;
  int kbits = 2, vbits = 2;
  std::size_t G = 32, nb = 0, d = 0;
};
// Token-lane RoPE table of the offsets j < G inside a block: cos(j * inv_freq[i]) at
// out[i * 2G + j] and sin at out[i * 2G + G + j] for the half = d/2 pairs (squat::rope_cos_sin,
// as RopeTable's rows: R_b0 R_j then equals R_(b0+j) to float rounding). out: d * G floats.
void rope_lane_table(const float* inv_freq, std::size_t half, std::size_t G, float* out);
// Query rows fused_block handles in one pass over a block's codes (Qwen2.5's GQA groups are 6
// rows; 8 accumulators fit the registers of every vector target).
constexpr std::size_t kFusedPassRows = 8;
// Scratch floats fused_block needs.
std::size_t fused_work_floats(std::size_t nb, std::size_t d, std::size_t G);
// Online-softmax update of `rows` query rows over the block: q[r] is a query (d floats, rotated),
// vis[r] (<= nb) the block tokens it sees (0: untouched), part[r] = (max, sum, acc[d]), the
// layout of kvcache/softmax_partials.h (as are the `part` rows of the kernels below). Returns
// false (doing nothing) when the shape does not suit the vector width.
bool fused_block(const FusedBlock& b, const float* const* q, const std::size_t* vis,
                 std::size_t rows, float scale, float* const* part, float* work);

// Scalar reference of fused_block (same contract, no shape restriction).
void fused_block_reference(const FusedBlock& b, const float* const* q, const std::size_t* vis,
                           std::size_t rows, float scale, float* const* part);

// l * corr + psum: the softmax sum's update, computed out of line (rope.cpp, never fused into
// an FMA) so that it rounds alike on every SIMD target the tiles are built for.
float softmax_sum_update(float l, float corr, float psum);

// One tile of flash attention (prefill): `rows` query rows qs[r*d ..] against nb keys
// k + t*ldk and values v + t*ldv (d floats each), logits scaled by `scale`. Row r sees the
// first vis[r] keys of the tile (a causal prefix; 0: untouched). part + r*pstride holds the
// row's (max, sum, acc[d]) and is updated by the online softmax, with per row exactly the
// arithmetic of block_logits + exp_sum + accumulate. work: flash_work_floats.
void flash_tile(const float* qs, std::size_t rows, const std::size_t* vis, const float* k,
                std::size_t ldk, const float* v, std::size_t ldv, std::size_t nb, std::size_t d,
                float scale, float* part, std::size_t pstride, float* work);
std::size_t flash_work_floats(std::size_t rows, std::size_t nb, std::size_t d);
// Prompt attention of a batch over its own full-precision keys (model/dense_attention), a tile
// of `rows` query rows against nb keys, in two passes over all key tiles: pass 0 raises
// part[r*pstride] (the row max, start -inf) over the row's visible logits; pass 1 adds
// w = exp(logit - max) to part[..+1] and w * v to part[..+2 ..]. Per row this is exactly the
// per-query loop it replaces (kernels::dot's order, std::exp, axpy in token order), so the
// prompt's attention keeps its bits. work: 4 * nb floats.
void prompt_tile(const float* qs, std::size_t rows, const std::size_t* vis, const float* k,
                 std::size_t ldk, const float* v, std::size_t ldv, std::size_t nb, std::size_t d,
                 float scale, int pass, float* part, std::size_t pstride, float* work);
// Scalar reference of flash_tile (double-precision sums, same contract).
void flash_tile_reference(const float* qs, std::size_t rows, const std::size_t* vis, const float* k,
                          std::size_t ldk, const float* v, std::size_t ldv, std::size_t nb,
                          std::size_t d, float scale, float* part, std::size_t pstride);

// out[i] = float(code i) of n codes packed at `bits` bits (kv_quant.h packing convention).
void unpack_f32(const uint8_t* packed, std::size_t n, int bits, float* out);

}  // namespace squat::kv::simd
