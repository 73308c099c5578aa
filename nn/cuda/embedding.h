// Embedding lookup and its weight gradient on the GPU; nn/embedding.cpp validates and
// allocates.
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// index (n) contiguous i64 or i32, weight (num, dim) contiguous floating, out (n, dim):
// out[i] = weight[index[i]]. An index outside [0, num) is an error naming the first such
// value, as on the cpu; waits for the device to find out.
void embedding_forward(const Tensor& index, const Tensor& weight, const Tensor& out);

// grad (n, dim) contiguous, dweight (num, dim) contiguous, every row written: row v is the
// sum of grad[i] over i with index[i] == v, added in increasing i (rounded to the dtype after
// each addition, as the cpu's index_add), so the result is the same on every run and equals
// the cpu's. Indices must be valid (embedding_forward checked them).
void embedding_backward(const Tensor& index, const Tensor& grad, const Tensor& dweight);

}  // namespace longnet::cuda
