// The caching allocator: a small version of PyTorch's. Requests are rounded to size
// classes; a released block goes to its device's free list and is handed out again for a
// later request of about the same size. Blocks are never split or merged, which keeps the
// bookkeeping to two maps; the rounding bounds the waste (at most 2 MiB or 25%).
//
// Why reuse needs no event: see allocate() in runtime.h (one stream per device).
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

namespace {

constexpr std::size_t kSmallBlock = std::size_t{1} << 20;  // up to here: 512-byte classes
constexpr std::size_t kSmallRound = 512;
constexpr std::size_t kLargeRound = std::size_t{2} << 20;  // above: 2 MiB classes

std::size_t round_up(std::size_t bytes, std::size_t to) { return (bytes + to - 1) / to * to; }

std::size_t block_size_for(std::size_t bytes) {
  if (bytes <= kSmallBlock) return round_up(bytes == 0 ? 1 : bytes, kSmallRound);
  return round_up(bytes, kLargeRound);
}

// A cached block serves a request of `rounded` bytes when it is at most 25% larger, so a
// small tensor never pins a large block.
std::size_t largest_fit(std::size_t rounded) { return rounded + rounded / 4; }

std::string human(std::size_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 5) {
    v /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.2f %s", v, kUnits[unit]);
  return text;
}

struct DeviceCache {
  std::mutex mutex;
  std::multimap<std::size_t, void*> free_blocks;  // size -> block
  std::unordered_map<void*, std::size_t> in_use;  // block -> size
  MemoryStats stats;

  // Hands every free block back to the driver. Caller holds mutex and has made the device
  // current. cudaFree waits for the device, so no queued kernel still uses them.
  void release_free_blocks() {
    for (auto& [size, ptr] : free_blocks) {
      cudaFree(ptr);
      stats.reserved_bytes -= size;
    }
    free_blocks.clear();
  }
};

// One cache per device, made on first use. Never destroyed: tensors held by static objects
// may be released after static destructors have run; the driver reclaims memory at exit.
DeviceCache& cache_for(int device) {
  static auto* caches = [] {
    auto* v = new std::vector<std::unique_ptr<DeviceCache>>();
    for (int d = 0; d < device_count(); ++d) v->push_back(std::make_unique<DeviceCache>());
    return v;
  }();
  LN_CHECK(device >= 0 && device < static_cast<int>(caches->size()), "cuda:", device,
           " is not available: this machine has ", caches->size(), " CUDA device(s)");
  return *(*caches)[device];
}

[[noreturn]] void out_of_memory(int device, std::size_t asked, const MemoryStats& stats) {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaGetLastError();
  throw Error(cat("out of GPU memory on cuda:", device, ": asked for ", human(asked), " (", asked,
                  " bytes) with ", human(free_bytes), " free of ", human(total_bytes),
                  " on the device; this process holds ", human(stats.current_bytes),
                  " in tensors and ", human(stats.reserved_bytes - stats.current_bytes),
                  " cached (peak ", human(stats.peak_bytes),
                  "). Reduce batch_size or seq_len, or turn on activation recomputation, "
                  "to fit"));
}

}  // namespace

void* allocate(std::size_t bytes, int device) {
  DeviceCache& cache = cache_for(device);
  std::size_t size = block_size_for(bytes);
  LN_CHECK(size >= bytes, "cannot allocate ", bytes, " bytes on cuda:", device,
           ": the size overflows");
  std::lock_guard<std::mutex> lock(cache.mutex);
  void* ptr = nullptr;
  auto it = cache.free_blocks.lower_bound(size);
  if (it != cache.free_blocks.end() && it->first <= largest_fit(size)) {
    size = it->first;
    ptr = it->second;
    cache.free_blocks.erase(it);
  } else {
    DeviceGuard guard(device);
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      cache.release_free_blocks();
      status = cudaMalloc(&ptr, size);
      if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        out_of_memory(device, bytes, cache.stats);
      }
    }
    LN_CUDA_CHECK(status);
    ++cache.stats.device_allocations;
    cache.stats.reserved_bytes += size;
  }
  cache.in_use.emplace(ptr, size);
  cache.stats.current_bytes += size;
  cache.stats.peak_bytes = std::max(cache.stats.peak_bytes, cache.stats.current_bytes);
  return ptr;
}

void release(void* ptr, int device) noexcept {
  if (ptr == nullptr) return;
  DeviceCache& cache = cache_for(device);
  std::lock_guard<std::mutex> lock(cache.mutex);
  auto it = cache.in_use.find(ptr);
  if (it == cache.in_use.end()) {
    std::fprintf(stderr, "longnet: released a pointer the cuda:%d allocator never gave out\n",
                 device);
    std::abort();
  }
  cache.stats.current_bytes -= it->second;
  cache.free_blocks.emplace(it->second, ptr);
  cache.in_use.erase(it);
}

MemoryStats memory_stats(int device) {
  DeviceCache& cache = cache_for(device);
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.stats;
}

void reset_peak_memory(int device) {
  DeviceCache& cache = cache_for(device);
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.stats.peak_bytes = cache.stats.current_bytes;
}

void empty_cache(int device) {
  DeviceCache& cache = cache_for(device);
  std::lock_guard<std::mutex> lock(cache.mutex);
  DeviceGuard guard(device);
  cache.release_free_blocks();
}

}  // namespace longnet::cuda
