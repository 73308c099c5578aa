// Fused LayerNorm on the GPU; nn/layer_norm.cpp validates, allocates and holds the CPU
// oracle, whose arithmetic these kernels follow (statistics in f64, stored as f32, or f64
// for f64 x).
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// x (..., D) contiguous, floating; weight and bias (D) contiguous or undefined. Writes y
// (x's shape and dtype) and the per-row mean and rstd (rows = numel / D).
void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        const Tensor& y, const Tensor& mean, const Tensor& rstd);

// g and x (..., D) contiguous, mean and rstd from the forward pass. Writes whichever of dx
// (x's shape), dweight and dbias (D) are defined. The row sums of dweight and dbias are
// taken in f64 over row_blocks consecutive blocks of ceil(rows / row_blocks) rows, each
// summed in row order, then over the blocks in block order: the cpu's order.
void layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& rstd, std::int64_t row_blocks, const Tensor& dx,
                         const Tensor& dweight, const Tensor& dbias);

}  // namespace longnet::cuda
