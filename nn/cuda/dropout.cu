#include "nn/cuda/dropout.h"
#include "nn/cuda/launch.cuh"
#include "tensor/distributions.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;

// One thread per Philox block of four elements.
template <class T>
__global__ void mask_kernel(const T* in, T* out, std::int64_t n, std::uint64_t seed,
                            std::uint64_t first, std::uint64_t threshold, acc_t<T> scale) {
  using C = acc_t<T>;
  std::int64_t blocks = (n + 3) / 4;
  for (std::int64_t blk = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       blk < blocks; blk += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint64_t counter = first + static_cast<std::uint64_t>(blk);
    // The CPU's Philox (tensor/distributions.h), so masks match it bit for bit.
    const distributions::Words words = distributions::philox_words(counter, seed);
    for (int j = 0; j < 4 && 4 * blk + j < n; ++j) {
      std::int64_t i = 4 * blk + j;
      bool keep = words.w[j] >= threshold;
      out[i] = static_cast<T>(keep ? static_cast<C>(in[i]) * scale : C(0));
    }
  }
}

}  // namespace

void dropout_mask(const Tensor& in, std::uint64_t seed, std::uint64_t first,
                  std::uint64_t threshold, double scale, const Tensor& out) {
  std::int64_t n = in.numel();
  if (n == 0) return;
  DeviceGuard guard(in.device().index);
  dispatch_device_floating(in.dtype(), "dropout", [&](auto tag) {
    using T = typename decltype(tag)::type;
    mask_kernel<T><<<grid_for((n + 3) / 4, kThreads), kThreads, 0, stream_for(in.device())>>>(
        device_ptr<const T>(in), device_ptr<T>(out), n, seed, first, threshold,
        static_cast<acc_t<T>>(scale));
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace longnet::cuda
