// Devices, streams, events and byte copies. Memory lives in allocator.cu, element-wise
// copies and fills in copy.cu.
#include <array>
#include <atomic>
#include <cstring>
#include <mutex>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

namespace {

constexpr int kMaxDevices = 64;

// One stream per device, created on first use and never destroyed (work may still be
// queued when static destructors run).
std::array<std::atomic<cudaStream_t>, kMaxDevices> g_streams{};
std::mutex g_streams_mutex;

void check_device(int device) {
  LN_CHECK(device >= 0 && device < device_count() && device < kMaxDevices, "cuda:", device,
           " is not available: this machine has ", device_count(), " CUDA device(s)");
}

}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  // Asked once: the answer does not change while the process runs, and ops call this often.
  static const int count = [] {
    int n = 0;
    // No driver or no device is a normal answer here, not an error.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  LN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

DeviceGuard::DeviceGuard(int device) {
  LN_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    LN_CUDA_CHECK(cudaSetDevice(device));
    changed_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (changed_) cudaSetDevice(previous_);
}

cudaStream_t current_stream(int device) {
  if (device >= 0 && device < kMaxDevices) {
    cudaStream_t stream = g_streams[device].load(std::memory_order_acquire);
    if (stream != nullptr) return stream;
  }
  check_device(device);
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  cudaStream_t stream = g_streams[device].load(std::memory_order_acquire);
  if (stream == nullptr) {
    DeviceGuard guard(device);
    // Blocking flags (not cudaStreamNonBlocking): a library call that slips onto the
    // legacy default stream still waits for, and is waited for by, this stream.
    LN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamDefault));
    g_streams[device].store(stream, std::memory_order_release);
  }
  return stream;
}

void synchronize(int device) {
  DeviceGuard guard(device);
  LN_CUDA_CHECK(cudaStreamSynchronize(current_stream(device)));
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                std::size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  if (dst_device.is_cuda() && src_device.is_cuda() && dst_device.index != src_device.index) {
    // Between devices: the source's queued writes must land first, and the copy must end
    // before the source block can be reused by its device's stream.
    synchronize(src_device.index);
    DeviceGuard guard(dst_device.index);
    cudaStream_t stream = current_stream(dst_device.index);
    LN_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, bytes, stream));
    LN_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  // Unified addressing tells the directions apart. Queued on the stream, the copy starts
  // after the kernels that produce the source.
  LN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  if (dst_device.is_cpu() || src_device.is_cpu()) {
    // The host reads (or may free) its side as soon as we return.
    LN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

Event::Event(int device) : device_(device) {
  check_device(device);
  DeviceGuard guard(device);
  cudaEvent_t event = nullptr;
  LN_CUDA_CHECK(cudaEventCreate(&event));
  event_ = event;
}

Event::~Event() {
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void Event::record() {
  DeviceGuard guard(device_);
  LN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), current_stream(device_)));
}

void Event::synchronize() const {
  LN_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

void Event::wait(int device) const {
  DeviceGuard guard(device);
  LN_CUDA_CHECK(cudaStreamWaitEvent(current_stream(device), static_cast<cudaEvent_t>(event_), 0));
}

bool Event::done() const {
  cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (status == cudaErrorNotReady) {
    cudaGetLastError();  // not an error: clear it so the next check does not see it
    return false;
  }
  LN_CUDA_CHECK(status);
  return true;
}

float Event::elapsed_ms(const Event& start) const {
  synchronize();
  float ms = 0;
  LN_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.event_),
                                     static_cast<cudaEvent_t>(event_)));
  return ms;
}

}  // namespace longnet::cuda
