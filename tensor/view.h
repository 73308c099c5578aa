// Views: new shape/stride/offset over the same storage, no copy (reshape copies only when
// the layout makes a view impossible).
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace longnet {

// One dim may be -1 (inferred). A view when t's layout allows, else a contiguous copy.
Tensor reshape(const Tensor& t, Shape shape);
Tensor flatten(const Tensor& t);  // to one dim
Tensor transpose(const Tensor& t, std::int64_t dim0, std::int64_t dim1);
Tensor permute(const Tensor& t, const std::vector<std::int64_t>& dims);
// Elements start, start+step, ... < end along dim; start/end clamp like Python slices.
Tensor slice(const Tensor& t, std::int64_t dim, std::int64_t start, std::int64_t end,
             std::int64_t step = 1);
// length elements from start along dim; out of range is an error.
Tensor narrow(const Tensor& t, std::int64_t dim, std::int64_t start, std::int64_t length);
// Broadcast view to shape (size-1 dims and new leading dims get stride 0).
Tensor expand(const Tensor& t, const Shape& shape);
Tensor unsqueeze(const Tensor& t, std::int64_t dim);
Tensor squeeze(const Tensor& t, std::int64_t dim);  // dim must have size 1
// Views of consecutive pieces along dim with the given sizes (they must add up).
std::vector<Tensor> split(const Tensor& t, const std::vector<std::int64_t>& sizes,
                          std::int64_t dim);

}  // namespace longnet
