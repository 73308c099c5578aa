// Reductions on a CUDA device. Arguments are validated by tensor/reduce.cpp. Sums
// accumulate in f32 for f32 and bf16, f64 for f64, i64 for integers, in a tree (not one
// running sum), so they agree with the CPU's f64 sums to f32 rounding. Kernels are queued
// on the device's stream.
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace longnet::cuda {

// out = the sum of t over dims (distinct, in increasing order, every one non-empty). out is
// contiguous and holds t's other dims in order (with or without size-1 kept dims).
void sum(const Tensor& t, const std::vector<std::int64_t>& dims, const Tensor& out);

// values and indices (i64) = the largest element of t along dim (non-empty) and the index
// of its first occurrence; NaN counts as largest. Both contiguous, t's other dims in order.
void max(const Tensor& t, std::int64_t dim, const Tensor& values, const Tensor& indices);

}  // namespace longnet::cuda
