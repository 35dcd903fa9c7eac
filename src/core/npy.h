// Minimal .npy (NumPy format v1/v2/v3) reader and writer for 2-D float arrays in C order.
// Reading accepts little-endian float32 ('<f4') and float16 ('<f2') and converts to float;
// anything else (other dtypes, Fortran order, bad header, truncated data) fails with one
// message naming the file (squat::fail, exit status 1).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace squat::npy {

struct Array {
  std::vector<std::size_t> shape;
  std::vector<float> data;  // row-major
  std::string dtype;        // as read: "<f4" or "<f2"
};

Array read(const std::string& path);
// Parses an in-memory .npy file (`name` is used in messages).
Array parse(const std::vector<unsigned char>& bytes, const std::string& name);
// Writes float32 data of the given shape; writes a temporary file beside `path` and renames it,
// so a failure never leaves a half-written file at `path`.
void write_f32(const std::string& path, const float* data, const std::vector<std::size_t>& shape);
// The encoded bytes of a float32 / float16 (data given as raw half bits) .npy file.
std::vector<unsigned char> encode_f32(const float* data, const std::vector<std::size_t>& shape);
std::vector<unsigned char> encode_f16(const unsigned short* data,
                                      const std::vector<std::size_t>& shape);

}  // namespace squat::npy
