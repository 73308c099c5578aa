// Indexing ops. Indices are i64 or i32 tensors on the same device; an index outside
// [0, size) is an error that names the value and the valid range.
#pragma once

#include "tensor/tensor.h"

namespace longnet {

// out[..i..] = t[..index[..i..]..] along dim (torch.gather): index has t's number of dims,
// out has index's shape, and index.size(d) <= t.size(d) for d != dim.
Tensor gather(const Tensor& t, std::int64_t dim, const Tensor& index);

// A copy of t with src[..i..] added at t[..index[..i..]..] along dim (torch.scatter_add):
// the inverse of gather; repeated indices accumulate.
Tensor scatter_add(const Tensor& t, std::int64_t dim, const Tensor& index, const Tensor& src);

// Whether index_select and index_add_ check every index against the indexed dim. On a GPU
// the check reads a flag back, so the call waits for its kernel; `trust` skips that for
// indices the caller built in range itself (on a GPU an index out of range is then skipped
// silently; the CPU checks either way).
enum class IndexCheck { check, trust };

// The slices of t at the positions of the 1-d index along dim.
Tensor index_select(const Tensor& t, std::int64_t dim, const Tensor& index,
                    IndexCheck check = IndexCheck::check);

// A copy of t with slice i of src added at slice index[i] along dim: the inverse of
// index_select; repeated indices accumulate.
Tensor index_add(const Tensor& t, std::int64_t dim, const Tensor& index, const Tensor& src);
// The same in place: t (any strides) takes the sums.
void index_add_(const Tensor& t, std::int64_t dim, const Tensor& index, const Tensor& src,
                IndexCheck check = IndexCheck::check);

}  // namespace longnet
