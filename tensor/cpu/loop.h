// Strided loops for CPU kernels: K operands walked together over one shape, each with its
// own element strides (0 where broadcast). Dims are coalesced first, so a contiguous
// operand set becomes a single flat row; rows are split over OpenMP threads.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "tensor/shape.h"
#include "tensor/tensor.h"

namespace longnet::cpu {

// Below this many elements a loop stays on one thread.
inline constexpr std::int64_t kParallelGrain = 32768;

// Strides of t when broadcast to shape (0 on broadcast dims). t's shape must broadcast.
Strides broadcast_strides(const Tensor& t, const Shape& shape);

template <std::size_t K>
struct Layout {
  Shape shape;
  std::array<Strides, K> strides;
};

// Drops size-1 dims and merges neighbours that are contiguous for every operand.
template <std::size_t K>
Layout<K> coalesce(const Shape& shape, const std::array<Strides, K>& strides) {
  Layout<K> out;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !out.shape.empty();
    for (std::size_t k = 0; k < K && merge; ++k) {
      merge = out.strides[k].back() == strides[k][d] * shape[d];
    }
    if (merge) {
      out.shape.back() *= shape[d];
      for (std::size_t k = 0; k < K; ++k) out.strides[k].back() = strides[k][d];
    } else {
      out.shape.push_back(shape[d]);
      for (std::size_t k = 0; k < K; ++k) out.strides[k].push_back(strides[k][d]);
    }
  }
  return out;
}

// Calls body(offsets, n, steps) once per innermost row: offsets are the element offsets
// of the row's first element in each operand, steps the operands' inner strides.
// cost is the work per element, in units of a simple elementwise op; 0 keeps the loop on
// the calling thread.
template <std::size_t K, class Body>
void for_each_row(const Shape& shape, const std::array<Strides, K>& strides, Body body,
                  std::int64_t cost = 1) {
  std::int64_t total = numel(shape);
  if (total == 0) return;
  Layout<K> layout = coalesce(shape, strides);
  if (layout.shape.empty()) {
    std::array<std::int64_t, K> zero{};
    body(zero, std::int64_t{1}, zero);
    return;
  }
  auto nd = static_cast<std::int64_t>(layout.shape.size());
  std::int64_t n = layout.shape.back();
  std::int64_t rows = total / n;
  // Long rows are cut into chunks so that one flat row still spreads over threads.
  std::int64_t chunk = cost > 0 ? std::min(n, std::max<std::int64_t>(kParallelGrain / cost, 1)) : n;
  std::int64_t chunks_per_row = (n + chunk - 1) / chunk;
  std::int64_t units = rows * chunks_per_row;
  std::array<std::int64_t, K> steps{};
  for (std::size_t k = 0; k < K; ++k) steps[k] = layout.strides[k].back();

#pragma omp parallel for schedule(static) if (cost > 0 && total * cost >= kParallelGrain && \
                                              units > 1)
  for (std::int64_t unit = 0; unit < units; ++unit) {
    std::int64_t row = unit / chunks_per_row;
    std::int64_t start = (unit % chunks_per_row) * chunk;
    std::array<std::int64_t, K> offsets{};
    for (std::size_t k = 0; k < K; ++k) offsets[k] = start * steps[k];
    std::int64_t rest = row;
    for (auto d = nd - 2; d >= 0; --d) {
      std::int64_t i = rest % layout.shape[d];
      rest /= layout.shape[d];
      for (std::size_t k = 0; k < K; ++k) offsets[k] += i * layout.strides[k][d];
    }
    body(offsets, std::min(chunk, n - start), steps);
  }
}

}  // namespace longnet::cpu
