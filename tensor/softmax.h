// Softmax and log-softmax along one dim, numerically stable (max subtracted), with their
// backward passes written from the output.
#pragma once

#include "tensor/tensor.h"

namespace longnet {

Tensor softmax(const Tensor& x, std::int64_t dim);
Tensor log_softmax(const Tensor& x, std::int64_t dim);

// Given y = softmax(x) and dy: dx = y * (dy - sum(dy * y)).
Tensor softmax_backward(const Tensor& y, const Tensor& dy, std::int64_t dim);
// Given y = log_softmax(x) and dy: dx = dy - exp(y) * sum(dy).
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy, std::int64_t dim);

}  // namespace longnet
