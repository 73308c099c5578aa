// What the nn and optimizer kernels share to launch (include from .cu files only): the
// device element type of each floating dtype, a dtype dispatch that hands kernels those
// types, the stream of a device and a deterministic warp sum. Device guard, stream and grid
// sizes come from tensor/cuda/stream.h.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "tensor/cuda/check.h"
#include "tensor/cuda/stream.h"
#include "tensor/tensor.h"

namespace longnet::cuda {

// Device type of a host element type: longnet::bf16 has __nv_bfloat16's layout, and both
// convert from float by rounding to nearest even, so values agree bit for bit.
template <class T>
struct device_type {
  using type = T;
};
template <>
struct device_type<bf16> {
  using type = __nv_bfloat16;
};

// Arithmetic type of an element type: f64 for f64, f32 otherwise (as compute_t on the cpu).
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Calls f(TypeTag<T>{}) with T the device type of a floating dtype; others are an error.
template <class F>
decltype(auto) dispatch_device_floating(DType dtype, const char* op, F&& f) {
  return dispatch_floating(dtype, op, [&](auto tag) {
    using T = typename device_type<typename decltype(tag)::type>::type;
    return f(TypeTag<T>{});
  });
}

// Typed device pointer to element [0, ...] of t.
template <class T>
T* device_ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// The stream the kernels of an op on device run on.
inline cudaStream_t stream_for(Device device) { return current_stream(device.index); }

// Sum of a double over a warp (every lane gets it); the butterfly order is fixed, so the
// result is the same on every run.
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffU, v, o);
  return v;
}

}  // namespace longnet::cuda
