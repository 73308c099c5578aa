// Counter-based random numbers (Philox4x32-10): element i of a draw depends only on the
// seed, the generator's offset and i, so results are the same on every machine and for
// every thread count. A Generator is not safe to share between threads.
#pragma once

#include <array>
#include <cstdint>

namespace longnet {

// One Philox4x32-10 block: four random words from a 128-bit counter and a 64-bit key.
std::array<std::uint32_t, 4> philox4x32(std::array<std::uint32_t, 4> counter, std::uint64_t key);

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) : seed_(seed) {}

  std::uint64_t seed() const { return seed_; }
  // Counters consumed so far; saving (seed, offset) and restoring it resumes the stream.
  std::uint64_t offset() const { return offset_; }
  void set_offset(std::uint64_t offset) { offset_ = offset; }

  // Reserves count counters (4 random words each) and returns the first.
  std::uint64_t reserve(std::uint64_t count) {
    std::uint64_t first = offset_;
    offset_ += count;
    return first;
  }

 private:
  std::uint64_t seed_;
  std::uint64_t offset_ = 0;
};

}  // namespace longnet
