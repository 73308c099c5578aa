// Element offsets of strided operands inside kernels (include from .cu files only): K
// operands walked together over one shape, each with its own element strides (0 where
// broadcast), as the CPU's cpu::for_each_row walks them. The host coalesces the layout
// first (tensor/cpu/loop.h: the layout code there is device-neutral), so contiguous
// operand sets become one flat dim and a kernel divides only by the sizes that remain.
#pragma once

#include <array>
#include <cstdint>
#include <limits>

#include "tensor/cpu/loop.h"
#include "tensor/error.h"

namespace longnet::cuda {

// Dims left after coalescing; more would need a tensor whose every dim breaks contiguity.
inline constexpr int kMaxDims = 8;

template <int K>
struct StridedIndexer {
  int ndim = 0;
  // Whether positions fit 32 bits: 32-bit division is several times cheaper than 64-bit,
  // and a kernel spends most of its index arithmetic there.
  bool narrow = false;
  std::int64_t sizes[kMaxDims] = {};
  std::int64_t strides[K][kMaxDims] = {};

  // The element offsets, one per operand, of the element at row-major position i.
  __device__ void offsets(std::int64_t i, std::int64_t (&out)[K]) const {
    for (int k = 0; k < K; ++k) out[k] = 0;
    for (int d = ndim - 1; d > 0; --d) {
      std::int64_t at = 0;
      if (narrow) {
        auto size = static_cast<std::uint32_t>(sizes[d]);
        auto rest = static_cast<std::uint32_t>(i);
        at = rest % size;
        i = rest / size;
      } else {
        at = i % sizes[d];
        i /= sizes[d];
      }
      for (int k = 0; k < K; ++k) out[k] += at * strides[k][d];
    }
    // The outermost dim needs no division: what is left of i is its index.
    if (ndim > 0) {
      for (int k = 0; k < K; ++k) out[k] += i * strides[k][0];
    }
  }

  // The offset of the first operand alone.
  __device__ std::int64_t offset(std::int64_t i) const {
    static_assert(K == 1, "offset() is for one operand; use offsets()");
    std::int64_t out[1];
    offsets(i, out);
    return out[0];
  }
};

// The indexer of shape with the operands' strides, coalesced; op names the caller in the
// error for a layout with more than kMaxDims dims that cannot merge.
template <int K>
StridedIndexer<K> make_indexer(const Shape& shape, const std::array<Strides, K>& strides,
                               const char* op) {
  cpu::Layout<K> layout = cpu::coalesce<K>(shape, strides);
  auto ndim = static_cast<int>(layout.shape.size());
  LN_CHECK(ndim <= kMaxDims, op, ": the strided layout of shape ", str(shape), " has ", ndim,
           " dims that cannot be merged; CUDA kernels take at most ", kMaxDims,
           " (make the operands contiguous first)");
  StridedIndexer<K> out;
  out.ndim = ndim;
  out.narrow = numel(shape) <= std::int64_t{std::numeric_limits<std::uint32_t>::max()};
  for (int d = 0; d < ndim; ++d) {
    out.sizes[d] = layout.shape[d];
    for (int k = 0; k < K; ++k) out.strides[k][d] = layout.strides[k][d];
  }
  return out;
}

}  // namespace longnet::cuda
