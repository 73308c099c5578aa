// Copies, casts and device moves.
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace longnet {

// Writes src into dst element by element: src broadcasts to dst's shape and is converted
// to dst's dtype. dst may be any view, on any device: between devices the elements move as
// they are and are cast and broadcast on dst's device.
void copy_(const Tensor& dst, const Tensor& src);

// Sets every element of t (any view) to value.
void fill_(const Tensor& t, double value);

// A contiguous tensor with t's values: t itself when already contiguous.
Tensor contiguous(const Tensor& t);

// A contiguous copy that shares nothing with t.
Tensor clone(const Tensor& t);

// Cast to dtype (t itself when it already has that dtype). Float to int truncates.
Tensor to(const Tensor& t, DType dtype);

// Copy to device (t itself when already there).
Tensor to(const Tensor& t, Device device);

// Joins tensors along dim; all other dims, dtype and device must agree.
Tensor concat(const std::vector<Tensor>& tensors, std::int64_t dim);

}  // namespace longnet
