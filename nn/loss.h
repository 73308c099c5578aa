// Cross-entropy over a vocabulary, as one fused differentiable op processed in row chunks
// (DESIGN.md section 8).
#pragma once

#include "autograd/variable.h"

namespace longnet {

// logits (..., V) floating, targets (...) i64 or i32 with logits' shape less its last dim,
// both on one device (cpu or cuda). With lse_r = log sum_v exp(logits[r, v]) per row r,
//   loss = sum_{r: targets[r] != ignore_index} (lse_r - logits[r, targets[r]]) / count,
// count being the number of rows not ignored. A target outside [0, V) other than
// ignore_index is an error naming the value and its row; chunk_rows must be positive.
// When every target is ignored (or there are no rows) the loss is 0 and the gradient is 0
// (PyTorch returns NaN there). The loss is 0-d, in logits' dtype (f32 for bf16 logits).
//
// Memory: only lse (one value per row) is kept between forward and backward. Both passes
// walk the rows chunk_rows at a time; backward recomputes softmax per row from lse and
// writes d logits = (softmax - onehot(target)) * dloss / count (0 on ignored rows) straight
// into the gradient. Besides the gradient itself nothing scales with rows x V beyond one
// chunk (a chunk of strided logits is made contiguous).
Variable cross_entropy(const Variable& logits, const Tensor& targets,
                       std::int64_t ignore_index = -100, std::int64_t chunk_rows = 4096);

}  // namespace longnet
