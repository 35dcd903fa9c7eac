#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>
#include <unordered_map>

#include "core/error.h"

namespace squat::gguf {

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 16;
// Each Value held in memory (scalars, and arrays of arrays; not the elements of flat arrays,
// which stay in the file) costs ~100 bytes, so a hostile file could ask for far more memory than
// it holds. Real models need a few hundred; 8M caps the cost.
constexpr uint64_t kMaxValues = uint64_t(1) << 23;

// Text from the file for an error message: non-printable bytes escaped, long text cut.
std::string printable(std::string_view text) {
  std::string out;
  const std::size_t limit = 96;
  for (std::size_t i = 0; i < text.size() && i < limit; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (text.size() > limit) out += fmt::format("...({} bytes)", text.size());
  return out;
}

std::size_t min_value_bytes(ValueType type) {
  switch (type) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
    case ValueType::STRING:
      return 8;  // a string is at least its u64 length
    case ValueType::ARRAY:
      return 4 + 8;  // element type + count
  }
  return 1;
}

bool known_value_type(uint32_t t) { return t <= uint32_t(ValueType::FLOAT64); }

bool is_unsigned(ValueType t) {
  return t == ValueType::UINT8 || t == ValueType::UINT16 || t == ValueType::UINT32 ||
         t == ValueType::UINT64;
}
bool is_signed(ValueType t) {
  return t == ValueType::INT8 || t == ValueType::INT16 || t == ValueType::INT32 ||
         t == ValueType::INT64;
}
bool is_float(ValueType t) { return t == ValueType::FLOAT32 || t == ValueType::FLOAT64; }

std::string supported_types() {
  std::string list;
  for (uint32_t t = 0; t < 64; ++t) {
    const TypeTraits* tr = type_traits(t);
    if (tr && tr->supported) list += (list.empty() ? "" : ", ") + std::string(tr->name);
  }
  return list;
}

// Bounds-checked little-endian cursor over the file. `where` names the part being read; it goes
// into every error together with what was being read.
class Reader {
 public:
  Reader(const uint8_t* data, std::size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return size_ - pos_; }
  void set_where(std::string where) { where_ = std::move(where); }
  const std::string& where() const { return where_; }

  template <typename... Args>
  [[noreturn]] void error(fmt::format_string<Args...> format, Args&&... args) const {
    const std::string what = fmt::format(format, std::forward<Args>(args)...);
    if (where_.empty()) fail("{}: {}", path_, what);
    fail("{}: {}: {}", path_, where_, what);
  }

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));  // x86/ARM hosts are little-endian like GGUF
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const char* what) { return std::string(read_string_view(what)); }

  // The string's bytes inside the file (valid while it is mapped).
  std::string_view read_string_view(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    if (len > remaining()) {
      error("{} has length {} but only {} bytes remain in the file (size {})", what, len,
            remaining(), size_);
    }
    const std::string_view s(reinterpret_cast<const char*>(data_ + pos_), std::size_t(len));
    pos_ += std::size_t(len);
    return s;
  }

  const uint8_t* here() const { return data_ + pos_; }
  void skip(std::size_t n, const char* what) {
    need(n, what);
    pos_ += n;
  }

 private:
  void need(std::size_t n, const char* what) const {
    if (n > remaining()) {
      error("file ends at byte {} while reading {} ({} bytes at offset {}); the file is truncated",
            size_, what, n, pos_);
    }
  }

  const uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  const std::string& path_;
  std::string where_;
};

}  // namespace

const char* value_type_name(ValueType type) {
  switch (type) {
    case ValueType::UINT8:
      return "UINT8";
    case ValueType::INT8:
      return "INT8";
    case ValueType::UINT16:
      return "UINT16";
    case ValueType::INT16:
      return "INT16";
    case ValueType::UINT32:
      return "UINT32";
    case ValueType::INT32:
      return "INT32";
    case ValueType::FLOAT32:
      return "FLOAT32";
    case ValueType::BOOL:
      return "BOOL";
    case ValueType::STRING:
      return "STRING";
    case ValueType::ARRAY:
      return "ARRAY";
    case ValueType::UINT64:
      return "UINT64";
    case ValueType::INT64:
      return "INT64";
    case ValueType::FLOAT64:
      return "FLOAT64";
  }
  return "UNKNOWN";
}

namespace {
// Checks that a scalar or string of `type` (not ARRAY) starts at the reader's position (the
// file holds its bytes, a BOOL is 0 or 1) and moves past it; `what` ("INT32 value", "STRING
// element") names it in errors. decode_element then reads it without checks.
void check_scalar(Reader& r, ValueType type, const std::string& what) {
  if (type == ValueType::STRING) {
    r.read_string_view(what.c_str());
  } else if (type == ValueType::BOOL) {
    const uint8_t b = r.read<uint8_t>(what.c_str());
    if (b > 1) r.error("{} is {}, expected 0 or 1", what, b);
  } else {
    r.skip(min_value_bytes(type), what.c_str());  // the exact size of a number
  }
}

// Decodes one scalar or string (type is not ARRAY) at `p`, which check_scalar validated, and
// moves `p` past it.
Value decode_element(ValueType type, const uint8_t*& p) {
  const auto load = [&p]<typename T>(T value) {
    std::memcpy(&value, p, sizeof(T));  // little-endian host, as in Reader::read
    p += sizeof(T);
    return value;
  };
  Value v;
  v.type = type;
  switch (type) {
    case ValueType::UINT8:
      v.u = load(uint8_t{});
      break;
    case ValueType::INT8:
      v.i = load(int8_t{});
      break;
    case ValueType::UINT16:
      v.u = load(uint16_t{});
      break;
    case ValueType::INT16:
      v.i = load(int16_t{});
      break;
    case ValueType::UINT32:
      v.u = load(uint32_t{});
      break;
    case ValueType::INT32:
      v.i = load(int32_t{});
      break;
    case ValueType::UINT64:
      v.u = load(uint64_t{});
      break;
    case ValueType::INT64:
      v.i = load(int64_t{});
      break;
    case ValueType::FLOAT32:
      v.f = load(float{});
      break;
    case ValueType::FLOAT64:
      v.f = load(double{});
      break;
    case ValueType::BOOL:
      v.b = load(uint8_t{}) != 0;
      break;
    case ValueType::STRING: {
      const uint64_t len = load(uint64_t{});
      v.s.assign(reinterpret_cast<const char*>(p), std::size_t(len));
      p += len;
      break;
    }
    case ValueType::ARRAY:
      break;  // never encoded flat
  }
  return v;
}
}  // namespace

std::vector<Value> Value::elements(std::size_t limit) const {
  if (element_type == ValueType::ARRAY) {
    const std::size_t n = std::min(limit, array.size());
    return std::vector<Value>(array.begin(), array.begin() + std::ptrdiff_t(n));
  }
  std::vector<Value> out;
  const std::size_t n = std::size_t(std::min<uint64_t>(limit, count));
  out.reserve(n);
  const uint8_t* p = encoded;
  for (std::size_t k = 0; k < n; ++k) out.push_back(decode_element(element_type, p));
  return out;
}

std::string to_string(const Value& v, std::size_t max_elements) {
  switch (v.type) {
    case ValueType::UINT8:
    case ValueType::UINT16:
    case ValueType::UINT32:
    case ValueType::UINT64:
      return std::to_string(v.u);
    case ValueType::INT8:
    case ValueType::INT16:
    case ValueType::INT32:
    case ValueType::INT64:
      return std::to_string(v.i);
    case ValueType::FLOAT32:
    case ValueType::FLOAT64:
      return fmt::format("{}", v.f);
    case ValueType::BOOL:
      return v.b ? "true" : "false";
    case ValueType::STRING:
      return fmt::format("\"{}\"", printable(v.s));
    case ValueType::ARRAY: {
      std::string out = "[";
      const std::vector<Value> shown = v.elements(max_elements);
      for (std::size_t k = 0; k < shown.size(); ++k) {
        if (k) out += ", ";
        out += to_string(shown[k], max_elements);
      }
      if (v.count > max_elements) {
        out += fmt::format(", ... ({} {} in all)", v.count, value_type_name(v.element_type));
      }
      return out + "]";
    }
  }
  return "?";
}

struct File::Impl {
  std::string path;
  void* map = nullptr;  // owned mapping (open), or null (from_memory)
  std::size_t map_size = 0;
  const uint8_t* data = nullptr;
  std::size_t size = 0;
  uint32_t version = 0;
  std::size_t alignment = 32;
  std::size_t data_offset = 0;
  std::vector<std::pair<std::string, Value>> metadata;
  std::unordered_map<std::string, std::size_t> key_index;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, std::size_t> tensor_index;
  uint64_t n_values = 0;

  ~Impl() {
    if (map) munmap(map, map_size);
  }

  void parse();
  Value parse_value(Reader& r, ValueType type, int depth);
  void parse_alignment();
  void parse_tensor(Reader& r, uint64_t index);
  void place_tensors();

  const Value& get(const std::string& key) const {
    const auto it = key_index.find(key);
    if (it == key_index.end()) fail("{}: metadata key '{}' is missing", path, key);
    return metadata[it->second].second;
  }
  [[noreturn]] void wrong_type(const std::string& key, const Value& v, const char* expected) const {
    std::string got = value_type_name(v.type);
    if (v.type == ValueType::ARRAY) got += fmt::format(" of {}", value_type_name(v.element_type));
    fail("{}: metadata key '{}' has type {}, expected {}", path, key, got, expected);
  }
};

Value File::Impl::parse_value(Reader& r, ValueType type, int depth) {
  if (++n_values > kMaxValues) {
    r.error("metadata holds more than {} values; this is not a model file squat can read",
            kMaxValues);
  }
  if (type != ValueType::ARRAY) {
    const uint8_t* at = r.here();
    check_scalar(r, type, fmt::format("{} value", value_type_name(type)));
    return decode_element(type, at);
  }
  if (depth >= kMaxArrayDepth) r.error("arrays are nested more than {} deep", kMaxArrayDepth);
  Value v;
  v.type = type;
  const uint32_t et = r.read<uint32_t>("array element type");
  if (!known_value_type(et)) r.error("array has unknown element type {}", et);
  v.element_type = ValueType(et);
  const uint64_t count = r.read<uint64_t>("array count");
  // Each element takes at least min_value_bytes, so a larger count cannot fit in the file.
  const std::size_t min_bytes = min_value_bytes(v.element_type);
  if (count > r.remaining() / min_bytes) {
    r.error("array count {} of {} needs at least {} bytes each but only {} bytes remain", count,
            value_type_name(v.element_type), min_bytes, r.remaining());
  }
  v.count = count;
  if (v.element_type == ValueType::ARRAY) {
    v.array.reserve(std::size_t(count));
    for (uint64_t k = 0; k < count; ++k)
      v.array.push_back(parse_value(r, v.element_type, depth + 1));
    return v;
  }
  // Flat: validated here, left in the file, decoded by Value::elements and the getters.
  v.encoded = r.here();
  const std::string what = fmt::format("{} element", value_type_name(v.element_type));
  for (uint64_t k = 0; k < count; ++k) check_scalar(r, v.element_type, what);
  return v;
}

void File::Impl::parse() {
  Reader r(data, size, path);
  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) {
    if (size < 4) fail("{}: not a GGUF file: only {} bytes long", path, size);
    fail(
        "{}: not a GGUF file: magic is {:02x} {:02x} {:02x} {:02x}, expected 47 47 55 46 "
        "(\"GGUF\")",
        path, data[0], data[1], data[2], data[3]);
  }
  r.read<uint32_t>("magic");
  version = r.read<uint32_t>("version");
  if (version == 1) {
    fail(
        "{}: GGUF version 1 is obsolete and not supported (squat reads versions 2 and 3); "
        "convert the model again with a current llama.cpp",
        path);
  }
  if (version != 2 && version != 3) {
    if (version == 0x02000000u || version == 0x03000000u) {
      fail("{}: this is a big-endian GGUF file, which squat does not support", path);
    }
    fail("{}: unsupported GGUF version {} (squat reads versions 2 and 3)", path, version);
  }
  const uint64_t tensor_count = r.read<uint64_t>("tensor count");
  const uint64_t kv_count = r.read<uint64_t>("metadata count");
  // Smallest entry: key length (8) + value type (4) + a 1-byte value.
  if (kv_count > r.remaining() / 13) {
    fail(
        "{}: metadata count {} cannot fit in the {} bytes that remain; the file is truncated or "
        "corrupt",
        path, kv_count, r.remaining());
  }
  // Smallest tensor entry: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
  if (tensor_count > r.remaining() / 32) {
    fail(
        "{}: tensor count {} cannot fit in the {} bytes that remain; the file is truncated or "
        "corrupt",
        path, tensor_count, r.remaining());
  }

  metadata.reserve(std::size_t(kv_count));
  for (uint64_t k = 0; k < kv_count; ++k) {
    r.set_where(fmt::format("metadata entry {}", k));
    std::string key = r.read_string("key");
    r.set_where(fmt::format("metadata key '{}'", printable(key)));
    const uint32_t type = r.read<uint32_t>("value type");
    if (!known_value_type(type)) r.error("unknown value type {}", type);
    Value value = parse_value(r, ValueType(type), 0);
    const auto [it, inserted] = key_index.emplace(key, metadata.size());
    if (!inserted) r.error("appears twice (entries {} and {})", it->second, k);
    metadata.emplace_back(std::move(key), std::move(value));
  }
  r.set_where("");
  parse_alignment();

  tensors.reserve(std::size_t(tensor_count));
  for (uint64_t t = 0; t < tensor_count; ++t) parse_tensor(r, t);
  r.set_where("");

  // The data section starts at the next multiple of the alignment after the tensor table.
  const std::size_t end = r.pos();
  const std::size_t padded = (end / alignment) * alignment + (end % alignment ? alignment : 0);
  const bool padded_overflow = padded < end;
  if (!tensors.empty() && (padded_overflow || padded > size)) {
    fail(
        "{}: the data section (tensor table ends at byte {}, aligned to {}) starts past the end "
        "of the file (size {})",
        path, end, alignment, size);
  }
  data_offset = padded_overflow ? size : std::min(padded, size);
  place_tensors();
}

void File::Impl::parse_alignment() {
  const auto it = key_index.find("general.alignment");
  if (it == key_index.end()) return;
  const Value& v = metadata[it->second].second;
  uint64_t a = 0;
  if (is_unsigned(v.type)) {
    a = v.u;
  } else if (is_signed(v.type) && v.i > 0) {
    a = uint64_t(v.i);
  } else if (!is_signed(v.type)) {
    wrong_type("general.alignment", v, "an integer");
  }
  if (a == 0 || (a & (a - 1)) != 0) {
    fail("{}: metadata key 'general.alignment' is {}, expected a non-zero power of two", path,
         to_string(v, 4));
  }
  if (a > (uint64_t(1) << 30)) {
    fail("{}: metadata key 'general.alignment' is {}, larger than the 1 GiB squat accepts", path,
         a);
  }
  alignment = std::size_t(a);
}

void File::Impl::parse_tensor(Reader& r, uint64_t index) {
  r.set_where(fmt::format("tensor {}", index));
  TensorInfo info;
  info.name = r.read_string("name");
  if (!info.name.empty()) r.set_where(fmt::format("tensor '{}'", printable(info.name)));
  const uint32_t n_dims = r.read<uint32_t>("number of dimensions");
  if (n_dims == 0 || n_dims > kMaxDims) {
    r.error("has {} dimensions, expected 1 to {}", n_dims, kMaxDims);
  }
  uint64_t n = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t dim = r.read<uint64_t>("dimension");
    if (dim == 0) r.error("dimension {} is 0", d);
    if (dim > uint64_t(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(n, dim, &n)) {
      r.error("dimensions overflow: the element count does not fit in 64 bits (dimension {} is {})",
              d, dim);
    }
    info.shape.push_back(dim);
  }
  info.n_elements = n;
  const uint32_t type = r.read<uint32_t>("type");
  const TypeTraits* tr = type_traits(type);
  if (!tr) r.error("has unknown type number {} (supported: {})", type, supported_types());
  if (!tr->supported) {
    r.error("has type {}, which squat does not support (supported: {})", tr->name,
            supported_types());
  }
  info.type = TensorType(type);
  if (info.shape[0] % tr->block_size != 0) {
    r.error("first dimension {} is not a multiple of the {} block size {}", info.shape[0], tr->name,
            tr->block_size);
  }
  if (__builtin_mul_overflow(n / tr->block_size, uint64_t(tr->block_bytes), &info.n_bytes)) {
    r.error("size in bytes does not fit in 64 bits");
  }
  info.offset = r.read<uint64_t>("data offset");
  const auto [it, inserted] = tensor_index.emplace(info.name, tensors.size());
  if (!inserted)
    r.error("appears twice in the tensor table (entries {} and {})", it->second, index);
  tensors.push_back(std::move(info));
}

void File::Impl::place_tensors() {
  for (TensorInfo& t : tensors) {
    const std::string name = printable(t.name);
    if (t.offset % alignment != 0) {
      fail("{}: tensor '{}': data offset {} is not a multiple of the alignment {}", path, name,
           t.offset, alignment);
    }
    const uint64_t room = size - data_offset;
    if (t.offset > room || t.n_bytes > room - t.offset) {
      fail(
          "{}: tensor '{}': data offset {} + size {} runs past the end of the file (data section "
          "starts at byte {}, file size {})",
          path, name, t.offset, t.n_bytes, data_offset, size);
    }
    t.data = data + data_offset + t.offset;
  }
}

File::File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open model file '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot open model file '{}': {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot open model file '{}': not a regular file", path);
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->size = std::size_t(st.st_size);
  if (impl->size > 0) {
    void* map = mmap(nullptr, impl->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail("cannot map model file '{}': {}", path, std::strerror(err));
    }
    impl->map = map;
    impl->map_size = impl->size;
    impl->data = static_cast<const uint8_t*>(map);
  }
  ::close(fd);  // the mapping keeps the file alive
  if (impl->size == 0) fail("{}: the file is empty, expected a GGUF model", path);
  impl->parse();
  return File(std::move(impl));
}

void File::release_pages(const uint8_t* data, std::size_t bytes) const {
  if (!impl_->map || bytes == 0) return;
  const auto base = reinterpret_cast<uintptr_t>(impl_->map);
  const auto begin = reinterpret_cast<uintptr_t>(data);
  if (begin < base || begin + bytes > base + impl_->map_size) return;  // not inside the mapping
  const auto page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t first = (begin + page - 1) / page * page, last = (begin + bytes) / page * page;
  // Advice only: the mapping is read-only and private, so dropping its pages loses nothing.
  if (first < last) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

File File::from_memory(const uint8_t* data, std::size_t size, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  impl->path = name;
  impl->data = data;
  impl->size = data ? size : 0;
  if (impl->size == 0) fail("{}: the buffer is empty, expected a GGUF model", name);
  impl->parse();
  return File(std::move(impl));
}

const std::string& File::path() const { return impl_->path; }
uint32_t File::version() const { return impl_->version; }
std::size_t File::alignment() const { return impl_->alignment; }
std::size_t File::data_offset() const { return impl_->data_offset; }
std::size_t File::size() const { return impl_->size; }

const std::vector<std::pair<std::string, Value>>& File::metadata() const { return impl_->metadata; }

const Value* File::find(const std::string& key) const {
  const auto it = impl_->key_index.find(key);
  return it == impl_->key_index.end() ? nullptr : &impl_->metadata[it->second].second;
}

std::string File::get_string(const std::string& key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::STRING) impl_->wrong_type(key, v, "STRING");
  return v.s;
}

namespace {
// An integer Value as uint64 when it is non-negative; false otherwise.
bool as_uint(const Value& v, uint64_t& out) {
  if (is_unsigned(v.type)) {
    out = v.u;
    return true;
  }
  if (is_signed(v.type) && v.i >= 0) {
    out = uint64_t(v.i);
    return true;
  }
  return false;
}
bool as_int(const Value& v, int64_t& out) {
  if (is_signed(v.type)) {
    out = v.i;
    return true;
  }
  if (is_unsigned(v.type) && v.u <= uint64_t(std::numeric_limits<int64_t>::max())) {
    out = int64_t(v.u);
    return true;
  }
  return false;
}
bool as_double(const Value& v, double& out) {
  if (is_float(v.type)) {
    out = v.f;
  } else if (is_unsigned(v.type)) {
    out = double(v.u);
  } else if (is_signed(v.type)) {
    out = double(v.i);
  } else {
    return false;
  }
  return true;
}
}  // namespace

uint64_t File::get_uint(const std::string& key) const {
  const Value& v = impl_->get(key);
  uint64_t out = 0;
  if (!as_uint(v, out)) {
    if (is_signed(v.type)) {
      fail("{}: metadata key '{}' is {}, expected a non-negative integer", impl_->path, key, v.i);
    }
    impl_->wrong_type(key, v, "an unsigned integer");
  }
  return out;
}

int64_t File::get_int(const std::string& key) const {
  const Value& v = impl_->get(key);
  int64_t out = 0;
  if (!as_int(v, out)) {
    if (is_unsigned(v.type)) {
      fail("{}: metadata key '{}' is {}, which does not fit in a signed 64-bit integer",
           impl_->path, key, v.u);
    }
    impl_->wrong_type(key, v, "an integer");
  }
  return out;
}

double File::get_float(const std::string& key) const {
  const Value& v = impl_->get(key);
  double out = 0;
  if (!as_double(v, out)) impl_->wrong_type(key, v, "a number");
  return out;
}

bool File::get_bool(const std::string& key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::BOOL) impl_->wrong_type(key, v, "BOOL");
  return v.b;
}

std::vector<std::string> File::get_string_array(const std::string& key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::ARRAY || v.element_type != ValueType::STRING) {
    impl_->wrong_type(key, v, "an ARRAY of STRING");
  }
  std::vector<std::string> out;
  out.reserve(std::size_t(v.count));
  const uint8_t* p = v.encoded;
  for (uint64_t k = 0; k < v.count; ++k) out.push_back(decode_element(ValueType::STRING, p).s);
  return out;
}

std::vector<double> File::get_float_array(const std::string& key) const {
  const Value& v = impl_->get(key);
  const ValueType et = v.element_type;
  if (v.type != ValueType::ARRAY || !(is_float(et) || is_signed(et) || is_unsigned(et))) {
    impl_->wrong_type(key, v, "an ARRAY of numbers");
  }
  std::vector<double> out(std::size_t(v.count));
  const uint8_t* p = v.encoded;
  for (std::size_t k = 0; k < out.size(); ++k) as_double(decode_element(et, p), out[k]);
  return out;
}

std::vector<int64_t> File::get_int_array(const std::string& key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::ARRAY || !(is_signed(v.element_type) || is_unsigned(v.element_type))) {
    impl_->wrong_type(key, v, "an ARRAY of integers");
  }
  std::vector<int64_t> out(std::size_t(v.count));
  const uint8_t* p = v.encoded;
  for (std::size_t k = 0; k < out.size(); ++k) {
    const Value e = decode_element(v.element_type, p);
    if (!as_int(e, out[k])) {
      fail("{}: metadata key '{}': element {} is {}, which does not fit in a signed 64-bit integer",
           impl_->path, key, k, e.u);
    }
  }
  return out;
}

uint64_t File::get_uint_or(const std::string& key, uint64_t fallback) const {
  return find(key) ? get_uint(key) : fallback;
}
double File::get_float_or(const std::string& key, double fallback) const {
  return find(key) ? get_float(key) : fallback;
}
std::string File::get_string_or(const std::string& key, const std::string& fallback) const {
  return find(key) ? get_string(key) : fallback;
}
bool File::get_bool_or(const std::string& key, bool fallback) const {
  return find(key) ? get_bool(key) : fallback;
}

const std::vector<TensorInfo>& File::tensors() const { return impl_->tensors; }

const TensorInfo* File::find_tensor(const std::string& name) const {
  const auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorInfo& File::tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  if (!t) fail("{}: tensor '{}' is missing", impl_->path, name);
  return *t;
}

}  // namespace squat::gguf
