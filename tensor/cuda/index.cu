// Indexing kernels: a thread per index element finds its place in the dense operand (out of
// gather, src of scatter_add) and in the indexed one, whose stride along dim is applied to
// the index value. Bad indices are skipped and reported through a two-word flag in device
// memory (set, value) that the launcher reads back.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/convert.h"
#include "tensor/cuda/index.h"
#include "tensor/cuda/stream.h"
#include "tensor/cuda/strided.cuh"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;

// Records v as the offending index unless one is recorded already (or nobody checks: no
// flag).
__device__ void report(unsigned long long* flag, std::int64_t v) {
  if (flag != nullptr && atomicCAS(flag, 0ULL, 1ULL) == 0ULL) {
    flag[1] = static_cast<unsigned long long>(v);
  }
}

template <class T>
__device__ void atomic_add(T* slot, T value) {
  if constexpr (std::is_same_v<T, std::int64_t>) {
    // Two's complement: unsigned addition is signed addition.
    atomicAdd(reinterpret_cast<unsigned long long*>(slot), static_cast<unsigned long long>(value));
  } else {
    atomicAdd(slot, value);  // float, double, int
  }
}

// Operands of layout: 0 the dense one, 1 the indexed one (stride 0 along dim), 2 the index.
template <class T, class I>
__global__ void gather_kernel(const T* t, const I* index, T* out, StridedIndexer<3> layout,
                              std::int64_t n, std::int64_t size, std::int64_t stride,
                              unsigned long long* flag) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t at[3];
    layout.offsets(i, at);
    auto v = static_cast<std::int64_t>(index[at[2]]);
    if (v < 0 || v >= size) {
      report(flag, v);
      continue;
    }
    out[at[0]] = t[at[1] + v * stride];
  }
}

// Acc is T, or f32 for bf16.
template <class T, class Acc, class I>
__global__ void scatter_add_kernel(const T* src, const I* index, Acc* out, StridedIndexer<3> layout,
                                   std::int64_t n, std::int64_t size, std::int64_t stride,
                                   unsigned long long* flag) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t at[3];
    layout.offsets(i, at);
    auto v = static_cast<std::int64_t>(index[at[2]]);
    if (v < 0 || v >= size) {
      report(flag, v);
      continue;
    }
    atomic_add(out + at[1] + v * stride, static_cast<Acc>(load_compute(src[at[0]])));
  }
}

// Runs launch(layout, n, size, stride, flag) over index's shape, with dense's strides and
// indexed's (dim's zeroed), and with check returns the offending index value, if any.
template <class Launch>
std::optional<std::int64_t> run_indexed(const Tensor& dense, const Tensor& indexed,
                                        std::int64_t dim, const Tensor& index, const char* op,
                                        bool check, Launch launch) {
  std::int64_t n = index.numel();
  if (n == 0) return std::nullopt;
  Device device = indexed.device();
  DeviceGuard guard(device.index);
  Strides indexed_strides = indexed.strides();
  indexed_strides[dim] = 0;
  auto layout =
      make_indexer<3>(index.shape(), {dense.strides(), indexed_strides, index.strides()}, op);
  Tensor flag = check ? zeros({2}, {DType::i64, device}) : Tensor();
  launch(layout, n, indexed.shape()[dim], indexed.strides()[dim],
         check ? reinterpret_cast<unsigned long long*>(flag.data<std::int64_t>()) : nullptr,
         current_stream(device.index));
  LN_CUDA_CHECK(cudaGetLastError());
  if (!check) return std::nullopt;
  // Reading the flag back waits for the kernel.
  auto found = flag.to_vector<std::int64_t>();
  if (found[0] != 0) return found[1];
  return std::nullopt;
}

// Calls f(TypeTag<T>, TypeTag<I>) with the element type and the index type.
template <class F>
void dispatch_with_index(DType dtype, DType index_dtype, F f) {
  dispatch(dtype, [&](auto tag) {
    if (index_dtype == DType::i32) {
      f(tag, TypeTag<std::int32_t>{});
    } else {
      f(tag, TypeTag<std::int64_t>{});
    }
  });
}

}  // namespace

std::optional<std::int64_t> gather(const Tensor& t, std::int64_t dim, const Tensor& index,
                                   const Tensor& out, bool check) {
  std::optional<std::int64_t> bad;
  dispatch_with_index(t.dtype(), index.dtype(), [&](auto tag, auto itag) {
    using T = typename decltype(tag)::type;
    using I = typename decltype(itag)::type;
    bad = run_indexed(out, t, dim, index, "gather", check,
                      [&](const StridedIndexer<3>& layout, std::int64_t n, std::int64_t size,
                          std::int64_t stride, unsigned long long* flag, cudaStream_t stream) {
                        gather_kernel<T, I><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
                            t.data<T>(), index.data<I>(), out.data<T>(), layout, n, size, stride,
                            flag);
                      });
  });
  return bad;
}

std::optional<std::int64_t> scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index,
                                        const Tensor& src, bool check) {
  // bf16 accumulates in f32 and rounds once at the end: bf16 atomics would round after
  // every addition, and a slot that many indices hit would drift.
  Tensor acc = out.dtype() == DType::bf16 ? to(out, DType::f32) : out;
  std::optional<std::int64_t> bad;
  dispatch_with_index(out.dtype(), index.dtype(), [&](auto tag, auto itag) {
    using T = typename decltype(tag)::type;
    using Acc = std::conditional_t<std::is_same_v<T, bf16>, float, T>;
    using I = typename decltype(itag)::type;
    bad = run_indexed(
        src, acc, dim, index, "scatter_add", check,
        [&](const StridedIndexer<3>& layout, std::int64_t n, std::int64_t size, std::int64_t stride,
            unsigned long long* flag, cudaStream_t stream) {
          scatter_add_kernel<T, Acc, I><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
              src.data<T>(), index.data<I>(), acc.data<Acc>(), layout, n, size, stride, flag);
        });
  });
  if (acc.dtype() != out.dtype()) copy_(out, acc);
  return bad;
}

}  // namespace longnet::cuda
