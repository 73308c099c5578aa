// Top-k selection by magnitude on the GPU, for top-k gradient compression
// (dist/compression.h, take_top_k): the same elements, in the same order, as the CPU.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace longnet::cuda {

// longnet::take_top_k on a GPU (its checks done): acc contiguous 1-d f32 or f64 on a CUDA
// device, at most INT_MAX elements; 1 <= k <= numel. Writes the indices (i32, ascending) of the k
// elements of largest magnitude (NaN counts as the largest; ties: the lower index) to index and
// their values to values (both [k] on acc's device), and zeros them in acc.
void take_top_k(const Tensor& acc, std::int64_t k, const Tensor& index, const Tensor& values);

}  // namespace longnet::cuda
