// Fused cross-entropy on the GPU; nn/loss.cpp validates, walks the row chunks and holds the
// cpu oracle, whose arithmetic these kernels follow.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace longnet::cuda {

// targets (rows) contiguous i64 or i32. Returns how many are not ignore_index; a target
// outside [0, classes) that is not ignore_index is an error naming the first such row and
// its value, as on the cpu. Waits for the device (the count goes to the host).
std::int64_t cross_entropy_count(const Tensor& targets, std::int64_t classes,
                                 std::int64_t ignore_index);

// chunk (n, V) contiguous: rows r0 .. r0 + n - 1 of the logits. Writes lse[r] (f32, f64 for
// f64 logits) and row_loss[r] = lse[r] - logits[r, targets[r]] (f64), both 0 on ignored rows.
void cross_entropy_forward(const Tensor& chunk, const Tensor& targets, std::int64_t r0,
                           std::int64_t ignore_index, const Tensor& lse, const Tensor& row_loss);

// loss (0-d, f32 or f64) = sum of row_loss (f64, summed in one fixed order) / count, 0 when
// count is 0.
void cross_entropy_loss(const Tensor& row_loss, std::int64_t count, const Tensor& loss);

// dx rows r0 .. r0 + n - 1 (dx is (rows, V) contiguous, chunk as above) =
// (exp(logits - lse) - onehot(target)) * dloss / count, 0 on ignored rows and when the scale
// is 0; dloss is the 0-d gradient of the loss, read on the device.
void cross_entropy_backward(const Tensor& chunk, const Tensor& targets, std::int64_t r0,
                            std::int64_t ignore_index, const Tensor& lse, const Tensor& dloss,
                            std::int64_t count, const Tensor& dx);

}  // namespace longnet::cuda
