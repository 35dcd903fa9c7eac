// FNV-1a, 64 bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3, as published by Fowler,
// Noll and Vo): a checksum for our own file formats and fingerprints, not cryptographic.
#pragma once

#include <cstddef>
#include <cstdint>

namespace squat {

class Fnv1a {
 public:
  Fnv1a& add(const void* data, std::size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (std::size_t i = 0; i < n; ++i) hash_ = (hash_ ^ p[i]) * 0x100000001b3ull;
    return *this;
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ull;
};

inline uint64_t fnv1a(const void* data, std::size_t n) { return Fnv1a().add(data, n).value(); }

}  // namespace squat
