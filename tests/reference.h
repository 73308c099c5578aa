// Naive reference implementations for the op harness: plain loops over multi-indices on
// f64 values, written from the ops' definitions and sharing no code with the engine.
#pragma once

#include <functional>
#include <vector>

#include "tensor/tensor.h"

namespace longnet::ref {

using Index = std::vector<std::int64_t>;

struct Ref {
  Shape shape;
  std::vector<double> v;

  static Ref of(const Tensor& t);
  std::int64_t numel() const { return static_cast<std::int64_t>(v.size()); }
  double at(const Index& i) const;
  // Value at an index of a shape that this Ref broadcasts to (right-aligned).
  double bat(const Index& i) const;
};

Index unravel(std::int64_t flat, const Shape& shape);
std::int64_t ravel(const Index& i, const Shape& shape);

// out[i] = f(i) for every multi-index i of shape.
Ref make(const Shape& shape, const std::function<double(const Index&)>& f);

Shape broadcast(const Shape& a, const Shape& b);
Ref sum(const Ref& x, const std::vector<std::int64_t>& dims, bool keepdim);
Ref max(const Ref& x, std::int64_t dim, bool keepdim);
Ref matmul(const Ref& a, const Ref& b);
Ref softmax(const Ref& x, std::int64_t dim, bool log);

}  // namespace longnet::ref
