// GGUF v2/v3 reader over a read-only memory map. Every count, length, offset and size is
// validated against the file before it is used; any problem is a squat::Error naming the file
// and the field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf/types.h"

namespace squat::gguf {

enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

const char* value_type_name(ValueType type);

// One metadata value. Integers keep their exact value in `u` (unsigned) or `i` (signed),
// floats in `f`. An ARRAY has `count` elements of `element_type`: arrays of arrays hold them in
// `array`; arrays of numbers, booleans or strings leave them where they are in the file
// (`encoded`, GGUF's own encoding, validated when the file was parsed) and decode them when read,
// so a 150K-token vocabulary costs no heap (one Value per element cost ~100 bytes each: 15 MiB
// for SmolLM2's vocabulary, ~45 MiB for Qwen2's, held for the whole run).
struct Value {
  ValueType type = ValueType::UINT8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  ValueType element_type = ValueType::UINT8;  // ARRAY: the elements' type
  uint64_t count = 0;                         // ARRAY: number of elements
  const uint8_t* encoded = nullptr;           // ARRAY of non-arrays: the elements in the file
  std::vector<Value> array;                   // ARRAY of ARRAY: the elements

  // An ARRAY's elements, decoded (at most `limit` of them). Valid while the File lives.
  std::vector<Value> elements(std::size_t limit = SIZE_MAX) const;
};

// A value as short readable text (strings quoted and escaped, arrays cut after max_elements).
std::string to_string(const Value& value, std::size_t max_elements = 8);

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> shape;  // GGUF order: shape[0] is the contiguous (fastest) dimension
  TensorType type = TensorType::F32;
  uint64_t offset = 0;  // relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapping, valid while the File lives
};

class File {
 public:
  // Maps and validates a file. Throws squat::Error (runtime) on any problem.
  static File open(const std::string& path);
  // Parses a buffer that the caller keeps alive (tests and the fuzzer). `name` is used in errors.
  static File from_memory(const uint8_t* data, std::size_t size, const std::string& name);

  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  const std::string& path() const;
  uint32_t version() const;
  std::size_t alignment() const;
  std::size_t data_offset() const;  // where the data section starts in the file
  std::size_t size() const;         // file size in bytes

  const std::vector<std::pair<std::string, Value>>& metadata() const;
  const Value* find(const std::string& key) const;  // nullptr when absent

  // Typed getters: throw naming the file and key when absent or of an incompatible type.
  // Integer getters accept any integer type whose value fits.
  std::string get_string(const std::string& key) const;
  uint64_t get_uint(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // any float or integer type
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  // Same, with a default when the key is absent (a present key of the wrong type still throws).
  uint64_t get_uint_or(const std::string& key, uint64_t fallback) const;
  double get_float_or(const std::string& key, double fallback) const;
  std::string get_string_or(const std::string& key, const std::string& fallback) const;
  bool get_bool_or(const std::string& key, bool fallback) const;

  // Drops the resident pages of bytes [data, data + bytes) of a mapped file from this process's
  // memory (whole pages inside the range; the file's contents do not change, a later read maps
  // them again). For data read once at load and then rarely, like a token-embedding table that
  // decoding reads one row at a time. No effect on a File made from_memory.
  void release_pages(const uint8_t* data, std::size_t bytes) const;

  const std::vector<TensorInfo>& tensors() const;
  const TensorInfo* find_tensor(const std::string& name) const;  // nullptr when absent
  const TensorInfo& tensor(const std::string& name) const;       // throws when absent

 private:
  struct Impl;
  explicit File(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace squat::gguf
