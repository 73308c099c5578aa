// Fused LayerNorm on the GPU; nn/layer_norm.cpp validates, allocates and holds the CPU
// oracle. One warp per row. The statistics are the cpu's two passes, each lane's few elements
// summed in f32 (f64 for f64 x) and the lanes' sums in f64, stored as f32 (f64 for f64 x).
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// The dtype LayerNorm keeps weight and bias (and their gradients) in beside x: that of the
// weight, else of the bias, else x's. The CPU (nn/layer_norm.cpp) and the GPU kernels agree
// on it through this one rule.
inline DType layer_norm_affine_dtype(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (weight.defined()) return weight.dtype();
  return bias.defined() ? bias.dtype() : x.dtype();
}

// x (..., D) contiguous, floating; weight and bias (D) contiguous or undefined. Writes y
// (x's shape; x's dtype, or bf16 beside f32 x) and the per-row mean and rstd (rows =
// numel / D).
// With gelu_first the rows normalised are gelu(x), each rounded to x's dtype (never stored).
void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        bool gelu_first, const Tensor& y, const Tensor& mean, const Tensor& rstd);

// g (y's dtype) and x (..., D) contiguous, mean and rstd from the forward pass. Writes
// whichever of dx (x's shape), dweight and dbias (D) are defined; with gelu_first (as in the
// forward) dx is the gradient of x through the GELU. The row sums of dweight and dbias are
// taken over blocks of consecutive rows in row order (at least 32 rows, at most 256 blocks;
// in f32, f64 for f64 x), then over the blocks in f64 in a fixed order: the same bits on
// every run.
void layer_norm_backward(const Tensor& g, const Tensor& x, bool gelu_first, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                         const Tensor& dweight, const Tensor& dbias);

}  // namespace longnet::cuda
