#include <cub/device/device_radix_sort.cuh>

#include <limits>

#include "nn/cuda/embedding.h"
#include "nn/cuda/launch.cuh"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSegmentThreads = 1024;  // columns per pass of segment_sum_kernel
constexpr int kTile = 512;             // positions staged in shared memory at a time
constexpr unsigned long long kNoRow = std::numeric_limits<unsigned long long>::max();

// out[i, j] = weight[index[i], j]; an index out of range writes 0 and records its position
// in *bad (the smallest such i).
template <class T, class I>
__global__ void gather_kernel(const I* index, const T* weight, T* out, std::int64_t n,
                              std::int64_t num, std::int64_t dim, unsigned long long* bad) {
  std::int64_t total = n * dim;
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t i = k / dim;
    std::int64_t j = k - i * dim;
    auto v = static_cast<std::int64_t>(index[i]);
    if (v < 0 || v >= num) {
      if (j == 0) atomicMin(bad, static_cast<unsigned long long>(i));
      out[k] = T(0.0f);
      continue;
    }
    out[k] = weight[v * dim + j];
  }
}

// keys[i] = index[i] (as i32, the sort key), positions[i] = i.
template <class I>
__global__ void keys_kernel(const I* index, std::int32_t* keys, std::int32_t* positions,
                            std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = static_cast<std::int32_t>(index[i]);
    positions[i] = static_cast<std::int32_t>(i);
  }
}

// First k in [0, n) with sorted[k] >= v (n if none).
__device__ std::int64_t lower_bound(const std::int32_t* sorted, std::int64_t n, std::int64_t v) {
  std::int64_t lo = 0;
  std::int64_t hi = n;
  while (lo < hi) {
    std::int64_t mid = (lo + hi) / 2;
    if (sorted[mid] < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One block per table row v, one thread per column: the rows of grad whose index is v, in
// increasing position (the stable sort keeps that order), summed in the cpu's order and
// rounding. A hot row (a frequent token) makes a long serial sum, so positions are staged in
// shared memory and kUnroll loads are issued before their additions.
template <class T>
__global__ void __launch_bounds__(kSegmentThreads)
    segment_sum_kernel(const std::int32_t* sorted_keys, const std::int32_t* sorted_positions,
                       const T* grad, T* dweight, std::int64_t n, std::int64_t num,
                       std::int64_t dim) {
  using C = acc_t<T>;
  constexpr int kUnroll = 16;
  __shared__ std::int32_t tile[kTile];
  for (std::int64_t v = blockIdx.x; v < num; v += gridDim.x) {
    std::int64_t begin = lower_bound(sorted_keys, n, v);
    std::int64_t end = lower_bound(sorted_keys, n, v + 1);
    for (std::int64_t col0 = 0; col0 < dim; col0 += blockDim.x) {
      std::int64_t j = col0 + threadIdx.x;
      bool active = j < dim;
      C acc = 0;
      for (std::int64_t t0 = begin; t0 < end; t0 += kTile) {
        int count = static_cast<int>(end - t0 < kTile ? end - t0 : kTile);
        __syncthreads();  // the previous tile is consumed
        for (int q = static_cast<int>(threadIdx.x); q < count; q += static_cast<int>(blockDim.x)) {
          tile[q] = sorted_positions[t0 + q];
        }
        __syncthreads();
        if (!active) continue;
        int q = 0;
        for (; q + kUnroll <= count; q += kUnroll) {
          C values[kUnroll];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            values[u] = static_cast<C>(grad[static_cast<std::int64_t>(tile[q + u]) * dim + j]);
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) acc = static_cast<C>(static_cast<T>(acc + values[u]));
        }
        for (; q < count; ++q) {
          acc = static_cast<C>(static_cast<T>(
              acc + static_cast<C>(grad[static_cast<std::int64_t>(tile[q]) * dim + j])));
        }
      }
      if (active) dweight[v * dim + j] = static_cast<T>(acc);
    }
  }
}

template <class F>
void dispatch_index(DType dtype, F&& f) {
  if (dtype == DType::i32) {
    f(TypeTag<std::int32_t>{});
  } else {
    f(TypeTag<std::int64_t>{});
  }
}

}  // namespace

void embedding_forward(const Tensor& index, const Tensor& weight, const Tensor& out) {
  std::int64_t n = index.numel();
  std::int64_t num = weight.size(0);
  std::int64_t dim = weight.size(1);
  if (n == 0) return;
  DeviceGuard guard(weight.device().index);
  cudaStream_t stream = stream_for(weight.device());
  Tensor flag = empty({1}, {DType::i64, weight.device()});
  auto* bad = device_ptr<unsigned long long>(flag);
  LN_CUDA_CHECK(cudaMemsetAsync(bad, 0xFF, sizeof(unsigned long long), stream));
  dispatch_device_floating(weight.dtype(), "embedding", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(index.dtype(), [&](auto itag) {
      using I = typename decltype(itag)::type;
      gather_kernel<T, I><<<grid_for(n * dim, kThreads), kThreads, 0, stream>>>(
          device_ptr<const I>(index), device_ptr<const T>(weight), device_ptr<T>(out), n, num, dim,
          bad);
      LN_CUDA_CHECK(cudaGetLastError());
    });
  });
  unsigned long long host = 0;
  LN_CUDA_CHECK(cudaMemcpyAsync(&host, bad, sizeof(host), cudaMemcpyDeviceToHost, stream));
  LN_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host == kNoRow) return;
  std::int64_t value = 0;
  dispatch_index(index.dtype(), [&](auto tag) {
    using I = typename decltype(tag)::type;
    I v{};
    LN_CUDA_CHECK(cudaMemcpyAsync(&v, device_ptr<const I>(index) + host, sizeof(I),
                                  cudaMemcpyDeviceToHost, stream));
    LN_CUDA_CHECK(cudaStreamSynchronize(stream));
    value = v;
  });
  throw Error(cat("embedding: index ", value, " is out of range for a table of ", num,
                  " embeddings (valid: 0 to ", num - 1, ")"));
}

void embedding_backward(const Tensor& index, const Tensor& grad, const Tensor& dweight) {
  std::int64_t n = index.numel();
  std::int64_t num = dweight.size(0);
  std::int64_t dim = dweight.size(1);
  LN_CHECK(n <= std::numeric_limits<std::int32_t>::max() &&
               num <= std::numeric_limits<std::int32_t>::max(),
           "embedding backward on cuda: ", n, " indices into ", num,
           " rows; at most 2^31 - 1 of each are supported");
  if (num == 0 || dim == 0) return;
  DeviceGuard guard(dweight.device().index);
  cudaStream_t stream = stream_for(dweight.device());
  Device device = dweight.device();
  // Sort (index, position) pairs by index: radix sort is stable, so each table row's
  // positions come out increasing. Only the bits a valid index can set are sorted.
  Tensor keys = empty({std::max<std::int64_t>(n, 1)}, {DType::i32, device});
  Tensor positions = empty({std::max<std::int64_t>(n, 1)}, {DType::i32, device});
  Tensor sorted_keys = empty({std::max<std::int64_t>(n, 1)}, {DType::i32, device});
  Tensor sorted_positions = empty({std::max<std::int64_t>(n, 1)}, {DType::i32, device});
  if (n > 0) {
    dispatch_index(index.dtype(), [&](auto tag) {
      using I = typename decltype(tag)::type;
      keys_kernel<I><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          device_ptr<const I>(index), device_ptr<std::int32_t>(keys),
          device_ptr<std::int32_t>(positions), n);
      LN_CUDA_CHECK(cudaGetLastError());
    });
    int bits = 1;
    while (bits < 31 && (std::int64_t{1} << bits) < num) ++bits;
    std::size_t temp_bytes = 0;
    auto sort = [&](void* temp) {
      LN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
          temp, temp_bytes, device_ptr<const std::int32_t>(keys),
          device_ptr<std::int32_t>(sorted_keys), device_ptr<const std::int32_t>(positions),
          device_ptr<std::int32_t>(sorted_positions), static_cast<int>(n), 0, bits, stream));
    };
    sort(nullptr);  // asks for temp_bytes
    Tensor temp = empty({static_cast<std::int64_t>(temp_bytes / 8 + 1)}, {DType::i64, device});
    sort(temp.raw_data());
  }
  dispatch_device_floating(dweight.dtype(), "embedding backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    int threads = static_cast<int>(std::min<std::int64_t>(kSegmentThreads, (dim + 31) / 32 * 32));
    auto blocks = static_cast<unsigned>(std::min<std::int64_t>(num, 1 << 20));
    segment_sum_kernel<T><<<blocks, threads, 0, stream>>>(
        device_ptr<const std::int32_t>(sorted_keys),
        device_ptr<const std::int32_t>(sorted_positions), device_ptr<const T>(grad),
        device_ptr<T>(dweight), n, num, dim);
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace longnet::cuda
