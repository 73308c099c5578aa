// Softmax and log-softmax along one dim on a CUDA device, forward and backward, in f32
// (f64 for f64). Arguments are validated by tensor/softmax.cpp: one dtype, one device,
// one shape, any strides; dim already wrapped. Kernels are queued on the device's stream.
#pragma once

#include "tensor/tensor.h"

namespace longnet::cuda {

// out = softmax(x) or, with log, log_softmax(x) along dim.
void softmax_forward(const Tensor& x, std::int64_t dim, bool log, const Tensor& out);

// dx from y (the forward's output) and dy: y * (dy - sum(dy * y)) for softmax,
// dy - exp(y) * sum(dy) for log_softmax.
void softmax_backward(const Tensor& y, const Tensor& dy, std::int64_t dim, bool log,
                      const Tensor& dx);

}  // namespace longnet::cuda
