// Creating tensors: constants, ranges, host data and random draws.
#pragma once

#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace longnet {

Tensor zeros(const Shape& shape, TensorOptions options = {});
Tensor ones(const Shape& shape, TensorOptions options = {});
Tensor full(const Shape& shape, double value, TensorOptions options = {});
// A 0-d tensor holding value.
Tensor scalar(double value, TensorOptions options = {});
// start, start+step, ... < end (step may be negative, not 0).
Tensor arange(double start, double end, double step = 1, TensorOptions options = {});

Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);

// Copies host values (row-major) into a tensor of the given shape on options.device; the
// dtype is T's (options.dtype is ignored). The value count must equal the shape's size.
template <class T>
Tensor from_data(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());

// Standard normal (Box-Muller) and uniform [low, high) draws; floating dtypes only.
Tensor randn(const Shape& shape, Generator& gen, TensorOptions options = {});
Tensor uniform(const Shape& shape, double low, double high, Generator& gen,
               TensorOptions options = {});
// Integers uniform in [low, high); integer dtype (default i64).
Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, Generator& gen,
               TensorOptions options = {DType::i64, Device::cpu()});

}  // namespace longnet
