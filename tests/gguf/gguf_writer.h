// A small GGUF writer for tests: builds synthetic files in memory, byte by byte, following the
// format (little-endian; header, metadata, tensor table, padding, data). It also records where
// fields landed so tests can corrupt exactly one of them.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace squat::gguf::testing {

// Little-endian byte sink.
struct Bytes {
  std::vector<uint8_t> b;

  template <typename T>
  Bytes& put(T v) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));
    b.insert(b.end(), raw, raw + sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& i8(int8_t v) { return put(v); }
  Bytes& u16(uint16_t v) { return put(v); }
  Bytes& i16(int16_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& i32(int32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& i64(int64_t v) { return put(v); }
  Bytes& f32(float v) { return put(v); }
  Bytes& f64(double v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& raw(const std::vector<uint8_t>& v) {
    b.insert(b.end(), v.begin(), v.end());
    return *this;
  }
  std::size_t size() const { return b.size(); }
};

// GGUF value type numbers (written out here, not taken from the reader, so the tests check them).
enum : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kStr = 8,
  kArr = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

class Writer {
 public:
  explicit Writer(uint32_t version = 3, uint64_t alignment = 32)
      : version_(version), alignment_(alignment) {}

  // One metadata pair; `value` writes the value bytes (after the type).
  Writer& kv(const std::string& key, uint32_t type, const std::function<void(Bytes&)>& value) {
    kvs_.str(key).u32(type);
    value(kvs_);
    ++n_kv_;
    return *this;
  }
  Writer& kv_u32(const std::string& key, uint32_t v) {
    return kv(key, kU32, [&](Bytes& b) { b.u32(v); });
  }
  Writer& kv_str(const std::string& key, const std::string& v) {
    return kv(key, kStr, [&](Bytes& b) { b.str(v); });
  }
  Writer& kv_str_array(const std::string& key, const std::vector<std::string>& v) {
    return kv(key, kArr, [&](Bytes& b) {
      b.u32(kStr).u64(v.size());
      for (const auto& s : v) b.str(s);
    });
  }
  // Writes general.alignment and uses it for the layout.
  Writer& alignment(uint32_t a) {
    alignment_ = a;
    return kv_u32("general.alignment", a);
  }

  // A tensor whose data is `data` (or a byte pattern of the right size when empty).
  Writer& tensor(const std::string& name, const std::vector<uint64_t>& dims, uint32_t type,
                 uint64_t n_bytes, std::vector<uint8_t> data = {}) {
    if (data.empty()) {
      data.resize(n_bytes);
      for (std::size_t k = 0; k < data.size(); ++k) data[k] = uint8_t(k * 7 + tensors_.size());
    }
    tensors_.push_back({name, dims, type, std::move(data)});
    return *this;
  }

  struct Layout {
    std::size_t kv_start = 0;               // first metadata pair
    std::size_t table_start = 0;            // first tensor entry
    std::vector<std::size_t> offset_field;  // per tensor: where its u64 offset is
    std::vector<std::size_t> type_field;    // per tensor: where its u32 type is
    std::vector<std::size_t> dims_field;    // per tensor: where its n_dims is
    std::vector<uint64_t> offsets;          // per tensor: offset relative to the data section
    std::size_t data_start = 0;
  };

  std::vector<uint8_t> build(Layout* layout = nullptr) const {
    Layout l;
    Bytes out;
    out.u8('G').u8('G').u8('U').u8('F').u32(version_).u64(tensors_.size()).u64(n_kv_);
    l.kv_start = out.size();
    out.raw(kvs_.b);
    l.table_start = out.size();
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      out.str(t.name);
      l.dims_field.push_back(out.size());
      out.u32(uint32_t(t.dims.size()));
      for (uint64_t d : t.dims) out.u64(d);
      l.type_field.push_back(out.size());
      out.u32(t.type);
      l.offset_field.push_back(out.size());
      out.u64(offset);
      l.offsets.push_back(offset);
      offset = round_up(offset + t.data.size());
    }
    if (!tensors_.empty()) {
      out.b.resize(round_up(out.size()), 0);
      l.data_start = out.size();
      for (std::size_t k = 0; k < tensors_.size(); ++k) {
        out.b.resize(l.data_start + l.offsets[k], 0);
        out.raw(tensors_[k].data);
      }
    } else {
      l.data_start = out.size();
    }
    if (layout) *layout = l;
    return out.b;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> data;
  };
  uint64_t round_up(uint64_t x) const { return (x + alignment_ - 1) / alignment_ * alignment_; }

  uint32_t version_;
  uint64_t alignment_;
  Bytes kvs_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

// Overwrites sizeof(T) bytes at `pos` with `v` (little-endian).
template <typename T>
void patch(std::vector<uint8_t>& file, std::size_t pos, T v) {
  std::memcpy(file.data() + pos, &v, sizeof(T));
}

}  // namespace squat::gguf::testing
