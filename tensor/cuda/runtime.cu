#include <cuda_bf16.h>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"

namespace longnet::cuda {

namespace {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) LN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

template <class T>
__global__ void fill_kernel(T* dst, T value, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = value;
  }
}

template <class T>
void launch_fill(void* dst, T value, std::int64_t n) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  auto blocks = static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535));
  fill_kernel<<<blocks, kThreads>>>(static_cast<T*>(dst), value, n);
  LN_CUDA_CHECK(cudaGetLastError());
  LN_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  int count = 0;
  // No driver or no device is a normal answer here, not an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

void* allocate(std::size_t bytes, int device) {
  LN_CHECK(device >= 0 && device < device_count(), "cuda:", device,
           " is not available: this machine has ", device_count(), " CUDA device(s)");
  DeviceGuard guard(device);
  void* ptr = nullptr;
  cudaError_t status = cudaMalloc(&ptr, bytes == 0 ? 1 : bytes);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw Error(cat("out of GPU memory on cuda:", device, ": asked for ", bytes, " bytes, ",
                    free_bytes, " of ", total_bytes,
                    " free; reduce batch_size or seq_len, or turn on activation recomputation"));
  }
  LN_CUDA_CHECK(status);
  return ptr;
}

void release(void* ptr, int device) noexcept {
  if (ptr == nullptr) return;
  int previous = 0;
  cudaGetDevice(&previous);
  cudaSetDevice(device);
  cudaFree(ptr);
  cudaSetDevice(previous);
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                std::size_t bytes) {
  if (bytes == 0) return;
  cudaMemcpyKind kind = cudaMemcpyDefault;  // unified addressing tells the directions apart
  int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  DeviceGuard guard(device);
  LN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

void fill(void* dst, DType dtype, double value, std::int64_t n, int device) {
  DeviceGuard guard(device);
  switch (dtype) {
    case DType::f32:
      return launch_fill(dst, static_cast<float>(value), n);
    case DType::f64:
      return launch_fill(dst, value, n);
    case DType::bf16:
      return launch_fill(dst, __float2bfloat16(static_cast<float>(value)), n);
    case DType::i32:
      return launch_fill(dst, static_cast<std::int32_t>(value), n);
    case DType::i64:
      return launch_fill(dst, static_cast<std::int64_t>(value), n);
  }
}

}  // namespace longnet::cuda
