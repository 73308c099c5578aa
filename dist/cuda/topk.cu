// Top-k by magnitude on the GPU. A radix select finds the key of the k-th largest element,
// 8 bits a pass: a 256-bin histogram of the next digit of the keys that match the digits
// chosen so far, from which a one-block kernel chooses the next digit. Then a count pass (per
// block of kChunk elements: keys above that key and keys equal to it), a one-block scan that
// gives each block its first output slot and how many equal keys it takes, and a write pass
// take every element above the key and the first `remaining` elements equal to it, in index
// order, so the output is the CPU's exactly: ascending indices, ties to the lower index. The
// selection's state stays on the device: the host only launches, and never waits.
#include <cuda_runtime.h>

#include <cstdint>

#include "dist/cuda/topk.h"
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

constexpr int kPlanThreads = 1024;  // the one block of plan_kernel
constexpr int kPlanWarps = kPlanThreads / 32;

// The radix select's state: the digits chosen so far (prefix, under mask) and the rank of the
// wanted key among the keys that match them, counted from the largest. After the last pass,
// prefix is the wanted key and remaining how many keys equal to it are taken.
struct Select {
  unsigned long long prefix;
  unsigned long long mask;
  long long remaining;
};

// Zeros the histogram and starts the selection of the k-th largest key (kBins threads).
__global__ void start_kernel(unsigned long long* hist, Select* select, long long k) {
  hist[threadIdx.x] = 0;
  if (threadIdx.x == 0) *select = {0, 0, k};
}

// hist[d] += how many keys with (key & mask) == prefix have digit d at shift.
template <class T>
__global__ void histogram_kernel(const T* acc, std::int64_t n, const Select* select, int shift,
                                 unsigned long long* hist) {
  using Key = typename Keys<T>::Key;
  const auto prefix = static_cast<Key>(select->prefix);
  const auto mask = static_cast<Key>(select->mask);
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

// Chooses the digit at shift: the largest whose keys, with those of every larger digit,
// reach the wanted rank (0 if none does); the rank becomes one among that digit's keys. Zeros
// the histogram for the next pass. kBins threads; one walks the bins in shared memory.
__global__ void digit_kernel(unsigned long long* hist, Select* select, int shift) {
  __shared__ unsigned long long bins[kBins];
  bins[threadIdx.x] = hist[threadIdx.x];
  hist[threadIdx.x] = 0;
  __syncthreads();
  if (threadIdx.x != 0) return;
  long long remaining = select->remaining;
  int digit = kBins - 1;
  for (; digit > 0 && static_cast<long long>(bins[digit]) < remaining; --digit) {
    remaining -= static_cast<long long>(bins[digit]);
  }
  select->prefix |= static_cast<unsigned long long>(digit) << shift;
  select->mask |= 0xffULL << shift;
  select->remaining = remaining;
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

// Per block of kChunk elements: keys above the selected key and keys equal to it.
template <class T>
__global__ void count_kernel(const T* acc, std::int64_t n, const Select* select, long long* above,
                             long long* equal) {
  const auto threshold = static_cast<typename Keys<T>::Key>(select->prefix);
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

// The sum of v over the block's threads before this one (kPlanThreads threads, all call it);
// total gets the sum over all of them.
__device__ long long exclusive_scan(long long v, long long* warp_sums, long long* total) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>(threadIdx.x / 32);
  long long x = v;
  for (int o = 1; o < 32; o *= 2) {
    const long long y = __shfl_up_sync(0xffffffffU, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  long long before = 0;
  long long all = 0;
  for (int w = 0; w < kPlanWarps; ++w) {
    if (w < warp) before += warp_sums[w];
    all += warp_sums[w];
  }
  __syncthreads();
  *total = all;
  return before + x - v;
}

// Per block of the write pass: the first output slot (offset) and how many keys equal to the
// selected one it takes (budget): the equal keys are taken in index order until `remaining`
// are, so block b takes min(equal[b], max(0, remaining - equal keys before it)).
__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(const long long* above, const long long* equal, std::int64_t blocks,
                const Select* select, long long* offset, long long* budget) {
  __shared__ long long warp_sums[kPlanWarps];
  const long long remaining = select->remaining;
  long long equal_before = 0;
  long long taken_before = 0;
  for (std::int64_t base = 0; base < blocks; base += kPlanThreads) {
    const std::int64_t b = base + threadIdx.x;
    const long long a = b < blocks ? above[b] : 0;
    const long long e = b < blocks ? equal[b] : 0;
    long long equal_total = 0;
    const long long equal_here = equal_before + exclusive_scan(e, warp_sums, &equal_total);
    const long long give = min(e, max(0LL, remaining - equal_here));
    long long taken_total = 0;
    const long long slot = taken_before + exclusive_scan(a + give, warp_sums, &taken_total);
    if (b < blocks) {
      offset[b] = slot;
      budget[b] = give;
    }
    equal_before += equal_total;
    taken_before += taken_total;
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

// Block b writes its taken elements (keys above the selected key, and its first budget[b]
// keys equal to it) from output slot offset[b] on, in index order, and zeros them in acc.
template <class T>
__global__ void write_kernel(T* acc, std::int64_t n, const Select* select, const long long* offset,
                             const long long* budget, std::int32_t* index, T* values) {
  const auto threshold = static_cast<typename Keys<T>::Key>(select->prefix);
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
  cudaStream_t stream = current_stream(acc.device().index);
  T* data = acc.data<T>();
  const std::int64_t blocks = (n + kChunk - 1) / kChunk;
  // One scratch buffer of 8-byte words: the histogram, the selection's state, and per block
  // of the write pass its counts (above, equal) and plan (offset, budget).
  static_assert(sizeof(Select) % sizeof(long long) == 0);
  constexpr std::int64_t kSelectWords = sizeof(Select) / sizeof(long long);
  Tensor scratch = empty({kBins + kSelectWords + 4 * blocks}, {DType::i64, acc.device()});
  auto* words = static_cast<long long*>(scratch.raw_data());
  auto* hist = reinterpret_cast<unsigned long long*>(words);
  auto* select = reinterpret_cast<Select*>(words + kBins);
  long long* above = words + kBins + kSelectWords;
  long long* equal = above + blocks;
  long long* offset = equal + blocks;
  long long* budget = offset + blocks;

  start_kernel<<<1, kBins, 0, stream>>>(hist, select, k);
  LN_CUDA_CHECK(cudaGetLastError());
  // Most significant digit first.
  for (int shift = static_cast<int>(8 * sizeof(Key)) - 8; shift >= 0; shift -= 8) {
    histogram_kernel<T>
        <<<grid_for(n, kThreads), kThreads, 0, stream>>>(data, n, select, shift, hist);
    LN_CUDA_CHECK(cudaGetLastError());
    digit_kernel<<<1, kBins, 0, stream>>>(hist, select, shift);
    LN_CUDA_CHECK(cudaGetLastError());
  }
  const auto grid = static_cast<unsigned>(blocks);
  count_kernel<T><<<grid, kThreads, 0, stream>>>(data, n, select, above, equal);
  LN_CUDA_CHECK(cudaGetLastError());
  plan_kernel<<<1, kPlanThreads, 0, stream>>>(above, equal, blocks, select, offset, budget);
  LN_CUDA_CHECK(cudaGetLastError());
  write_kernel<T><<<grid, kThreads, 0, stream>>>(data, n, select, offset, budget,
                                                 index.data<std::int32_t>(), values.data<T>());
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
