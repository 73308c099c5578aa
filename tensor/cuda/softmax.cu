// Softmax kernels. A line is the 1-d run of elements along dim; a group of G threads owns
// a line. When dim is the innermost dim (stride 1) a warp, or for long lines a block, shares
// the line so that neighbouring lanes read neighbouring elements; otherwise each thread
// owns a line and neighbouring threads read neighbouring lines. The forward pass keeps a
// running (max, sum of exp(x - max)) per lane, merged across the group, so x is read twice
// (once for the statistics, once to write), not three times.
#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "tensor/cuda/check.h"
#include "tensor/cuda/convert.h"
#include "tensor/cuda/group_reduce.cuh"
#include "tensor/cuda/softmax.h"
#include "tensor/cuda/stream.h"
#include "tensor/cuda/strided.cuh"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;

// Line l of operand k starts at outer.offsets(l)[k] and steps by step[k].
template <int K>
struct Lines {
  StridedIndexer<K> outer;
  std::int64_t step[K];
  std::int64_t count = 0;  // lines
  std::int64_t n = 0;      // elements per line
};

// Softmax statistics of some elements: their max, and the sum of exp(x - max).
template <class C>
struct MaxSum {
  C max;
  C sum;
};

template <class C>
__device__ MaxSum<C> shuffle_xor(MaxSum<C> s, int mask) {
  return {__shfl_xor_sync(kFullWarp, s.max, mask), __shfl_xor_sync(kFullWarp, s.sum, mask)};
}

// NaN is skipped when taking the max, as the CPU's std::max skips it, but a NaN element
// still makes the sum NaN. Elements at -inf add nothing, even when all of them are -inf.
template <class C>
__device__ MaxSum<C> merge(MaxSum<C> a, MaxSum<C> b) {
  C max = std::fmax(a.max, b.max);
  if (max == -std::numeric_limits<C>::infinity()) return {max, C(0)};
  return {max, a.sum * std::exp(a.max - max) + b.sum * std::exp(b.max - max)};
}

// Computation type: f64 for f64, f32 otherwise.
template <class T>
using Math = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <int G, class T, bool kLog>
__global__ void forward_kernel(const T* x, T* out, Lines<2> lines) {
  using C = Math<T>;
  int lane = static_cast<int>(threadIdx.x) % G;
  std::int64_t groups_per_block = blockDim.x / G;
  for (std::int64_t l = blockIdx.x * groups_per_block + threadIdx.x / G; l < lines.count;
       l += gridDim.x * groups_per_block) {
    std::int64_t at[2];
    lines.outer.offsets(l, at);
    const T* in = x + at[1];
    T* o = out + at[0];
    MaxSum<C> s{-std::numeric_limits<C>::infinity(), C(0)};
    for (std::int64_t i = lane; i < lines.n; i += G) {
      s = merge(s, MaxSum<C>{static_cast<C>(load_compute(in[i * lines.step[1]])), C(1)});
    }
    s = group_reduce<G>(s, [](MaxSum<C> a, MaxSum<C> b) { return merge(a, b); });
    // A line of -inf subtracts 0, as on the CPU, so exp(-inf) stays 0.
    C hi = s.max == -std::numeric_limits<C>::infinity() ? C(0) : s.max;
    if constexpr (kLog) {
      // (x - max) - log(total), not x - (max + log(total)): the latter cancels badly.
      C log_total = std::log(s.sum);
      for (std::int64_t i = lane; i < lines.n; i += G) {
        C v = static_cast<C>(load_compute(in[i * lines.step[1]]));
        o[i * lines.step[0]] = store_compute<T>((v - hi) - log_total);
      }
    } else {
      C inv = C(1) / s.sum;
      for (std::int64_t i = lane; i < lines.n; i += G) {
        C v = static_cast<C>(load_compute(in[i * lines.step[1]]));
        o[i * lines.step[0]] = store_compute<T>(std::exp(v - hi) * inv);
      }
    }
  }
}

template <int G, class T, bool kLog>
__global__ void backward_kernel(const T* y, const T* dy, T* dx, Lines<3> lines) {
  using C = Math<T>;
  int lane = static_cast<int>(threadIdx.x) % G;
  std::int64_t groups_per_block = blockDim.x / G;
  for (std::int64_t l = blockIdx.x * groups_per_block + threadIdx.x / G; l < lines.count;
       l += gridDim.x * groups_per_block) {
    std::int64_t at[3];
    lines.outer.offsets(l, at);
    auto yv = [&](std::int64_t i) {
      return static_cast<C>(load_compute(y[at[1] + i * lines.step[1]]));
    };
    auto gv = [&](std::int64_t i) {
      return static_cast<C>(load_compute(dy[at[2] + i * lines.step[2]]));
    };
    C dot = 0;
    for (std::int64_t i = lane; i < lines.n; i += G) dot += kLog ? gv(i) : gv(i) * yv(i);
    dot = group_reduce<G>(dot, [](C a, C b) { return a + b; });
    for (std::int64_t i = lane; i < lines.n; i += G) {
      C g = kLog ? gv(i) - std::exp(yv(i)) * dot : yv(i) * (gv(i) - dot);
      dx[at[0] + i * lines.step[0]] = store_compute<T>(g);
    }
  }
}

// ---- launchers -----------------------------------------------------------------------------

// The lines along dim of operands (all of one shape).
template <int K>
Lines<K> lines_of(const std::array<const Tensor*, K>& operands, std::int64_t dim, const char* op) {
  Shape outer = operands[0]->shape();
  Lines<K> lines;
  lines.n = outer[dim];
  outer[dim] = 1;
  std::array<Strides, K> strides;
  for (int k = 0; k < K; ++k) {
    strides[k] = operands[k]->strides();
    lines.step[k] = operands[k]->strides()[dim];
  }
  lines.outer = make_indexer<K>(outer, strides, op);
  lines.count = numel(outer);
  return lines;
}

// Threads per line: a warp or a block where the line is contiguous in input, else one.
int group_size(const Tensor& input, std::int64_t dim) {
  if (input.strides()[dim] != 1 && input.shape()[dim] != 1) return 1;
  return input.shape()[dim] > 1024 ? kThreads : 32;
}

unsigned blocks_for(std::int64_t lines, int group) {
  std::int64_t per_block = kThreads / group;
  return static_cast<unsigned>(std::min<std::int64_t>((lines + per_block - 1) / per_block, 65536));
}

template <class T, bool kLog>
void forward_typed(const Tensor& x, std::int64_t dim, const Tensor& out) {
  Lines<2> lines = lines_of<2>({&out, &x}, dim, kLog ? "log_softmax" : "softmax");
  int group = group_size(x, dim);
  cudaStream_t stream = current_stream(x.device().index);
  unsigned blocks = blocks_for(lines.count, group);
  const T* in = x.data<T>();
  T* o = out.data<T>();
  switch (group) {
    case 1:
      forward_kernel<1, T, kLog><<<blocks, kThreads, 0, stream>>>(in, o, lines);
      break;
    case 32:
      forward_kernel<32, T, kLog><<<blocks, kThreads, 0, stream>>>(in, o, lines);
      break;
    default:
      forward_kernel<kThreads, T, kLog><<<blocks, kThreads, 0, stream>>>(in, o, lines);
      break;
  }
  LN_CUDA_CHECK(cudaGetLastError());
}

template <class T, bool kLog>
void backward_typed(const Tensor& y, const Tensor& dy, std::int64_t dim, const Tensor& dx) {
  Lines<3> lines =
      lines_of<3>({&dx, &y, &dy}, dim, kLog ? "log_softmax_backward" : "softmax_backward");
  int group = group_size(y, dim);
  cudaStream_t stream = current_stream(y.device().index);
  unsigned blocks = blocks_for(lines.count, group);
  const T* py = y.data<T>();
  const T* pg = dy.data<T>();
  T* o = dx.data<T>();
  switch (group) {
    case 1:
      backward_kernel<1, T, kLog><<<blocks, kThreads, 0, stream>>>(py, pg, o, lines);
      break;
    case 32:
      backward_kernel<32, T, kLog><<<blocks, kThreads, 0, stream>>>(py, pg, o, lines);
      break;
    default:
      backward_kernel<kThreads, T, kLog><<<blocks, kThreads, 0, stream>>>(py, pg, o, lines);
      break;
  }
  LN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void softmax_forward(const Tensor& x, std::int64_t dim, bool log, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard guard(x.device().index);
  dispatch_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (log) {
      forward_typed<T, true>(x, dim, out);
    } else {
      forward_typed<T, false>(x, dim, out);
    }
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, std::int64_t dim, bool log,
                      const Tensor& dx) {
  if (dx.numel() == 0) return;
  DeviceGuard guard(y.device().index);
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (log) {
      backward_typed<T, true>(y, dy, dim, dx);
    } else {
      backward_typed<T, false>(y, dy, dim, dx);
    }
  });
}

}  // namespace longnet::cuda
