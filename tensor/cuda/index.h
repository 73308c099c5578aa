// Indexing kernels on a CUDA device. Arguments are validated by tensor/index.cpp (shapes,
// dtypes, devices; dim wrapped); index is i64 or i32 with any strides (an expanded view
// serves index_select and index_add). With `check`, a call checks every index against
// [0, size) and so waits for its kernel: it returns an offending value, if any, for the
// caller's error. Without, it only skips such an index and returns at once.
#pragma once

#include <optional>

#include "tensor/tensor.h"

namespace longnet::cuda {

// out[p] = t[p with its dim coordinate replaced by index[p]] for every position p of
// index's shape; out has index's shape and any strides.
std::optional<std::int64_t> gather(const Tensor& t, std::int64_t dim, const Tensor& index,
                                   const Tensor& out, bool check = true);

// out[p with its dim coordinate replaced by index[p]] += src[p] for every position p of
// index's shape. Repeated positions accumulate through atomics, so the order of the
// additions (and the last bits of a floating sum) may vary from run to run; bf16 adds up in
// f32 and rounds once (the CPU rounds after each addition).
std::optional<std::int64_t> scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index,
                                        const Tensor& src, bool check = true);

}  // namespace longnet::cuda
