#include "model/fingerprint.h"

#include <cstdint>

#include <fmt/format.h>

#include "core/hash.h"

namespace squat {

std::string model_fingerprint(const gguf::File& file) {
  constexpr std::size_t kSamples = 16, kSampleBytes = 64;
  Fnv1a hash;
  for (const gguf::TensorInfo& t : file.tensors()) {
    hash.add(t.name.data(), t.name.size() + 1);  // with the terminator
    const auto type = uint32_t(t.type);
    hash.add(&type, sizeof type);
    for (uint64_t dim : t.shape) hash.add(&dim, sizeof dim);
    const std::size_t bytes = std::size_t(t.n_bytes);
    if (bytes <= kSamples * kSampleBytes) {
      hash.add(t.data, bytes);
      continue;
    }
    for (std::size_t s = 0; s < kSamples; ++s) {
      const std::size_t at = (bytes - kSampleBytes) / (kSamples - 1) * s;
      hash.add(t.data + at, kSampleBytes);
    }
  }
  const std::string arch = file.get_string_or("general.architecture", "unknown");
  return fmt::format("model '{}' ({}, {} tensors, weights {:016x})",
                     file.get_string_or("general.name", arch), arch, file.tensors().size(),
                     hash.value());
}

}  // namespace squat
