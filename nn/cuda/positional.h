// RoPE / XPOS rotation on the GPU; nn/positional.cpp validates and holds the cpu oracle.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace longnet::cuda {

// x and out (B, N, H, D) contiguous, one floating dtype. For row n at pos = offset + n and
// pair i: angle = pos * theta^(-2i / D), s = exp(exponent_sign * log((2i + 0.4 D) / (1.4 D))
// * pos / scale_base), both in f64 as on the cpu; out = s * R(angle) x per pair, R
// transposed when transpose (the backward pass), applied in f32 (f64 for f64).
void rotary(const Tensor& x, std::int64_t offset, double theta, double exponent_sign,
            double scale_base, bool transpose, const Tensor& out);

}  // namespace longnet::cuda
