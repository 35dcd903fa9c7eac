// Causal attention over keys and values held in plain float arrays (one layer's batch during a
// prefill): the prompt attends to itself in full precision, as the SQuat and KIVI references
// do, whatever the cache stores afterwards.
#pragma once

#include "model/attention_cache.h"

namespace squat {

// q: [n_q, n_heads, d] rotated queries at positions q_first_pos + i; k (rotated) and v:
// [n_k, n_kv_heads, d] at positions 0..n_k-1. Query i sees keys at positions <= its own.
// out: [n_q, n_heads, d]. Scale 1/sqrt(d); GQA by head // (n_heads / n_kv_heads).
// Tiled: tasks (KV head, block of queries) with all query heads of the group stacked as rows,
// handed out heaviest first; key tiles through kv::simd::prompt_tile in two passes (row max,
// then weights and values), which keeps exactly the bits of a per-query loop and so does not
// depend on the number of threads.
// `lse`, when given, receives per query and head ([n_q, n_heads]) the log of the softmax's
// denominator (-inf when the query sees no key), to merge with attention over other keys.
void causal_attention(const KvShape& shape, const float* q, int n_q, int q_first_pos,
                      const float* k, const float* v, int n_k, float* out, ThreadPool& pool,
                      float* lse = nullptr);

// Scalar reference (per query and head, double-precision sums), same contract.
void causal_attention_reference(const KvShape& shape, const float* q, int n_q, int q_first_pos,
                                const float* k, const float* v, int n_k, float* out);

}  // namespace squat
