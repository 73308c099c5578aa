// The dropout mask on the GPU: the same Philox4x32-10 words as the cpu's philox4x32
// (tensor/random.cpp), so a Generator state gives the same mask on either device.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace longnet::cuda {

// in and out contiguous, one floating dtype and shape: element i is in[i] * scale when word
// i % 4 of the Philox block with counter first + i / 4 and key seed is >= threshold, else 0.
void dropout_mask(const Tensor& in, std::uint64_t seed, std::uint64_t first,
                  std::uint64_t threshold, double scale, const Tensor& out);

}  // namespace longnet::cuda
