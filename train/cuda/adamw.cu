#include "nn/cuda/launch.cuh"
#include "train/cuda/adamw.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSumThreads = 512;
constexpr std::int64_t kMaxSumBlocks = 512;  // at most one partial per thread of the final pass

// The tensors of one fused launch: tensor i's blocks are [first_block[i], first_block[i+1]),
// each covering kChunk elements. Passed as a __grid_constant__ parameter, so the blocks
// index it in parameter space.
constexpr int kMaxTensors = 40;
constexpr std::int64_t kChunk = 16 * kThreads;
struct AdamWTable {
  void* p[kMaxTensors];
  const void* g[kMaxTensors];
  void* m[kMaxTensors];
  void* v[kMaxTensors];
  std::int64_t n[kMaxTensors];
  double decay[kMaxTensors];
  std::int64_t first_block[kMaxTensors + 1];
  int count;
};

// The update of train/optim.cpp's adamw_update, element by element, in C.
template <class T, class C>
__global__ void adamw_kernel(const __grid_constant__ AdamWTable table, C beta1, C beta2,
                             C one_minus_beta1, C one_minus_beta2, C neg_step_size, C bc2_sqrt,
                             C eps) {
  const std::int64_t block = blockIdx.x;
  int t = 0;
  while (t + 1 < table.count && table.first_block[t + 1] <= block) ++t;
  T* p = static_cast<T*>(table.p[t]);
  const T* g = static_cast<const T*>(table.g[t]);
  C* m = static_cast<C*>(table.m[t]);
  C* v = static_cast<C*>(table.v[t]);
  const auto decay = static_cast<C>(table.decay[t]);
  const std::int64_t begin = (block - table.first_block[t]) * kChunk;
  const std::int64_t end = begin + kChunk < table.n[t] ? begin + kChunk : table.n[t];
  for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
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

void adamw_update(const std::vector<AdamWTensors>& params, const AdamWStep& s) {
  if (params.empty()) return;
  const Tensor& first = params.front().p;
  for (const AdamWTensors& t : params) {
    LN_CHECK(
        t.p.is_contiguous() && t.g.is_contiguous() && t.m.is_contiguous() && t.v.is_contiguous(),
        "AdamW::step on cuda needs contiguous parameters and gradients, got ", describe(t.p),
        " with gradient ", describe(t.g));
    LN_CHECK(t.p.dtype() == first.dtype() && t.p.device() == first.device(),
             "AdamW::step on cuda: one fused update takes one dtype and device, got ",
             describe(first), " and ", describe(t.p));
  }
  DeviceGuard guard(first.device().index);
  cudaStream_t stream = stream_for(first.device());
  dispatch_device_floating(first.dtype(), "AdamW::step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    AdamWTable table{};
    auto launch = [&] {
      if (table.count == 0 || table.first_block[table.count] == 0) return;
      adamw_kernel<T, C>
          <<<static_cast<unsigned>(table.first_block[table.count]), kThreads, 0, stream>>>(
              table, static_cast<C>(s.beta1), static_cast<C>(s.beta2), static_cast<C>(1 - s.beta1),
              static_cast<C>(1 - s.beta2), static_cast<C>(-s.step_size),
              static_cast<C>(s.bias_correction2_sqrt), static_cast<C>(s.eps));
      LN_CUDA_CHECK(cudaGetLastError());
    };
    for (const AdamWTensors& t : params) {
      std::int64_t n = t.p.numel();
      if (n == 0) continue;
      int i = table.count++;
      table.p[i] = t.p.raw_data();
      table.g[i] = t.g.raw_data();
      table.m[i] = t.m.raw_data();
      table.v[i] = t.v.raw_data();
      table.n[i] = n;
      table.decay[i] = t.decay;
      table.first_block[i + 1] = table.first_block[i] + (n + kChunk - 1) / kChunk;
      if (table.count == kMaxTensors) {
        launch();
        table = AdamWTable{};
      }
    }
    launch();
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
