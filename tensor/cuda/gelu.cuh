// The exact (erf) GELU and its derivative in device code, for the elementwise ops and the
// kernels that fuse GELU (LayerNorm of a GELU): one formula, the CPU's (tensor/elementwise.cpp).
#pragma once

#include <cmath>

namespace longnet::cuda {

// x * Phi(x), no tanh approximation.
template <class C>
__device__ __forceinline__ C gelu(C x) {
  constexpr C kInvSqrt2 = C(0.70710678118654752440);
  return C(0.5) * x * (C(1) + std::erf(x * kInvSqrt2));
}

// d gelu / dx = Phi(x) + x * phi(x).
template <class C>
__device__ __forceinline__ C gelu_grad(C x) {
  constexpr C kInvSqrt2 = C(0.70710678118654752440);
  constexpr C kInvSqrt2Pi = C(0.39894228040143267794);
  return C(0.5) * (C(1) + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(C(-0.5) * x * x);
}

}  // namespace longnet::cuda
