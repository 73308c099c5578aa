// Shapes and strides: element counts and element strides, row-major.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace longnet {

using Shape = std::vector<std::int64_t>;
using Strides = std::vector<std::int64_t>;

// Element count; a count beyond int64 is an error.
std::int64_t numel(const Shape& shape);
Strides contiguous_strides(const Shape& shape);
std::string str(const Shape& shape);  // "[2, 3]"

// Numpy broadcasting; an error shows both shapes and names op.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Maps a possibly negative dim into [0, ndim); an error names op and the valid range.
std::int64_t wrap_dim(std::int64_t dim, std::int64_t ndim, const char* op);

}  // namespace longnet
