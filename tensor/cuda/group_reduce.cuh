// Reductions across a group of G threads that cooperate on one row (include from .cu
// files only). G is 1 (a thread per row), 32 (a warp) or a whole block (64..1024, a
// multiple of 32, equal to blockDim.x). Groups are consecutive threads of a block.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace longnet::cuda {

inline constexpr unsigned kFullWarp = 0xffffffffU;

// Butterfly exchange with the lane `mask` away. Plain values go through the hardware
// shuffle; a struct state provides its own overload next to its definition.
template <class V>
__device__ V shuffle_xor(V value, int mask) {
  return __shfl_xor_sync(kFullWarp, value, mask);
}

// Combines the G values of a group with combine (associative and commutative); every
// lane of the group gets the result. All threads of the group must call it together; for
// G > 32 that is every thread of the block.
template <int G, class V, class Combine>
__device__ V group_reduce(V value, Combine combine) {
  static_assert(G == 1 || G == 32 || (G > 32 && G % 32 == 0 && G <= 1024),
                "a group is a thread, a warp or a whole block");
  if constexpr (G > 1) {
    for (int mask = 16; mask > 0; mask /= 2) value = combine(value, shuffle_xor(value, mask));
  }
  if constexpr (G > 32) {
    __shared__ V partial[G / 32];
    int warp = static_cast<int>(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) partial[warp] = value;
    __syncthreads();
    value = partial[0];
    for (int w = 1; w < G / 32; ++w) value = combine(value, partial[w]);
    // The next call may overwrite partial only after every thread has read it.
    __syncthreads();
  }
  return value;
}

}  // namespace longnet::cuda
