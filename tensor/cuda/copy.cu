// Element-wise copies, casts and fills on the device. Strided operands are walked the way
// the CPU loops walk them (tensor/cpu/loop.h): broadcast dims get stride 0, then dims that
// are contiguous for every operand are merged, so most copies become one flat row.
#include <limits>

#include "tensor/cpu/loop.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/convert.h"
#include "tensor/cuda/copy.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxDims = 12;

// K operands over one shape, passed to kernels by value.
template <int K>
struct StridedLayout {
  int nd = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[K][kMaxDims] = {};
};

// Element offsets of linear (row-major) index i in each operand.
template <int K, class Index>
__device__ inline void offsets_of(Index i, const StridedLayout<K>& layout, std::int64_t* out) {
  for (int k = 0; k < K; ++k) out[k] = 0;
  for (int d = layout.nd - 1; d >= 0; --d) {
    auto size = static_cast<Index>(layout.shape[d]);
    Index at = i % size;
    i /= size;
    for (int k = 0; k < K; ++k) out[k] += static_cast<std::int64_t>(at) * layout.strides[k][d];
  }
}

template <class D, class S>
__global__ void cast_kernel(D* dst, const S* src, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = convert<D>(src[i]);
  }
}

// Index is 32-bit when the element count allows: the divisions dominate strided copies.
template <class D, class S, class Index>
__global__ void strided_copy_kernel(D* dst, const S* src, StridedLayout<2> layout, Index n) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    std::int64_t off[2];
    offsets_of<2>(i, layout, off);
    dst[off[0]] = convert<D>(src[off[1]]);
  }
}

template <class T>
__global__ void fill_kernel(T* dst, T value, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = value;
  }
}

template <class T, class Index>
__global__ void strided_fill_kernel(T* dst, T value, StridedLayout<1> layout, Index n) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    std::int64_t off[1];
    offsets_of<1>(i, layout, off);
    dst[off[0]] = value;
  }
}

template <std::size_t K>
StridedLayout<K> make_layout(const Shape& shape, const std::array<Strides, K>& strides,
                             const Tensor& t) {
  cpu::Layout<K> merged = cpu::coalesce<K>(shape, strides);
  LN_CHECK(static_cast<int>(merged.shape.size()) <= kMaxDims, "copy on ", describe(t), ": ",
           merged.shape.size(), " non-mergeable dims; the GPU copy handles at most ", kMaxDims);
  StridedLayout<K> layout;
  layout.nd = static_cast<int>(merged.shape.size());
  for (int d = 0; d < layout.nd; ++d) {
    layout.shape[d] = merged.shape[d];
    for (std::size_t k = 0; k < K; ++k) layout.strides[k][d] = merged.strides[k][d];
  }
  return layout;
}

bool fits_32_bits(std::int64_t n) { return n <= std::numeric_limits<std::uint32_t>::max() / 2; }

// The CPU's conversion of a fill value, done on the host.
template <class T>
T fill_value(double value) {
  return static_cast<T>(static_cast<compute_t<T>>(value));
}

}  // namespace

void copy(const Tensor& dst, const Tensor& src) {
  std::int64_t n = dst.numel();
  if (n == 0) return;
  int device = dst.device().index;
  Strides src_strides = cpu::broadcast_strides(src, dst.shape());
  StridedLayout<2> layout = make_layout<2>(dst.shape(), {dst.strides(), src_strides}, dst);
  bool flat =
      layout.nd == 0 || (layout.nd == 1 && layout.strides[0][0] == 1 && layout.strides[1][0] == 1);
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  if (flat && dst.dtype() == src.dtype()) {
    LN_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(),
                                  static_cast<std::size_t>(n) * element_size(dst.dtype()),
                                  cudaMemcpyDeviceToDevice, stream));
    return;
  }
  dispatch(dst.dtype(), [&](auto dtag) {
    using D = typename decltype(dtag)::type;
    dispatch(src.dtype(), [&](auto stag) {
      using S = typename decltype(stag)::type;
      auto* out = static_cast<D*>(dst.raw_data());
      const auto* in = static_cast<const S*>(src.raw_data());
      if (flat) {
        cast_kernel<D, S><<<grid_for(n, kThreads), kThreads, 0, stream>>>(out, in, n);
      } else if (fits_32_bits(n)) {
        strided_copy_kernel<D, S, std::uint32_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            out, in, layout, static_cast<std::uint32_t>(n));
      } else {
        strided_copy_kernel<D, S, std::uint64_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            out, in, layout, static_cast<std::uint64_t>(n));
      }
    });
  });
  LN_CUDA_CHECK(cudaGetLastError());
}

void fill(const Tensor& t, double value) {
  std::int64_t n = t.numel();
  if (n == 0) return;
  if (t.is_contiguous()) return fill(t.raw_data(), t.dtype(), value, n, t.device().index);
  StridedLayout<1> layout = make_layout<1>(t.shape(), {t.strides()}, t);
  int device = t.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* out = static_cast<T*>(t.raw_data());
    if (fits_32_bits(n)) {
      strided_fill_kernel<T, std::uint32_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          out, fill_value<T>(value), layout, static_cast<std::uint32_t>(n));
    } else {
      strided_fill_kernel<T, std::uint64_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          out, fill_value<T>(value), layout, static_cast<std::uint64_t>(n));
    }
  });
  LN_CUDA_CHECK(cudaGetLastError());
}

void fill(void* dst, DType dtype, double value, std::int64_t n, int device) {
  if (n == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<T*>(dst),
                                                                   fill_value<T>(value), n);
  });
  LN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace longnet::cuda
