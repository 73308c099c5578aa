// The optimizer's GPU kernels: the fused AdamW update and the pieces of clip_grad_norm.
// train/optim.cpp validates, holds the cpu versions (the oracle) and calls these for
// parameters on a CUDA device.
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace longnet {

// The per-step scalars of the update, as PyTorch's _single_tensor_adamw computes them.
struct AdamWStep {
  double beta1;
  double beta2;
  double step_size;              // lr / (1 - beta1^t)
  double bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  double eps;
};

namespace cuda {

// One parameter of the update: p, g (one floating dtype) and the moments m, v (f32; f64
// for f64 p), all contiguous with p's shape; decay is 1 - lr * weight_decay, or 1.
struct AdamWTensors {
  Tensor p, g, m, v;
  double decay;
};

// The update of every parameter (one device, one dtype), fused: one launch for up to a few
// dozen tensors, blocks spread over all their elements. In the cpu's order, per element,
// in m's type: m = m * beta1 + (1 - beta1) * g; v = v * beta2 + (1 - beta2) * g * g;
// p = p * decay - step_size * (m / (sqrt(v) / bc2_sqrt + eps)).
void adamw_update(const std::vector<AdamWTensors>& params, const AdamWStep& step);

// sums[slot] (a contiguous f64 tensor on g's device) = the sum of g's squares in f64 (g
// contiguous floating), reduced in an order fixed by g's size: the same on every run.
void sum_of_squares(const Tensor& g, const Tensor& sums, std::int64_t slot);

// g *= coef in g's arithmetic type (f32 for bf16 and f32; g contiguous).
void scale_(const Tensor& g, double coef);

}  // namespace cuda
}  // namespace longnet
