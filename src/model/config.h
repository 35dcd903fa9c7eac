// Hyper-parameters of a Llama-family model, read from GGUF metadata.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace squat {
namespace gguf {
class File;
}

struct ModelConfig {
  std::string architecture;  // llama, mistral, qwen2
  std::string name;
  int n_layers = 0;
  int n_embd = 0;
  int n_ff = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int context_length = 0;  // trained context
  float rms_eps = 1e-5f;
  bool neox_rope = false;  // qwen2 rotates (i, i + d/2); llama-style GGUFs rotate (2i, 2i+1)
  bool qkv_bias = false;   // qwen2
  // Inverse RoPE frequencies per dimension pair (head_dim/2), with any scaling folded in
  // (linear scaling divides positions by its factor, i.e. multiplies every frequency by 1/factor).
  std::vector<float> rope_inv_freq;

  int n_rep() const { return n_heads / n_kv_heads; }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  // Reads and checks the hyper-parameters; errors name the file and key.
  static ModelConfig from_gguf(const gguf::File& file);
};

}  // namespace squat
