#include "nn/cuda/launch.cuh"
#include "nn/cuda/positional.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;

// The two elements of a rotated pair, moved by one access.
template <class T>
struct alignas(2 * sizeof(T)) Pair {
  T first;
  T second;
};

// One thread per (position n, pair i): it computes that pair's cos and sin (scale folded in)
// once in f64, then rotates the pair in every (b, h) row at position n. Consecutive threads
// take consecutive pairs, so each row's loads coalesce; x and out never overlap (out is
// fresh), so the loads of several heads are in flight at once.
template <class T>
__global__ void rotary_kernel(const T* __restrict__ x, T* __restrict__ out, std::int64_t batch,
                              std::int64_t length, std::int64_t heads, std::int64_t dim,
                              std::int64_t offset, double theta, double exponent_sign,
                              double scale_base, double sin_sign) {
  using C = acc_t<T>;
  std::int64_t half = dim / 2;
  std::int64_t total = length * half;
  auto d = static_cast<double>(dim);
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t n = k / half;
    std::int64_t i = k - n * half;
    // The cpu's expressions, term by term.
    double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / d);
    double log_base = log((2.0 * static_cast<double>(i) + 0.4 * d) / (1.4 * d));
    auto pos = static_cast<double>(offset + n);
    double angle = pos * inv_freq;
    double s = exp(exponent_sign * log_base * pos / scale_base);
    double sin_angle = 0;
    double cos_angle = 0;
    sincos(angle, &sin_angle, &cos_angle);
    auto cosine = static_cast<C>(s * cos_angle);
    auto sine = static_cast<C>(sin_sign * s * sin_angle);
    for (std::int64_t b = 0; b < batch; ++b) {
#pragma unroll 4
      for (std::int64_t h = 0; h < heads; ++h) {
        std::int64_t at = ((b * length + n) * heads + h) * dim + 2 * i;
        Pair<T> in = *reinterpret_cast<const Pair<T>*>(x + at);
        auto x0 = static_cast<C>(in.first);
        auto x1 = static_cast<C>(in.second);
        *reinterpret_cast<Pair<T>*>(out + at) = {static_cast<T>(x0 * cosine - x1 * sine),
                                                 static_cast<T>(x0 * sine + x1 * cosine)};
      }
    }
  }
}

}  // namespace

void rotary(const Tensor& x, std::int64_t offset, double theta, double exponent_sign,
            double scale_base, bool transpose, const Tensor& out) {
  if (x.numel() == 0) return;
  std::int64_t length = x.size(1);
  std::int64_t half = x.size(3) / 2;
  DeviceGuard guard(x.device().index);
  dispatch_device_floating(x.dtype(), "rotary", [&](auto tag) {
    using T = typename decltype(tag)::type;
    rotary_kernel<T><<<grid_for(length * half, kThreads), kThreads, 0, stream_for(x.device())>>>(
        device_ptr<const T>(x), device_ptr<T>(out), x.size(0), length, x.size(2), x.size(3), offset,
        theta, exponent_sign, scale_base, transpose ? -1.0 : 1.0);
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace longnet::cuda
