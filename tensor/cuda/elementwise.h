// Elementwise ops on a CUDA device. Arguments are validated by tensor/elementwise.cpp:
// operands share one dtype (cond of where may have any) and one device, out has the
// broadcast shape and any strides. Kernels are queued on the device's stream.
#pragma once

#include "tensor/elementwise.h"
#include "tensor/tensor.h"

namespace longnet::cuda {

// out = op(x); x has out's shape.
void unary(UnaryOp op, const Tensor& x, const Tensor& out);

// out = op(a, b), a and b broadcasting to out's shape. out may be a or b.
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);

// out = x + u converted to x's dtype, all three of one shape, where one kernel takes them
// (x and out f32, u bf16, contiguous and 16-byte aligned); returns whether it ran (the
// caller converts and adds otherwise).
bool add_converted(const Tensor& x, const Tensor& u, const Tensor& out);

// out = cond != 0 ? a : b, all three broadcasting to out's shape.
void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);

}  // namespace longnet::cuda
