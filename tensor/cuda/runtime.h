// The CUDA runtime as the rest of the engine sees it. No CUDA header leaks out of
// tensor/cuda/. In a build without CUDA every call that needs a device throws an error
// that says how to get one; device_count() is then 0.
//
// Execution model: every op on cuda:N runs on one stream of that device (created on first
// use; .cu code gets it from tensor/cuda/stream.h). Work on one device is therefore
// ordered, which is what makes the caching allocator safe: see allocate() below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor/device.h"
#include "tensor/dtype.h"

namespace longnet::cuda {

bool built_with_cuda();

// In a build without CUDA: throws the error that says how to get CUDA support (the stubs of
// every device entry point call it).
[[noreturn]] void no_cuda();

// Number of usable devices: 0 without a driver, without a device, or without CUDA in
// the build. Never throws.
int device_count();

// The device's product name, e.g. "NVIDIA H200".
std::string device_name(int device);

// Device memory from the per-device caching allocator. A released block goes back to the
// allocator's free list, not to the driver, and a later allocate() of a similar size
// reuses it, so steady-state training steps call no cudaMalloc. Reuse is safe without
// waiting: kernels that still read a released block were queued on the device's one
// stream before any kernel of the block's next owner, so they finish first. (Host code
// must not touch device memory except through copy_bytes, which is stream-ordered.)
// When cudaMalloc fails the cache is handed back to the driver and the call retried once;
// after that the error says what was asked, what is free and what to change.
void* allocate(std::size_t bytes, int device);
void release(void* ptr, int device) noexcept;

struct MemoryStats {
  std::size_t current_bytes = 0;        // held by live allocations (rounded block sizes)
  std::size_t peak_bytes = 0;           // most current_bytes since start or reset_peak_memory
  std::size_t reserved_bytes = 0;       // taken from the driver: in use plus cached
  std::int64_t device_allocations = 0;  // cudaMalloc calls so far
};
MemoryStats memory_stats(int device);
// Sets peak_bytes to current_bytes.
void reset_peak_memory(int device);
// Returns every cached (unused) block to the driver.
void empty_cache(int device);

// Copies bytes between any two devices (host<->device, device<->device). Copies that
// touch the host are synchronous: they wait for the device's queued work first, and the
// data is in place when the call returns. Device-to-device copies are queued on the
// stream.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                std::size_t bytes);

// Writes value (converted to dtype) to n contiguous elements at dst on device (queued).
void fill(void* dst, DType dtype, double value, std::int64_t n, int device);

// Waits until all work queued on device has finished.
void synchronize(int device);

// A CUDA event on one device, recorded on the device's stream: for timing (benches) and
// for making another device's stream wait.
class Event {
 public:
  explicit Event(int device = 0);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  // Marks the point after all work queued so far on the device.
  void record();
  // The host waits until the recorded point is reached.
  void synchronize() const;
  // Work queued on device's stream from now on starts after the recorded point.
  void wait(int device) const;
  // Whether the recorded point has been reached (never blocks).
  bool done() const;
  // Milliseconds from start's recorded point to this one; waits for this one.
  float elapsed_ms(const Event& start) const;

 private:
  void* event_ = nullptr;  // cudaEvent_t
  int device_ = 0;
};

}  // namespace longnet::cuda
