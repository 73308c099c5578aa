// Top-k by magnitude on the GPU. A radix select finds the key of the k-th largest element,
// 8 bits a pass: a 256-bin histogram of the next digit of the keys that match the digits
// chosen so far, read back to choose the next digit. Then a count pass (per block of
// kChunk elements: keys above that key and keys equal to it) and a write pass take every
// element above it and the first `need` elements equal to it, in index order, so the output
// is the CPU's exactly: ascending indices, ties to the lower index.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dist/cuda/topk.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRounds = 16;                 // elements per thread in the count and write passes
constexpr int kChunk = kThreads * kRounds;  // elements per block there
constexpr int kBins = 256;

// An element's key: its magnitude's bits, which order non-negative floats as their values
// do; NaN takes infinity's key (it counts as the largest, tied with infinity).
template <class T>
struct Keys;

template <>
struct Keys<float> {
  using Key = std::uint32_t;
  static __device__ Key of(float x) {
    return isnan(x) ? 0x7f800000U : (__float_as_uint(x) & 0x7fffffffU);
  }
};

template <>
struct Keys<double> {
  using Key = unsigned long long;
  static __device__ Key of(double x) {
    return isnan(x) ? 0x7ff0000000000000ULL
                    : (static_cast<Key>(__double_as_longlong(x)) & 0x7fffffffffffffffULL);
  }
};

// hist[d] += how many keys with (key & mask) == prefix have digit d at shift.
template <class T>
__global__ void histogram_kernel(const T* acc, std::int64_t n, typename Keys<T>::Key prefix,
                                 typename Keys<T>::Key mask, int shift, unsigned long long* hist) {
  __shared__ unsigned bins[kBins];
  for (int i = static_cast<int>(threadIdx.x); i < kBins; i += kThreads) bins[i] = 0;
  __syncthreads();
  for (std::int64_t i = blockIdx.x * std::int64_t{kThreads} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * kThreads) {
    auto key = Keys<T>::of(acc[i]);
    if ((key & mask) == prefix) atomicAdd(&bins[(key >> shift) & 0xff], 1U);
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < kBins; i += kThreads) {
    if (bins[i] != 0) atomicAdd(&hist[i], static_cast<unsigned long long>(bins[i]));
  }
}

// The sum of every thread's v in the block (all threads call it).
__device__ unsigned block_sum(unsigned v, unsigned* scratch) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffU, v, o);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  unsigned total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Per block of kChunk elements: keys above threshold and keys equal to it.
template <class T>
__global__ void count_kernel(const T* acc, std::int64_t n, typename Keys<T>::Key threshold,
                             long long* above, long long* equal) {
  __shared__ unsigned scratch[kWarps];
  const std::int64_t begin = blockIdx.x * std::int64_t{kChunk};
  unsigned a = 0;
  unsigned e = 0;
  for (int r = 0; r < kRounds; ++r) {
    const std::int64_t i = begin + r * kThreads + threadIdx.x;
    if (i < n) {
      auto key = Keys<T>::of(acc[i]);
      a += key > threshold ? 1 : 0;
      e += key == threshold ? 1 : 0;
    }
  }
  a = block_sum(a, scratch);
  e = block_sum(e, scratch);
  if (threadIdx.x == 0) {
    above[blockIdx.x] = a;
    equal[blockIdx.x] = e;
  }
}

// How many of this round's flagged threads come before this one, and how many there are.
struct Ranked {
  unsigned before;
  unsigned total;
};

__device__ Ranked rank_in_block(bool flag, unsigned* scratch) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>(threadIdx.x / 32);
  const unsigned ballot = __ballot_sync(0xffffffffU, flag);
  if (lane == 0) scratch[warp] = __popc(ballot);
  __syncthreads();
  Ranked r{static_cast<unsigned>(__popc(ballot & ((1U << lane) - 1U))), 0};
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) r.before += scratch[w];
    r.total += scratch[w];
  }
  __syncthreads();
  return r;
}

// Block b writes its taken elements (keys above threshold, and its first budget[b] keys
// equal to it) from output slot offset[b] on, in index order, and zeros them in acc.
template <class T>
__global__ void write_kernel(T* acc, std::int64_t n, typename Keys<T>::Key threshold,
                             const long long* offset, const long long* budget, std::int32_t* index,
                             T* values) {
  __shared__ unsigned scratch[kWarps];
  const std::int64_t begin = blockIdx.x * std::int64_t{kChunk};
  long long out = offset[blockIdx.x];
  long long equal_left = budget[blockIdx.x];
  for (int r = 0; r < kRounds; ++r) {
    const std::int64_t i = begin + r * kThreads + threadIdx.x;
    const bool valid = i < n;
    const T x = valid ? acc[i] : T(0);
    const auto key = Keys<T>::of(x);
    const bool equal = valid && key == threshold;
    const Ranked eq = rank_in_block(equal, scratch);
    const bool take =
        valid && (key > threshold || (equal && static_cast<long long>(eq.before) < equal_left));
    const Ranked sel = rank_in_block(take, scratch);
    if (take) {
      index[out + sel.before] = static_cast<std::int32_t>(i);
      values[out + sel.before] = x;
      acc[i] = T(0);
    }
    out += sel.total;
    equal_left -= static_cast<long long>(eq.total);  // below 0 once spent: no more are taken
  }
}

template <class T>
void take_top_k_as(const Tensor& acc, std::int64_t k, const Tensor& index, const Tensor& values) {
  using Key = typename Keys<T>::Key;
  const std::int64_t n = acc.numel();
  const Device device = acc.device();
  cudaStream_t stream = current_stream(device.index);
  T* data = acc.data<T>();

  // Radix select, most significant digit first: remaining is the rank of the wanted key
  // among the keys that match the digits chosen so far, counted from the largest.
  Key prefix = 0;
  Key mask = 0;
  std::int64_t remaining = k;
  Tensor hist = empty({kBins}, {DType::i64, device});
  for (int shift = static_cast<int>(8 * sizeof(Key)) - 8; shift >= 0; shift -= 8) {
    LN_CUDA_CHECK(cudaMemsetAsync(hist.raw_data(), 0, kBins * sizeof(long long), stream));
    histogram_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        data, n, prefix, mask, shift, static_cast<unsigned long long*>(hist.raw_data()));
    LN_CUDA_CHECK(cudaGetLastError());
    std::vector<std::int64_t> counts = to(hist, Device::cpu()).to_vector<std::int64_t>();
    int digit = kBins - 1;
    for (; digit > 0 && counts[static_cast<std::size_t>(digit)] < remaining; --digit) {
      remaining -= counts[static_cast<std::size_t>(digit)];
    }
    prefix |= static_cast<Key>(digit) << shift;
    mask |= static_cast<Key>(0xff) << shift;
  }
  // Every key above prefix is taken, and the first `remaining` keys equal to it.
  // Per block: keys above prefix (row 0) and equal to it (row 1), read back in one copy.
  const std::int64_t blocks = (n + kChunk - 1) / kChunk;
  Tensor counts = empty({2, blocks}, {DType::i64, device});
  auto* count_data = static_cast<long long*>(counts.raw_data());
  count_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      data, n, prefix, count_data, count_data + blocks);
  LN_CUDA_CHECK(cudaGetLastError());
  std::vector<std::int64_t> host = to(counts, Device::cpu()).to_vector<std::int64_t>();
  const std::int64_t* above = host.data();
  const std::int64_t* equal = above + blocks;
  // Per block: its first output slot (row 0) and how many equal keys it takes (row 1),
  // uploaded in one copy.
  std::vector<std::int64_t> plan(static_cast<std::size_t>(2 * blocks));
  std::int64_t* offset = plan.data();
  std::int64_t* budget = offset + blocks;
  std::int64_t taken = 0;
  std::int64_t equal_left = remaining;
  for (std::int64_t b = 0; b < blocks; ++b) {
    budget[b] = std::min(equal[b], equal_left);
    equal_left -= budget[b];
    offset[b] = taken;
    taken += above[b] + budget[b];
  }
  LN_CHECK(taken == k && equal_left == 0, "take_top_k: selected ", taken, " of ", k, " elements (",
           equal_left, " ties left); the data changed during the selection");
  Tensor plan_dev = from_data(plan, {2, blocks}, device);
  const auto* plan_data = static_cast<const long long*>(plan_dev.raw_data());
  write_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      data, n, prefix, plan_data, plan_data + blocks, index.data<std::int32_t>(), values.data<T>());
  LN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// Arguments checked by longnet::take_top_k (dist/compression.cpp).
void take_top_k(const Tensor& acc, std::int64_t k, const Tensor& index, const Tensor& values) {
  DeviceGuard guard(acc.device().index);
  if (acc.dtype() == DType::f64) {
    take_top_k_as<double>(acc, k, index, values);
  } else {
    take_top_k_as<float>(acc, k, index, values);
  }
}

}  // namespace longnet::cuda
