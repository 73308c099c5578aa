// The CUDA side of the execution model (include from .cu files only): the one stream per
// device that every kernel and copy of that device is queued on, a guard that makes a
// device current, and the grid size of a grid-stride loop.
//
// A launcher for cuda:N does
//   DeviceGuard guard(N);
//   kernel<<<grid_for(n), kThreads, 0, current_stream(N)>>>(...);
//   LN_CUDA_CHECK(cudaGetLastError());
// and returns without synchronising: copies to the host wait for the stream.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace longnet::cuda {

// The stream of device (created on first use; never the legacy default stream, but one
// that still waits for it, so stray default-stream work stays ordered).
cudaStream_t current_stream(int device);

// Makes device current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// Blocks for a grid-stride loop over n items: enough to fill the GPU, capped so the
// index arithmetic stays cheap.
inline unsigned grid_for(std::int64_t n, int threads = 256) {
  std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, 65536));
}

}  // namespace longnet::cuda
