#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "gguf/gguf.h"
#include "gguf_writer.h"

namespace squat::gguf {
namespace {

using testing::Bytes;
using testing::patch;
using testing::Writer;
namespace t = testing;

File parse(const std::vector<uint8_t>& bytes, const std::string& name = "test.gguf") {
  return File::from_memory(bytes.data(), bytes.size(), name);
}

// The message of the Error that parsing `bytes` throws ("" when it does not throw).
std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    parse(bytes);
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_status(), 1);
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(bytes, text)                         \
  do {                                                        \
    const std::string msg_ = error_of(bytes);                 \
    EXPECT_NE(msg_.find(text), std::string::npos)             \
        << "message: '" << msg_ << "'\nexpected: " << (text); \
    EXPECT_EQ(msg_.rfind("test.gguf: ", 0), 0u) << msg_;      \
  } while (0)

// A small valid file with metadata and two tensors; the base of the corruption tests.
Writer small_writer() {
  Writer w(3);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.block_count", 2);
  w.kv_str_array("tokenizer.ggml.tokens", {"a", "bc", ""});
  w.tensor("tok_embd.weight", {32, 2}, uint32_t(TensorType::Q4_0), 2 * 18);
  w.tensor("output_norm.weight", {3}, uint32_t(TensorType::F32), 12);
  return w;
}

TEST(Gguf, HandWrittenBytes) {
  // A v3 file written out by hand: one metadata pair ("a" = UINT32 7) and one F32 tensor "t" of
  // shape [2] at offset 0, the data section padded to 32 bytes.
  std::vector<uint8_t> file = {
      'G', 'G', 'U', 'F', 3, 0, 0, 0,       // magic, version 3
      1,   0,   0,   0,   0, 0, 0, 0,       // tensor count 1
      1,   0,   0,   0,   0, 0, 0, 0,       // metadata count 1
      1,   0,   0,   0,   0, 0, 0, 0, 'a',  // key "a"
      4,   0,   0,   0,   7, 0, 0, 0,       // UINT32 7
      1,   0,   0,   0,   0, 0, 0, 0, 't',  // tensor name "t"
      1,   0,   0,   0,                     // n_dims 1
      2,   0,   0,   0,   0, 0, 0, 0,       // dim 2
      0,   0,   0,   0,                     // type F32
      0,   0,   0,   0,   0, 0, 0, 0,       // offset 0
  };
  ASSERT_EQ(file.size(), 74u);
  file.resize(96, 0);  // padding up to the data section at 96
  const float data[2] = {1.5f, -2.0f};
  const auto* p = reinterpret_cast<const uint8_t*>(data);
  file.insert(file.end(), p, p + 8);

  const File f = parse(file);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), 96u);
  EXPECT_EQ(f.size(), 104u);
  ASSERT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.metadata()[0].first, "a");
  EXPECT_EQ(f.get_uint("a"), 7u);
  ASSERT_EQ(f.tensors().size(), 1u);
  const TensorInfo& ti = f.tensor("t");
  EXPECT_EQ(ti.shape, std::vector<uint64_t>{2});
  EXPECT_EQ(ti.type, TensorType::F32);
  EXPECT_EQ(ti.n_elements, 2u);
  EXPECT_EQ(ti.n_bytes, 8u);
  ASSERT_EQ(ti.data, file.data() + 96);
  float back[2];
  std::memcpy(back, ti.data, 8);
  EXPECT_EQ(back[0], 1.5f);
  EXPECT_EQ(back[1], -2.0f);

  // The test writer must produce exactly these bytes.
  Writer w(3);
  w.kv_u32("a", 7);
  w.tensor("t", {2}, 0, 8, std::vector<uint8_t>(p, p + 8));
  EXPECT_EQ(w.build(), file);
}

class GgufVersion : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersion, EveryValueType) {
  Writer w(GetParam());
  w.kv("u8", t::kU8, [](Bytes& b) { b.u8(200); });
  w.kv("i8", t::kI8, [](Bytes& b) { b.i8(-5); });
  w.kv("u16", t::kU16, [](Bytes& b) { b.u16(60000); });
  w.kv("i16", t::kI16, [](Bytes& b) { b.i16(-30000); });
  w.kv("u32", t::kU32, [](Bytes& b) { b.u32(4000000000u); });
  w.kv("i32", t::kI32, [](Bytes& b) { b.i32(-2000000000); });
  w.kv("f32", t::kF32, [](Bytes& b) { b.f32(1.5f); });
  w.kv("bool", t::kBool, [](Bytes& b) { b.u8(1); });
  w.kv("false", t::kBool, [](Bytes& b) { b.u8(0); });
  w.kv("str", t::kStr, [](Bytes& b) { b.str("h\xc3\xa9llo"); });
  w.kv("u64", t::kU64, [](Bytes& b) { b.u64((uint64_t(1) << 63) + 5); });
  w.kv("i64", t::kI64, [](Bytes& b) { b.i64(-(int64_t(1) << 62)); });
  w.kv("f64", t::kF64, [](Bytes& b) { b.f64(3.25); });
  w.kv("arr_i32", t::kArr, [](Bytes& b) { b.u32(t::kI32).u64(3).i32(-1).i32(0).i32(7); });
  w.kv("arr_f32", t::kArr, [](Bytes& b) { b.u32(t::kF32).u64(2).f32(0.5f).f32(-4.0f); });
  w.kv_str_array("arr_str", {"x", "", "yz"});
  w.kv("empty", t::kArr, [](Bytes& b) { b.u32(t::kU64).u64(0); });
  // [[1, 2], [], [[9]]] with mixed inner types: arrays of arrays are allowed by the format.
  w.kv("nested", t::kArr, [](Bytes& b) {
    b.u32(t::kArr).u64(3);
    b.u32(t::kU8).u64(2).u8(1).u8(2);
    b.u32(t::kStr).u64(0);
    b.u32(t::kArr).u64(1).u32(t::kI16).u64(1).i16(9);
  });
  const std::vector<uint8_t> bytes = w.build();  // alive while f is: values point into it
  const File f = parse(bytes);
  EXPECT_EQ(f.version(), GetParam());
  ASSERT_EQ(f.metadata().size(), 18u);
  EXPECT_EQ(f.metadata()[0].first, "u8");  // file order is kept
  EXPECT_EQ(f.metadata()[17].first, "nested");

  EXPECT_EQ(f.find("u8")->type, ValueType::UINT8);
  EXPECT_EQ(f.find("u8")->u, 200u);
  EXPECT_EQ(f.find("i8")->i, -5);
  EXPECT_EQ(f.find("u16")->u, 60000u);
  EXPECT_EQ(f.find("i16")->i, -30000);
  EXPECT_EQ(f.find("u32")->u, 4000000000u);
  EXPECT_EQ(f.find("i32")->i, -2000000000);
  EXPECT_EQ(f.find("f32")->f, 1.5);
  EXPECT_EQ(f.find("f32")->type, ValueType::FLOAT32);
  EXPECT_TRUE(f.find("bool")->b);
  EXPECT_FALSE(f.find("false")->b);
  EXPECT_EQ(f.find("str")->s, "h\xc3\xa9llo");
  EXPECT_EQ(f.find("u64")->u, (uint64_t(1) << 63) + 5);
  EXPECT_EQ(f.find("i64")->i, -(int64_t(1) << 62));
  EXPECT_EQ(f.find("f64")->f, 3.25);
  EXPECT_EQ(f.find("f64")->type, ValueType::FLOAT64);
  EXPECT_EQ(f.find("missing"), nullptr);

  const Value& arr = *f.find("arr_i32");
  EXPECT_EQ(arr.type, ValueType::ARRAY);
  // A flat array's elements stay in the file (no Value per element on the heap).
  EXPECT_TRUE(arr.array.empty());
  EXPECT_GE(arr.encoded, bytes.data());
  EXPECT_LT(arr.encoded, bytes.data() + bytes.size());
  EXPECT_EQ(arr.element_type, ValueType::INT32);
  ASSERT_EQ(arr.count, 3u);
  const std::vector<Value> ints = arr.elements();
  ASSERT_EQ(ints.size(), 3u);
  EXPECT_EQ(ints[0].i, -1);
  EXPECT_EQ(ints[2].i, 7);
  EXPECT_EQ(arr.elements(2).size(), 2u);  // the limit
  const std::vector<Value> strs = f.find("arr_str")->elements();
  ASSERT_EQ(strs.size(), 3u);
  EXPECT_EQ(strs[0].s, "x");
  EXPECT_EQ(strs[1].s, "");
  EXPECT_EQ(strs[2].s, "yz");
  EXPECT_EQ(f.find("empty")->element_type, ValueType::UINT64);
  EXPECT_EQ(f.find("empty")->count, 0u);
  EXPECT_TRUE(f.find("empty")->elements().empty());

  const Value& nested = *f.find("nested");
  EXPECT_EQ(nested.element_type, ValueType::ARRAY);
  ASSERT_EQ(nested.count, 3u);
  const std::vector<Value> inner = nested.elements();
  ASSERT_EQ(inner.size(), 3u);
  EXPECT_EQ(inner[0].element_type, ValueType::UINT8);
  ASSERT_EQ(inner[0].count, 2u);
  EXPECT_EQ(inner[0].elements()[1].u, 2u);
  EXPECT_EQ(inner[1].element_type, ValueType::STRING);
  EXPECT_TRUE(inner[1].elements().empty());
  ASSERT_EQ(inner[2].count, 1u);
  const std::vector<Value> deepest = inner[2].elements()[0].elements();
  ASSERT_EQ(deepest.size(), 1u);
  EXPECT_EQ(deepest[0].i, 9);
  EXPECT_EQ(to_string(nested), "[[1, 2], [], [[9]]]");

  // Typed getters.
  EXPECT_EQ(f.get_uint("u8"), 200u);
  EXPECT_EQ(f.get_uint("u64"), (uint64_t(1) << 63) + 5);
  EXPECT_EQ(f.get_int("i8"), -5);
  EXPECT_EQ(f.get_int("u32"), 4000000000);
  EXPECT_EQ(f.get_float("f32"), 1.5);
  EXPECT_EQ(f.get_float("i16"), -30000.0);
  EXPECT_EQ(f.get_float("u16"), 60000.0);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("str"), "h\xc3\xa9llo");
  EXPECT_EQ(f.get_string_array("arr_str"), (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(f.get_int_array("arr_i32"), (std::vector<int64_t>{-1, 0, 7}));
  EXPECT_EQ(f.get_float_array("arr_f32"), (std::vector<double>{0.5, -4.0}));
  EXPECT_EQ(f.get_float_array("arr_i32"), (std::vector<double>{-1, 0, 7}));
  EXPECT_TRUE(f.get_int_array("empty").empty());
}

INSTANTIATE_TEST_SUITE_P(V2AndV3, GgufVersion, ::testing::Values(2u, 3u));

TEST(Gguf, GetterConversionsAndErrors) {
  Writer w;
  w.kv("pos", t::kI32, [](Bytes& b) { b.i32(12); });
  w.kv("neg", t::kI32, [](Bytes& b) { b.i32(-3); });
  w.kv("big", t::kU64, [](Bytes& b) { b.u64(~uint64_t(0)); });
  w.kv("s", t::kStr, [](Bytes& b) { b.str("text"); });
  w.kv("u8", t::kU8, [](Bytes& b) { b.u8(1); });
  w.kv("f", t::kF32, [](Bytes& b) { b.f32(2.5f); });
  w.kv("big_arr", t::kArr, [](Bytes& b) { b.u32(t::kU64).u64(1).u64(~uint64_t(0)); });
  w.kv_str_array("strs", {"a"});
  const std::vector<uint8_t> bytes = w.build();  // alive while f is: values point into it
  const File f = parse(bytes);

  EXPECT_EQ(f.get_uint("pos"), 12u);  // a non-negative signed value is accepted
  EXPECT_EQ(f.get_int("pos"), 12);
  EXPECT_EQ(f.get_int("neg"), -3);
  EXPECT_EQ(f.get_uint_or("pos", 99), 12u);
  EXPECT_EQ(f.get_uint_or("absent", 99), 99u);
  EXPECT_EQ(f.get_float_or("absent", 0.25), 0.25);
  EXPECT_EQ(f.get_float_or("f", 0.25), 2.5);
  EXPECT_EQ(f.get_string_or("absent", "dflt"), "dflt");
  EXPECT_EQ(f.get_string_or("s", "dflt"), "text");
  EXPECT_TRUE(f.get_bool_or("absent", true));

  auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message([&] { f.get_uint("neg"); }),
            "test.gguf: metadata key 'neg' is -3, expected a non-negative integer");
  EXPECT_EQ(message([&] { f.get_uint("s"); }),
            "test.gguf: metadata key 's' has type STRING, expected an unsigned integer");
  EXPECT_EQ(message([&] { f.get_uint("missing"); }),
            "test.gguf: metadata key 'missing' is missing");
  EXPECT_EQ(message([&] { f.get_int("big"); }),
            "test.gguf: metadata key 'big' is 18446744073709551615, which does not fit in a "
            "signed 64-bit integer");
  EXPECT_EQ(message([&] { f.get_string("pos"); }),
            "test.gguf: metadata key 'pos' has type INT32, expected STRING");
  EXPECT_EQ(message([&] { f.get_bool("u8"); }),
            "test.gguf: metadata key 'u8' has type UINT8, expected BOOL");
  EXPECT_EQ(message([&] { f.get_float("s"); }),
            "test.gguf: metadata key 's' has type STRING, expected a number");
  EXPECT_EQ(message([&] { f.get_int("f"); }),
            "test.gguf: metadata key 'f' has type FLOAT32, expected an integer");
  EXPECT_EQ(message([&] { f.get_string_array("big_arr"); }),
            "test.gguf: metadata key 'big_arr' has type ARRAY of UINT64, expected an ARRAY of "
            "STRING");
  EXPECT_EQ(message([&] { f.get_int_array("strs"); }),
            "test.gguf: metadata key 'strs' has type ARRAY of STRING, expected an ARRAY of "
            "integers");
  EXPECT_EQ(message([&] { f.get_float_array("s"); }),
            "test.gguf: metadata key 's' has type STRING, expected an ARRAY of numbers");
  EXPECT_NE(message([&] { f.get_int_array("big_arr"); }).find("element 0"), std::string::npos);
  // A present key of the wrong type still throws when a fallback is given.
  EXPECT_EQ(message([&] { f.get_uint_or("s", 1); }),
            "test.gguf: metadata key 's' has type STRING, expected an unsigned integer");
  EXPECT_EQ(message([&] { f.get_bool_or("s", false); }),
            "test.gguf: metadata key 's' has type STRING, expected BOOL");
  EXPECT_EQ(message([&] { f.tensor("nope"); }), "test.gguf: tensor 'nope' is missing");
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
}

TEST(Gguf, TensorsOfSeveralTypes) {
  Writer w;
  // n_bytes worked out by hand from the block layouts: F32 4 B/elt, F16 2, Q4_0 18 B per 32,
  // Q4_1 20 per 32, Q8_0 34 per 32, Q6_K 210 per 256, BF16 2.
  w.tensor("f32", {4, 3}, 0, 48);
  w.tensor("f16", {8}, 1, 16);
  w.tensor("q4_0", {64, 2}, 2, 72);
  w.tensor("q4_1", {32}, 3, 20);
  w.tensor("q8_0", {32, 1, 1, 2}, 8, 68);
  w.tensor("q6_k", {256}, 14, 210);
  w.tensor("bf16", {2, 2, 2}, 30, 16);
  Writer::Layout layout;
  const std::vector<uint8_t> bytes = w.build(&layout);
  const File f = parse(bytes);
  ASSERT_EQ(f.tensors().size(), 7u);
  EXPECT_EQ(f.data_offset(), layout.data_start);
  EXPECT_EQ(f.data_offset() % 32, 0u);

  const struct {
    const char* name;
    TensorType type;
    uint64_t elements, bytes;
  } expect[] = {
      {"f32", TensorType::F32, 12, 48},    {"f16", TensorType::F16, 8, 16},
      {"q4_0", TensorType::Q4_0, 128, 72}, {"q4_1", TensorType::Q4_1, 32, 20},
      {"q8_0", TensorType::Q8_0, 64, 68},  {"q6_k", TensorType::Q6_K, 256, 210},
      {"bf16", TensorType::BF16, 8, 16},
  };
  for (std::size_t k = 0; k < 7; ++k) {
    const TensorInfo& ti = f.tensors()[k];
    SCOPED_TRACE(expect[k].name);
    EXPECT_EQ(ti.name, expect[k].name);
    EXPECT_EQ(ti.type, expect[k].type);
    EXPECT_EQ(ti.n_elements, expect[k].elements);
    EXPECT_EQ(ti.n_bytes, expect[k].bytes);
    EXPECT_EQ(ti.offset, layout.offsets[k]);
    EXPECT_EQ(ti.offset % 32, 0u);
    EXPECT_EQ(&f.tensor(expect[k].name), &ti);
    // The data pointer lands on the bytes the writer put there (pattern k*7 + index).
    ASSERT_EQ(ti.data, bytes.data() + layout.data_start + layout.offsets[k]);
    EXPECT_EQ(ti.data[1], uint8_t(7 + k));
  }
  EXPECT_EQ(f.tensor("q8_0").shape, (std::vector<uint64_t>{32, 1, 1, 2}));
}

TEST(Gguf, CustomAlignment) {
  for (uint32_t a : {1u, 8u, 64u, 4096u}) {
    Writer w(3, 32);
    w.alignment(a);
    w.tensor("a", {3}, 0, 12);
    w.tensor("b", {5}, 1, 10);
    Writer::Layout layout;
    const auto bytes = w.build(&layout);
    const File f = parse(bytes);
    SCOPED_TRACE(a);
    EXPECT_EQ(f.alignment(), a);
    EXPECT_EQ(f.data_offset(), layout.data_start);
    EXPECT_EQ(f.data_offset() % a, 0u);
    EXPECT_EQ(f.tensor("b").offset, a == 1 ? 12u : (12 + a - 1) / a * a);
  }
  // Alignment may be any integer type holding a positive power of two.
  Writer w16;
  w16.kv("general.alignment", t::kU16, [](Bytes& b) { b.u16(16); });
  EXPECT_EQ(parse(w16.build()).alignment(), 16u);
}

TEST(Gguf, BadAlignment) {
  for (uint32_t a : {0u, 48u, 3u}) {
    Writer w;
    w.kv_u32("general.alignment", a);
    EXPECT_ERROR_HAS(w.build(), "'general.alignment' is " + std::to_string(a) +
                                    ", expected a non-zero power of two");
  }
  Writer ws;
  ws.kv_str("general.alignment", "32");
  EXPECT_ERROR_HAS(ws.build(), "'general.alignment' has type STRING, expected an integer");
  Writer wn;
  wn.kv("general.alignment", t::kI32, [](Bytes& b) { b.i32(-32); });
  EXPECT_ERROR_HAS(wn.build(), "expected a non-zero power of two");
}

TEST(Gguf, EveryTruncationIsAnError) {
  const std::vector<uint8_t> full = small_writer().build();
  ASSERT_NO_THROW(parse(full));
  for (std::size_t n = 0; n < full.size(); ++n) {
    // A copy of exactly n bytes, so AddressSanitizer sees any read past the end.
    std::vector<uint8_t> prefix(full.begin(), full.begin() + std::ptrdiff_t(n));
    EXPECT_THROW(File::from_memory(n ? prefix.data() : nullptr, n, "cut.gguf"), Error)
        << "prefix of " << n << " bytes";
  }
  std::vector<uint8_t> cut(full.begin(), full.begin() + 30);
  EXPECT_ERROR_HAS(cut, "truncated");
}

TEST(Gguf, HeaderErrors) {
  std::vector<uint8_t> bytes = small_writer().build();
  auto bad = bytes;
  bad[0] = 'X';
  EXPECT_ERROR_HAS(bad, "not a GGUF file: magic is 58 47 55 46, expected 47 47 55 46");
  EXPECT_ERROR_HAS(std::vector<uint8_t>({'G', 'G'}), "not a GGUF file");

  bad = bytes;
  patch<uint32_t>(bad, 4, 1);
  EXPECT_ERROR_HAS(bad, "GGUF version 1 is obsolete and not supported");
  patch<uint32_t>(bad, 4, 99);
  EXPECT_ERROR_HAS(bad, "unsupported GGUF version 99 (squat reads versions 2 and 3)");
  patch<uint32_t>(bad, 4, 0x03000000);
  EXPECT_ERROR_HAS(bad, "big-endian");

  bad = bytes;
  patch<uint64_t>(bad, 16, uint64_t(1) << 40);  // metadata count
  EXPECT_ERROR_HAS(bad, "metadata count 1099511627776 cannot fit");
  bad = bytes;
  patch<uint64_t>(bad, 8, ~uint64_t(0));  // tensor count
  EXPECT_ERROR_HAS(bad, "tensor count 18446744073709551615 cannot fit");
  bad = bytes;
  patch<uint64_t>(bad, 8, 3);  // one tensor more than the table holds
  EXPECT_ERROR_HAS(bad, "tensor 2");
}

TEST(Gguf, MetadataErrors) {
  {  // key length past the end
    Writer w;
    w.kv_u32("k", 1);
    Writer::Layout l;
    auto bytes = w.build(&l);
    patch<uint64_t>(bytes, l.kv_start, 1000);
    EXPECT_ERROR_HAS(bytes, "metadata entry 0: key has length 1000 but only");
  }
  {  // string value length past the end
    Writer w;
    w.kv_str("name", "abc");
    Writer::Layout l;
    auto bytes = w.build(&l);
    patch<uint64_t>(bytes, l.kv_start + 8 + 4 + 4, ~uint64_t(0) - 3);
    EXPECT_ERROR_HAS(bytes, "metadata key 'name': STRING value has length 18446744073709551612");
  }
  {  // huge array counts, flat and nested, of fixed-size and string elements
    for (uint32_t et : {t::kU8, t::kU64, t::kStr, t::kArr}) {
      Writer w;
      w.kv("arr", t::kArr, [&](Bytes& b) { b.u32(et).u64(uint64_t(1) << 61); });
      EXPECT_ERROR_HAS(w.build(), "metadata key 'arr': array count 2305843009213693952");
    }
    Writer w;
    w.kv("arr", t::kArr, [](Bytes& b) { b.u32(t::kArr).u64(1).u32(t::kU32).u64(1000000); });
    EXPECT_ERROR_HAS(w.build(), "array count 1000000 of UINT32 needs at least 4 bytes each");
  }
  {
    Writer w;
    w.kv("x", 13, [](Bytes& b) { b.u32(0); });
    EXPECT_ERROR_HAS(w.build(), "metadata key 'x': unknown value type 13");
    Writer w2;
    w2.kv("x", t::kArr, [](Bytes& b) { b.u32(77).u64(0); });
    EXPECT_ERROR_HAS(w2.build(), "metadata key 'x': array has unknown element type 77");
  }
  {
    Writer w;
    w.kv("flag", t::kBool, [](Bytes& b) { b.u8(2); });
    EXPECT_ERROR_HAS(w.build(), "metadata key 'flag': BOOL value is 2, expected 0 or 1");
  }
  {  // flat arrays stay in the file, so their elements are validated when it is parsed
    Writer w;
    w.kv("flags", t::kArr, [](Bytes& b) { b.u32(t::kBool).u64(3).u8(1).u8(0).u8(7); });
    EXPECT_ERROR_HAS(w.build(), "metadata key 'flags': BOOL element is 7, expected 0 or 1");
    Writer w2;  // the second string's length runs past the end of the file
    w2.kv("words", t::kArr,
          [](Bytes& b) { b.u32(t::kStr).u64(2).u64(1).u8('a').u64(uint64_t(1) << 40); });
    EXPECT_ERROR_HAS(w2.build(), "metadata key 'words': STRING element has length 1099511627776");
  }
  {  // arrays nested too deep
    Writer w;
    w.kv("deep", t::kArr, [](Bytes& b) {
      for (int d = 0; d < 40; ++d) b.u32(t::kArr).u64(1);
      b.u32(t::kU8).u64(0);
    });
    EXPECT_ERROR_HAS(w.build(), "arrays are nested more than 16 deep");
  }
  {
    Writer w;
    w.kv_u32("dup", 1).kv_u32("other", 2).kv_u32("dup", 3);
    EXPECT_ERROR_HAS(w.build(), "metadata key 'dup': appears twice (entries 0 and 2)");
  }
  {  // binary garbage in a key is escaped in the message
    Writer w;
    w.kv("a\x01\xff", 13, [](Bytes& b) { b.u32(0); });
    EXPECT_ERROR_HAS(w.build(), "metadata key 'a\\x01\\xff': unknown value type 13");
  }
}

// Builds the small file, lets `edit` patch the second tensor's entry, returns the bytes.
std::vector<uint8_t> with_tensor_patch(
    const std::function<void(std::vector<uint8_t>&, const Writer::Layout&)>& edit) {
  Writer::Layout l;
  auto bytes = small_writer().build(&l);
  edit(bytes, l);
  return bytes;
}

TEST(Gguf, TensorErrors) {
  const std::string q = "tensor 'output_norm.weight': ";
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint32_t>(b, l.type_field[1], 10); }),
      q + "has type Q2_K, which squat does not support (supported: F32, F16, Q4_0, "
          "Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16)");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint32_t>(b, l.type_field[1], 42); }),
      q + "has unknown type number 42 (supported: F32");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint32_t>(b, l.dims_field[1], 5); }),
      q + "has 5 dimensions, expected 1 to 4");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint32_t>(b, l.dims_field[1], 0); }),
      q + "has 0 dimensions");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint64_t>(b, l.dims_field[1] + 4, 0); }),
      q + "dimension 0 is 0");
  // Absurd but representable: 2^40 floats are 4 TiB, far past the end of the file.
  EXPECT_ERROR_HAS(with_tensor_patch([](auto& b, auto& l) {
                     patch<uint64_t>(b, l.dims_field[1] + 4, uint64_t(1) << 40);
                   }),
                   q + "data offset 64 + size 4398046511104 runs past the end of the file");
  // Overflow of the product: tok_embd has dims [32, 2]; make them [2^33, 2^33].
  EXPECT_ERROR_HAS(with_tensor_patch([](auto& b, auto& l) {
                     patch<uint64_t>(b, l.dims_field[0] + 4, uint64_t(1) << 35);
                     patch<uint64_t>(b, l.dims_field[0] + 12, uint64_t(1) << 33);
                   }),
                   "tensor 'tok_embd.weight': dimensions overflow");
  // Overflow of the byte size though the element count fits: 2^63 F32 elements.
  EXPECT_ERROR_HAS(with_tensor_patch([](auto& b, auto& l) {
                     patch<uint64_t>(b, l.dims_field[1] + 4, uint64_t(1) << 62);
                   }),
                   q + "size in bytes does not fit in 64 bits");
  EXPECT_ERROR_HAS(with_tensor_patch([](auto& b, auto& l) {
                     patch<uint64_t>(b, l.dims_field[0] + 4, ~uint64_t(0));
                   }),
                   "tensor 'tok_embd.weight': dimensions overflow");
  // Q4_0 rows must hold whole 32-element blocks.
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint64_t>(b, l.dims_field[0] + 4, 48); }),
      "tensor 'tok_embd.weight': first dimension 48 is not a multiple of the Q4_0 "
      "block size 32");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint64_t>(b, l.offset_field[1], 8); }),
      q + "data offset 8 is not a multiple of the alignment 32");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint64_t>(b, l.offset_field[1], 1024); }),
      q + "data offset 1024 + size 12 runs past the end of the file");
  EXPECT_ERROR_HAS(with_tensor_patch([](auto& b, auto& l) {
                     patch<uint64_t>(b, l.offset_field[1], ~uint64_t(31));
                   }),
                   q + "data offset 18446744073709551584 + size 12 runs past the end of the file");
  Writer dup;
  dup.tensor("same", {1}, 0, 4).tensor("other", {1}, 0, 4).tensor("same", {1}, 0, 4);
  EXPECT_ERROR_HAS(dup.build(),
                   "tensor 'same': appears twice in the tensor table (entries 0 and 2)");
  EXPECT_ERROR_HAS(
      with_tensor_patch([](auto& b, auto& l) { patch<uint64_t>(b, l.table_start, 5000); }),
      "tensor 0: name has length 5000");
}

TEST(Gguf, DataSectionPastEnd) {
  // A huge alignment pushes the data section past the end of a small file.
  Writer w(3, 32);
  w.kv_u32("general.alignment", uint32_t(1) << 20);
  w.tensor("x", {1}, 0, 4);
  auto bytes = w.build();
  EXPECT_ERROR_HAS(bytes, "the data section (tensor table ends at byte");
  // Without tensors a file may end right after the metadata.
  Writer empty;
  empty.kv_str("general.architecture", "llama");
  const File f = parse(empty.build());
  EXPECT_TRUE(f.tensors().empty());
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/squat_gguf_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name, const std::vector<uint8_t>& bytes) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(Gguf, OpenMapsAFile) {
  TempDir dir;
  const std::string path = dir.file("m.gguf", small_writer().build());
  File f = File::open(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "bc", ""}));
  const TensorInfo& norm = f.tensor("output_norm.weight");
  EXPECT_EQ(norm.data[0], uint8_t(1));  // writer pattern: byte k is k*7 + tensor index
  EXPECT_EQ(norm.data[2], uint8_t(15));
  // Moving keeps the mapping and the data pointers valid.
  File moved = std::move(f);
  EXPECT_EQ(moved.tensor("output_norm.weight").data[2], uint8_t(15));
}

// Released pages are only dropped from memory: read again, the bytes are the file's. A tensor
// larger than several pages, so whole pages are released, and a range that is not inside the
// mapping is ignored.
TEST(Gguf, ReleasedPagesReadTheSameBytes) {
  Writer w;
  w.kv_str("general.architecture", "llama");
  w.tensor("big", {1 << 16}, 0, uint64_t(1) << 18);  // F32: 256 KiB of data
  TempDir dir;
  const std::string path = dir.file("big.gguf", w.build());
  const File f = File::open(path);
  const TensorInfo& t = f.tensor("big");
  const std::vector<uint8_t> before(t.data, t.data + t.n_bytes);
  f.release_pages(t.data, std::size_t(t.n_bytes));
  const uint8_t outside[16] = {};
  f.release_pages(outside, sizeof outside);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), t.data));
  EXPECT_EQ(t.data[5], uint8_t(5 * 7));
  const std::vector<uint8_t> bytes = w.build();
  const File memory = parse(bytes);  // not mapped: nothing to release
  memory.release_pages(memory.tensor("big").data, 1 << 18);
  EXPECT_EQ(memory.tensor("big").data[5], uint8_t(5 * 7));  // the writer's byte pattern
}

TEST(Gguf, OpenErrors) {
  auto message = [](const std::string& path) -> std::string {
    try {
      File::open(path);
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_status(), 1);
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message("/nonexistent/x.gguf"),
            "cannot open model file '/nonexistent/x.gguf': No such file or directory");
  TempDir dir;
  EXPECT_EQ(message(dir.path()), "cannot open model file '" + dir.path() + "': not a regular file");
  const std::string empty = dir.file("empty.gguf", {});
  EXPECT_EQ(message(empty), empty + ": the file is empty, expected a GGUF model");
  auto cut = small_writer().build();
  cut.resize(cut.size() - 1);
  const std::string cut_path = dir.file("cut.gguf", cut);
  EXPECT_EQ(message(cut_path).rfind(cut_path + ": tensor 'output_norm.weight': data offset", 0),
            0u);
}

TEST(Gguf, SeedFixtures) {
  // The fuzzer's seed files (written by gguf_make_seeds): valid_* parse, invalid_* fail cleanly.
  const std::filesystem::path dir = std::filesystem::path(SQUAT_SOURCE_DIR) / "tests/fixtures/gguf";
  int valid = 0, invalid = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    SCOPED_TRACE(name);
    if (name.rfind("valid_", 0) == 0 || name.rfind("invalid_", 0) == 0) {
      EXPECT_LT(entry.file_size(), 4096u);
    }
    if (name.rfind("valid_", 0) == 0) {
      EXPECT_NO_THROW(File::open(entry.path().string()));
      ++valid;
    } else if (name.rfind("invalid_", 0) == 0) {
      EXPECT_THROW(File::open(entry.path().string()), Error);
      ++invalid;
    }
  }
  EXPECT_GE(valid, 3);
  EXPECT_GE(invalid, 3);
}

}  // namespace
}  // namespace squat::gguf
