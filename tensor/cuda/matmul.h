// Matrix products on a CUDA device through cuBLAS: f32 in f32 (CUBLAS_COMPUTE_32F, never
// TF32, so results agree with the CPU to 1e-5), bf16 inputs and output with f32
// accumulation, f64 in f64. One cuBLAS handle per device, created on first use, queued on
// the device's stream.
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// out = a @ b for a (..., M, K) and b (..., K, N), K > 0, with batch dims that broadcast
// to out's. The last two dims of a and of b are each row-major or column-major (a
// transposed view) with a leading dimension, as tensor/matmul.cpp arranges; cuBLAS reads
// them in place. out is contiguous (batch..., M, N). Validated by tensor/matmul.cpp.
void matmul(const Tensor& a, const Tensor& b, const Tensor& out);

}  // namespace longnet::cuda
