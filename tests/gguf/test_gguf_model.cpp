#include <gtest/gtest.h>

#include <filesystem>

#include "gguf/gguf.h"

namespace squat::gguf {
namespace {

TEST(GgufModel, DefaultModel) {
  const std::string path = SQUAT_TEST_MODEL;
  if (path.empty() || !std::filesystem::exists(path))
    GTEST_SKIP() << "no model at '" << path << "'";
  const File f = File::open(path);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_uint("llama.block_count"), 30u);
  EXPECT_EQ(f.get_uint("llama.embedding_length"), 576u);
  EXPECT_EQ(f.get_uint("llama.attention.head_count"), 9u);
  EXPECT_EQ(f.get_uint("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  const TensorInfo& q = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, TensorType::Q4_1);
  EXPECT_EQ(q.shape, (std::vector<uint64_t>{576, 576}));
  EXPECT_EQ(q.n_bytes, 576u * 576 / 32 * 20);
  // Every tensor lies inside the file, and 30 layers of 9 tensors plus embeddings and norm.
  EXPECT_EQ(f.tensors().size(), 30u * 9 + 2);
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_LE(f.data_offset() + t.offset + t.n_bytes, f.size()) << t.name;
  }
}

}  // namespace
}  // namespace squat::gguf
