#include "nn/cuda/launch.cuh"
#include "train/cuda/adamw.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSumThreads = 512;
constexpr std::int64_t kMaxSumBlocks = 512;  // at most one partial per thread of the final pass

// The update of train/optim.cpp's adamw_update, element by element, in C.
template <class T, class C>
__global__ void adamw_kernel(T* p, const T* g, C* m, C* v, std::int64_t n, C decay, C beta1,
                             C beta2, C one_minus_beta1, C one_minus_beta2, C neg_step_size,
                             C bc2_sqrt, C eps) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    auto grad = static_cast<C>(g[i]);
    C exp_avg = m[i] * beta1 + one_minus_beta1 * grad;
    C exp_avg_sq = v[i] * beta2 + one_minus_beta2 * grad * grad;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    C denom = sqrt(exp_avg_sq) / bc2_sqrt + eps;
    p[i] = static_cast<T>(static_cast<C>(p[i]) * decay + neg_step_size * (exp_avg / denom));
  }
}

// Sums a shared array of kSumThreads doubles by a fixed tree; thread 0 gets the total.
__device__ double block_sum(double* partial, double value) {
  partial[threadIdx.x] = value;
  __syncthreads();
  for (int half = kSumThreads / 2; half > 0; half >>= 1) {
    if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  return partial[0];
}

// partial[block] = sum of squares of the elements the block's grid-stride loop visits.
template <class T>
__global__ void squares_kernel(const T* g, std::int64_t n, double* partial) {
  __shared__ double shared[kSumThreads];
  double total = 0;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    auto x = static_cast<double>(static_cast<acc_t<T>>(g[i]));
    total += x * x;
  }
  double sum = block_sum(shared, total);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// *out = sum of partial[0 .. blocks), one block, blocks <= kSumThreads.
__global__ void sum_partials_kernel(const double* partial, std::int64_t blocks, double* out) {
  __shared__ double shared[kSumThreads];
  double value = static_cast<std::int64_t>(threadIdx.x) < blocks ? partial[threadIdx.x] : 0.0;
  double sum = block_sum(shared, value);
  if (threadIdx.x == 0) *out = sum;
}

template <class T>
__global__ void scale_kernel(T* g, std::int64_t n, acc_t<T> coef) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    g[i] = static_cast<T>(static_cast<acc_t<T>>(g[i]) * coef);
  }
}

}  // namespace

void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                  const AdamWStep& s) {
  LN_CHECK(p.is_contiguous() && g.is_contiguous() && m.is_contiguous() && v.is_contiguous(),
           "AdamW::step on cuda needs contiguous parameters and gradients, got ", describe(p),
           " with gradient ", describe(g));
  std::int64_t n = p.numel();
  if (n == 0) return;
  DeviceGuard guard(p.device().index);
  dispatch_device_floating(p.dtype(), "AdamW::step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    adamw_kernel<T, C><<<grid_for(n, kThreads), kThreads, 0, stream_for(p.device())>>>(
        device_ptr<T>(p), device_ptr<const T>(g), device_ptr<C>(m), device_ptr<C>(v), n,
        static_cast<C>(s.decay), static_cast<C>(s.beta1), static_cast<C>(s.beta2),
        static_cast<C>(1 - s.beta1), static_cast<C>(1 - s.beta2), static_cast<C>(-s.step_size),
        static_cast<C>(s.bias_correction2_sqrt), static_cast<C>(s.eps));
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

void sum_of_squares(const Tensor& g, const Tensor& sums, std::int64_t slot) {
  LN_CHECK(g.is_contiguous(), "clip_grad_norm on cuda needs contiguous gradients, got ",
           describe(g));
  DeviceGuard guard(g.device().index);
  cudaStream_t stream = stream_for(g.device());
  std::int64_t n = g.numel();
  // The block count depends on n alone, which fixes the summation order.
  std::int64_t blocks = std::min<std::int64_t>(kMaxSumBlocks, (n + kSumThreads - 1) / kSumThreads);
  blocks = std::max<std::int64_t>(blocks, 1);
  Tensor partial = empty({blocks}, {DType::f64, g.device()});
  dispatch_device_floating(g.dtype(), "clip_grad_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    squares_kernel<T><<<static_cast<unsigned>(blocks), kSumThreads, 0, stream>>>(
        device_ptr<const T>(g), n, device_ptr<double>(partial));
    LN_CUDA_CHECK(cudaGetLastError());
  });
  sum_partials_kernel<<<1, kSumThreads, 0, stream>>>(device_ptr<const double>(partial), blocks,
                                                     device_ptr<double>(sums) + slot);
  LN_CUDA_CHECK(cudaGetLastError());
}

void scale_(const Tensor& g, double coef) {
  LN_CHECK(g.is_contiguous(), "clip_grad_norm on cuda needs contiguous gradients, got ",
           describe(g));
  std::int64_t n = g.numel();
  if (n == 0) return;
  DeviceGuard guard(g.device().index);
  dispatch_device_floating(g.dtype(), "clip_grad_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    scale_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream_for(g.device())>>>(
        device_ptr<T>(g), n, static_cast<acc_t<T>>(coef));
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace longnet::cuda
