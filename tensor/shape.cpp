#include "tensor/shape.h"

#include <algorithm>
#include <limits>

#include "tensor/error.h"

namespace longnet {

std::int64_t numel(const Shape& shape) {
  for (auto s : shape) {
    if (s == 0) return 0;  // before any product that could overflow
  }
  std::int64_t n = 1;
  for (auto s : shape) {
    LN_CHECK(!__builtin_mul_overflow(n, s, &n), "shape ", str(shape),
             " has more elements than a 64-bit count holds");
  }
  return n;
}

Strides contiguous_strides(const Shape& shape) {
  Strides strides(shape.size());
  std::int64_t step = 1;
  for (auto d = static_cast<std::int64_t>(shape.size()) - 1; d >= 0; --d) {
    strides[d] = step;
    // Saturates: only a shape with a zero-size dim (no element is ever addressed) or one that
    // numel() refuses can get here with a product past 64 bits.
    if (__builtin_mul_overflow(step, std::max<std::int64_t>(shape[d], 1), &step)) {
      step = std::numeric_limits<std::int64_t>::max();
    }
  }
  return strides;
}

std::string str(const Shape& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  std::size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    std::int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LN_CHECK(x == y || x == 1 || y == 1, op, ": shapes ", str(a), " and ", str(b),
             " do not broadcast (dim ", i, ": ", x, " vs ", y, ")");
    out[i] = x == 1 ? y : x;
  }
  return out;
}

std::int64_t wrap_dim(std::int64_t dim, std::int64_t ndim, const char* op) {
  LN_CHECK(dim >= -ndim && dim < ndim, op, ": dim ", dim, " out of range for a tensor with ", ndim,
           " dims (valid: ", -ndim, " to ", ndim - 1, ")");
  return dim < 0 ? dim + ndim : dim;
}

}  // namespace longnet
