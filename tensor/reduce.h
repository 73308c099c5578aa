// Reductions along dims. Floating sums accumulate in f64 on the CPU (f32 for
// f32/bf16 on CUDA, tree-ordered and deterministic), integer sums in i64; the result
// keeps the input's dtype. An empty dims list means every dim.
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace longnet {

Tensor sum(const Tensor& t, const std::vector<std::int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& t, const std::vector<std::int64_t>& dims = {}, bool keepdim = false);

// Largest value along dim and the index of its first occurrence (i64). NaN counts as the
// largest value.
struct MaxResult {
  Tensor values;
  Tensor indices;
};
MaxResult max(const Tensor& t, std::int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& t, std::int64_t dim, bool keepdim = false);

// Sums t down to shape, which must broadcast to t's shape: the gradient of a broadcast.
Tensor sum_to(const Tensor& t, const Shape& shape);

}  // namespace longnet
