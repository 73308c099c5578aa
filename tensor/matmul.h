// Matrix products through Eigen (multithreaded with OpenMP).
#pragma once

#include "tensor/tensor.h"

namespace longnet {

// a (..., M, K) times b (..., K, N) -> (..., M, N); the leading batch dims broadcast.
// Both operands need at least 2 dims, one floating dtype and one device. Operands whose
// last two dims are row- or column-major (a transpose view, say) are read in place.
Tensor matmul(const Tensor& a, const Tensor& b);

}  // namespace longnet
