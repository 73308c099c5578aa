// Element conversions in device code (include from .cu files only), bit for bit the ones
// the CPU does in tensor/copy.cpp: through the compute types, bf16 rounded to nearest even
// with NaN kept NaN as in tensor/dtype.h, float to int truncated.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "tensor/dtype.h"

namespace longnet::cuda {

__device__ inline float bf16_to_float(bf16 value) {
  return __uint_as_float(static_cast<std::uint32_t>(value.bits) << 16);
}

__device__ inline bf16 float_to_bf16(float value) {
  std::uint32_t u = __float_as_uint(value);
  bf16 out;
  if (value != value) {
    out.bits = static_cast<std::uint16_t>((u >> 16) | 0x40U);
  } else {
    std::uint32_t rounding = 0x7FFFU + ((u >> 16) & 1U);
    out.bits = static_cast<std::uint16_t>((u + rounding) >> 16);
  }
  return out;
}

// Stored value -> compute type (bf16 -> float; the rest unchanged).
template <class T>
__device__ inline compute_t<T> load_compute(T value) {
  if constexpr (std::is_same_v<T, bf16>) {
    return bf16_to_float(value);
  } else {
    return value;
  }
}

// Compute type -> stored value.
template <class T>
__device__ inline T store_compute(compute_t<T> value) {
  if constexpr (std::is_same_v<T, bf16>) {
    return float_to_bf16(value);
  } else {
    return value;
  }
}

// S -> D as the CPU's convert<D>(S): S's compute type, cast to D's compute type, stored.
template <class D, class S>
__device__ inline D convert(S value) {
  if constexpr (std::is_same_v<D, S>) {
    return value;
  } else {
    return store_compute<D>(static_cast<compute_t<D>>(load_compute(value)));
  }
}

}  // namespace longnet::cuda
