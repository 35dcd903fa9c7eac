// A zero-initialised heap array aligned for SIMD loads (64 bytes), allocated once and reused on
// hot paths. Large buffers come straight from anonymous mmap: their zero pages cost no memory
// until written, so buffers sized for the worst case (a whole-context prompt batch) add to the
// resident set only as far as they are used.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

namespace squat {

template <typename T>
class AlignedBuffer {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>,
                "AlignedBuffer holds plain data only");

 public:
  static constexpr std::size_t kAlignment = 64;
  static constexpr std::size_t kMmapBytes = std::size_t(1) << 20;

  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t count) { resize(count); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& other) noexcept { swap(other); }
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
    AlignedBuffer moved(std::move(other));
    swap(moved);
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Contents are not preserved; the new storage reads as zeros.
  void resize(std::size_t count) {
    if (count == size_) return;
    release();
    if (count == 0) return;
    const std::size_t bytes = (count * sizeof(T) + kAlignment - 1) / kAlignment * kAlignment;
    if (bytes >= kMmapBytes) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      data_ = static_cast<T*>(p);
    } else {
      data_ = static_cast<T*>(std::aligned_alloc(kAlignment, bytes));
      if (!data_) throw std::bad_alloc();
      std::memset(static_cast<void*>(data_), 0, bytes);
    }
    size_ = count;
    bytes_ = bytes;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }

 private:
  void release() {
    if (data_) {
      if (bytes_ >= kMmapBytes) {
        munmap(data_, bytes_);
      } else {
        std::free(data_);
      }
    }
    data_ = nullptr;
    size_ = bytes_ = 0;
  }
  void swap(AlignedBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(bytes_, other.bytes_);
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t bytes_ = 0;
};

}  // namespace squat
