#include "core/npy.h"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "core/error.h"
#include "core/files.h"
#include "core/fp16.h"

namespace squat::npy {
namespace {

constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

// Finds the value text after 'key': in a Python dict literal.
std::string dict_value(const std::string& header, const std::string& key, const std::string& name) {
  const std::string k1 = "'" + key + "'", k2 = "\"" + key + "\"";
  std::size_t p = header.find(k1);
  std::size_t klen = k1.size();
  if (p == std::string::npos) {
    p = header.find(k2);
    klen = k2.size();
  }
  if (p == std::string::npos) fail("{}: .npy header has no '{}' field", name, key);
  p += klen;
  while (p < header.size() && std::isspace((unsigned char)header[p])) ++p;
  if (p >= header.size() || header[p] != ':')
    fail("{}: malformed .npy header near '{}'", name, key);
  ++p;
  while (p < header.size() && std::isspace((unsigned char)header[p])) ++p;
  std::size_t e = p;
  if (e < header.size() && (header[e] == '\'' || header[e] == '"')) {
    const char quote = header[e];
    const std::size_t close = header.find(quote, e + 1);
    if (close == std::string::npos) fail("{}: malformed .npy header near '{}'", name, key);
    return header.substr(e + 1, close - e - 1);
  }
  if (e < header.size() && header[e] == '(') {
    const std::size_t close = header.find(')', e);
    if (close == std::string::npos) fail("{}: malformed .npy header near '{}'", name, key);
    return header.substr(e, close - e + 1);
  }
  while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
  std::string v = header.substr(p, e - p);
  while (!v.empty() && std::isspace((unsigned char)v.back())) v.pop_back();
  return v;
}

std::vector<std::size_t> parse_shape(const std::string& s, const std::string& name) {
  // "(a, b)" or "(a,)" or "()"
  std::vector<std::size_t> shape;
  std::size_t i = 1;
  while (i < s.size() - 1) {
    while (i < s.size() && (std::isspace((unsigned char)s[i]) || s[i] == ',')) ++i;
    if (i >= s.size() - 1) break;
    if (!std::isdigit((unsigned char)s[i])) fail("{}: malformed .npy shape {}", name, s);
    std::size_t v = 0;
    while (i < s.size() && std::isdigit((unsigned char)s[i])) {
      const std::size_t digit = std::size_t(s[i] - '0');
      if (v > (std::numeric_limits<std::size_t>::max() - digit) / 10) {
        fail("{}: .npy shape {} is too large", name, s);
      }
      v = v * 10 + digit;
      ++i;
    }
    shape.push_back(v);
  }
  return shape;
}

void put_header(std::vector<unsigned char>& out, const std::string& descr,
                const std::vector<std::size_t>& shape) {
  std::string dims = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dims += std::to_string(shape[i]);
    dims += (shape.size() == 1 || i + 1 < shape.size()) ? "," : "";
    if (i + 1 < shape.size()) dims += " ";
  }
  dims += ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + dims + ", }";
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  out.insert(out.end(), kMagic, kMagic + 6);
  out.push_back(1);
  out.push_back(0);
  out.push_back((unsigned char)(header.size() & 0xff));
  out.push_back((unsigned char)(header.size() >> 8));
  out.insert(out.end(), header.begin(), header.end());
}

}  // namespace

Array parse(const std::vector<unsigned char>& bytes, const std::string& name) {
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) {
    fail("{}: not a .npy file (bad magic)", name);
  }
  const int major = bytes[6];
  std::size_t header_len, start;
  if (major == 1) {
    header_len = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail("{}: truncated .npy header", name);
    header_len = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8) |
                 (std::size_t(bytes[10]) << 16) | (std::size_t(bytes[11]) << 24);
    start = 12;
  } else {
    fail("{}: unsupported .npy version {}", name, major);
  }
  if (bytes.size() - start < header_len) fail("{}: truncated .npy header", name);
  const std::string header(bytes.begin() + std::ptrdiff_t(start),
                           bytes.begin() + std::ptrdiff_t(start + header_len));
  Array a;
  a.dtype = dict_value(header, "descr", name);
  const std::string fortran = dict_value(header, "fortran_order", name);
  const std::string shape_text = dict_value(header, "shape", name);
  if (fortran != "False") fail("{}: Fortran-order arrays are not supported (need C order)", name);
  std::size_t elem;
  if (a.dtype == "<f4") {
    elem = 4;
  } else if (a.dtype == "<f2") {
    elem = 2;
  } else {
    fail("{}: dtype '{}' is not supported (need float32 '<f4' or float16 '<f2')", name, a.dtype);
  }
  if (shape_text.size() < 2 || shape_text.front() != '(' || shape_text.back() != ')') {
    fail("{}: malformed .npy shape {}", name, shape_text);
  }
  a.shape = parse_shape(shape_text, name);
  std::size_t count = 1;
  for (std::size_t s : a.shape) {
    if (s != 0 && count > std::numeric_limits<std::size_t>::max() / 8 / s) {
      fail("{}: .npy shape is too large", name);
    }
    count *= s;
  }
  const std::size_t data_start = start + header_len;
  const std::size_t available = bytes.size() - data_start;
  if (available != count * elem) {
    fail("{}: .npy data has {} bytes, shape {} needs {}", name, available, shape_text,
         count * elem);
  }
  a.data.resize(count);
  const unsigned char* p = bytes.data() + data_start;
  for (std::size_t i = 0; i < count; ++i) {
    if (elem == 4) {
      uint32_t bits = uint32_t(p[4 * i]) | (uint32_t(p[4 * i + 1]) << 8) |
                      (uint32_t(p[4 * i + 2]) << 16) | (uint32_t(p[4 * i + 3]) << 24);
      a.data[i] = bits_to_float(bits);
    } else {
      a.data[i] = fp16_to_float(uint16_t(p[2 * i] | (p[2 * i + 1] << 8)));
    }
  }
  return a;
}

Array read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open {}", path);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)),
                                   std::istreambuf_iterator<char>());
  return parse(bytes, path);
}

std::vector<unsigned char> encode_f32(const float* data, const std::vector<std::size_t>& shape) {
  std::vector<unsigned char> out;
  put_header(out, "<f4", shape);
  std::size_t count = 1;
  for (std::size_t s : shape) count *= s;
  for (std::size_t i = 0; i < count; ++i) {
    const uint32_t b = float_to_bits(data[i]);
    for (int k = 0; k < 4; ++k) out.push_back((unsigned char)(b >> (8 * k)));
  }
  return out;
}

std::vector<unsigned char> encode_f16(const unsigned short* data,
                                      const std::vector<std::size_t>& shape) {
  std::vector<unsigned char> out;
  put_header(out, "<f2", shape);
  std::size_t count = 1;
  for (std::size_t s : shape) count *= s;
  for (std::size_t i = 0; i < count; ++i) {
    out.push_back((unsigned char)(data[i] & 0xff));
    out.push_back((unsigned char)(data[i] >> 8));
  }
  return out;
}

void write_f32(const std::string& path, const float* data, const std::vector<std::size_t>& shape) {
  const std::vector<unsigned char> bytes = encode_f32(data, shape);
  write_file_atomically(
      path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

}  // namespace squat::npy
