// Writes the small GGUF files under tests/fixtures/gguf that seed the fuzzer's corpus:
// valid_* parse, invalid_* must fail with an Error (test_gguf checks both).
// Usage: gguf_make_seeds DIR
#include <cstdio>
#include <fstream>
#include <string>

#include "gguf_writer.h"

using namespace squat::gguf::testing;

namespace {

void save(const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  std::ofstream(dir + "/" + name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  std::printf("%s/%s: %zu bytes\n", dir.c_str(), name.c_str(), bytes.size());
}

Writer every_value_type(uint32_t version) {
  Writer w(version);
  w.kv("u8", kU8, [](Bytes& b) { b.u8(200); });
  w.kv("i8", kI8, [](Bytes& b) { b.i8(-5); });
  w.kv("u16", kU16, [](Bytes& b) { b.u16(60000); });
  w.kv("i16", kI16, [](Bytes& b) { b.i16(-300); });
  w.kv("u32", kU32, [](Bytes& b) { b.u32(4000000000u); });
  w.kv("i32", kI32, [](Bytes& b) { b.i32(-7); });
  w.kv("f32", kF32, [](Bytes& b) { b.f32(0.5f); });
  w.kv("bool", kBool, [](Bytes& b) { b.u8(1); });
  w.kv_str("str", "hello");
  w.kv("u64", kU64, [](Bytes& b) { b.u64(1ull << 40); });
  w.kv("i64", kI64, [](Bytes& b) { b.i64(-1); });
  w.kv("f64", kF64, [](Bytes& b) { b.f64(2.25); });
  w.kv_str_array("strs", {"a", "", "xyz"});
  w.kv("nested", kArr, [](Bytes& b) {
    b.u32(kArr).u64(2);
    b.u32(kI32).u64(2).i32(1).i32(2);
    b.u32(kArr).u64(1).u32(kF32).u64(1).f32(3.0f);
  });
  return w;
}

Writer llama_like() {
  Writer w(3);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.block_count", 1);
  w.kv_u32("llama.embedding_length", 32);
  w.kv_str("tokenizer.ggml.model", "gpt2");
  w.kv_str_array("tokenizer.ggml.tokens", {"<s>", "a", "b", "ab"});
  w.kv_str_array("tokenizer.ggml.merges", {"a b"});
  w.tensor("token_embd.weight", {32, 4}, 3, 4 * 20);      // Q4_1
  w.tensor("blk.0.attn_norm.weight", {32}, 0, 128);       // F32
  w.tensor("blk.0.attn_q.weight", {32, 32}, 8, 32 * 34);  // Q8_0
  w.tensor("output_norm.weight", {32}, 1, 64);            // F16
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  save(dir, "valid_empty_v3.gguf", Writer(3).build());
  save(dir, "valid_metadata_v2.gguf", every_value_type(2).build());
  save(dir, "valid_metadata_v3.gguf", every_value_type(3).build());
  save(dir, "valid_llama_like.gguf", llama_like().build());
  {
    Writer w(3);
    w.alignment(64);
    w.tensor("a", {3}, 0, 12).tensor("b", {256}, 14, 210).tensor("c", {2, 2, 2, 2}, 30, 32);
    save(dir, "valid_align64.gguf", w.build());
  }

  Writer::Layout l;
  auto bytes = llama_like().build(&l);
  auto cut = bytes;
  cut.resize(bytes.size() / 2);
  save(dir, "invalid_truncated.gguf", cut);
  auto v1 = bytes;
  patch<uint32_t>(v1, 4, 1);
  save(dir, "invalid_version1.gguf", v1);
  auto q2k = bytes;
  patch<uint32_t>(q2k, l.type_field[1], 10);
  save(dir, "invalid_unsupported_type.gguf", q2k);
  auto off = bytes;
  patch<uint64_t>(off, l.offset_field[3], 1ull << 20);
  save(dir, "invalid_offset.gguf", off);
  Writer huge(3);
  huge.kv("arr", kArr, [](Bytes& b) { b.u32(kStr).u64(1ull << 60); });
  save(dir, "invalid_huge_array.gguf", huge.build());
  return 0;
}
