// libFuzzer target for the GGUF reader: any input must either parse or end in squat::Error,
// never crash, leak, read out of bounds or hit undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "gguf/gguf.h"

namespace {

// Walks a value like a consumer would (nested arrays included) and returns a checksum.
uint64_t touch(const squat::gguf::Value& v) {
  uint64_t sum = uint64_t(v.type) + v.u + uint64_t(v.i) + v.s.size() + (v.b ? 1 : 0);
  for (const auto& e : v.elements()) sum += touch(e);  // decodes flat arrays from the file
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  // Copy so that AddressSanitizer flags any read even one byte past the input.
  std::vector<uint8_t> copy(data, data + size);
  try {
    const auto file = squat::gguf::File::from_memory(copy.data(), copy.size(), "fuzz.gguf");
    volatile uint64_t sum = file.version() + file.alignment() + file.data_offset();
    for (const auto& [key, value] : file.metadata()) {
      sum = sum + touch(value) + squat::gguf::to_string(value, 4).size();
      if (file.find(key) == nullptr) __builtin_trap();
      // Typed getters must either convert or throw, whatever the type.
      try {
        sum = sum + file.get_uint(key);
      } catch (const squat::Error&) {
      }
      try {
        sum = sum + uint64_t(file.get_float_array(key).size());
      } catch (const squat::Error&) {
      }
      try {
        sum = sum + file.get_string_array(key).size();
      } catch (const squat::Error&) {
      }
    }
    for (const auto& t : file.tensors()) {
      if (file.find_tensor(t.name) == nullptr) __builtin_trap();
      // The first and last byte of every tensor must lie inside the input.
      sum = sum + t.data[0] + t.data[t.n_bytes - 1] + t.n_elements;
    }
    (void)sum;
  } catch (const squat::Error&) {
    // Rejected cleanly: that is the expected outcome for most inputs.
  }
  return 0;
}
