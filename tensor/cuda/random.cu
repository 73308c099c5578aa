// Philox draws in device kernels: one thread per counter computes its four values with the
// CPU's arithmetic (tensor/distributions.h) and stores them converted to the output dtype.
#include "tensor/cuda/check.h"
#include "tensor/cuda/convert.h"
#include "tensor/cuda/random.h"
#include "tensor/cuda/stream.h"
#include "tensor/distributions.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;

template <class T, class Distribution>
__global__ void draw_kernel(T* out, std::int64_t n, Distribution distribution, std::uint64_t seed,
                            std::uint64_t first) {
  std::int64_t counters = (n + 3) / 4;
  for (std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       c < counters; c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double values[4];
    distribution(distributions::philox_words(first + static_cast<std::uint64_t>(c), seed), values);
    for (std::int64_t j = 0; j < 4 && 4 * c + j < n; ++j) out[4 * c + j] = convert<T>(values[j]);
  }
}

template <class Distribution>
void launch(const Tensor& out, Distribution distribution, std::uint64_t seed, std::uint64_t first) {
  std::int64_t n = out.numel();
  if (n == 0) return;
  int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  dispatch(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    draw_kernel<T><<<grid_for((n + 3) / 4, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw_data()), n, distribution, seed, first);
  });
  LN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void draw_normal(const Tensor& out, std::uint64_t seed, std::uint64_t first) {
  launch(out, distributions::Normal{}, seed, first);
}

void draw_uniform(const Tensor& out, double low, double high, std::uint64_t seed,
                  std::uint64_t first) {
  launch(out, distributions::Uniform{low, high}, seed, first);
}

void draw_integers(const Tensor& out, std::int64_t low, std::uint64_t range, std::uint64_t seed,
                   std::uint64_t first) {
  launch(out, distributions::Integer{low, range}, seed, first);
}

}  // namespace longnet::cuda
