// Random draws on the device, bit for bit the CPU's (tensor/creation.cpp): element i of
// out takes word i % 4 of Philox counter first + i / 4 under key seed, turned into a value
// by tensor/distributions.h in f64 and then converted to out's dtype as the CPU converts.
// out is contiguous on a cuda device; the launch is queued on its stream.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace longnet::cuda {

void draw_normal(const Tensor& out, std::uint64_t seed, std::uint64_t first);
void draw_uniform(const Tensor& out, double low, double high, std::uint64_t seed,
                  std::uint64_t first);
// Integers in [low, low + range), range <= 2^32.
void draw_integers(const Tensor& out, std::int64_t low, std::uint64_t range, std::uint64_t seed,
                   std::uint64_t first);

}  // namespace longnet::cuda
