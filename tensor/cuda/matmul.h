// Matrix products on a CUDA device through cuBLAS: f32 in f32 (CUBLAS_COMPUTE_32F, never
// TF32, so results agree with the CPU to 1e-5), bf16 inputs and output with f32
// accumulation, f64 in f64. One cuBLAS handle and one cuBLASLt handle per device, created
// on first use, queued on the device's stream.
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// out = a @ b for a (..., M, K) and b (..., K, N), K > 0, with batch dims that broadcast
// to out's. The last two dims of a and of b are each row-major or column-major (a
// transposed view) with a leading dimension, as tensor/matmul.cpp arranges; cuBLAS reads
// them in place. out is contiguous (batch..., M, N). Validated by tensor/matmul.cpp.
void matmul(const Tensor& a, const Tensor& b, const Tensor& out);

// The products of a linear layer with the bias fused into cuBLASLt's epilogue, which saves
// a pass over the output (forward) and over the output gradient (backward). All operands
// are contiguous, row-major, non-empty, of one dtype, f32 or bf16 (cuBLASLt takes a bias of
// the output's type only), on one device. Sums are in f32 and rounded once. Each returns
// false, writing nothing, where cuBLASLt offers no kernel with the epilogue for the
// operands (say, pointers aligned to less than its kernels read); the caller then does the
// product and the bias apart. Validated by nn/linear.cpp.

// out (rows, n) = a (rows, k) @ w^T + bias for w (n, k): the bias joins the f32 sum.
bool matmul_bias(const Tensor& a, const Tensor& w, const Tensor& bias, const Tensor& out);

// dw (n, k) = g^T @ a for g (rows, n) and a (rows, k), and dbias (n) = g summed over its
// rows, from the same product.
bool matmul_bias_grad(const Tensor& g, const Tensor& a, const Tensor& dw, const Tensor& dbias);

}  // namespace longnet::cuda
