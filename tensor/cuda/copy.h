// Element-wise copies and fills on one device: casts between every pair of dtypes,
// strided and broadcast (expanded) views. Arguments are validated by tensor/copy.cpp.
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// dst[i] = src[i] converted to dst's dtype exactly as the CPU converts (through the
// compute types; bf16 rounds to nearest even; float to int truncates), for every element
// of dst (any view). src broadcasts to dst's shape. Both on one cuda device; queued.
void copy(const Tensor& dst, const Tensor& src);

// Sets every element of t (any view on a cuda device) to value, converted as on the CPU.
void fill(const Tensor& t, double value);

}  // namespace longnet::cuda
