// Layer normalisation over the last dim, as one fused differentiable op.
#pragma once

#include "nn/module.h"

namespace longnet {

// For each row r of x (..., D): mean_r and rstd_r = 1 / sqrt(var_r + eps) (biased
// variance, accumulated in f64), y = (x - mean_r) * rstd_r * weight + bias. weight and bias
// are (D) or undefined (then 1 and 0). One floating dtype for all, except that weight and
// bias may be f32 beside a bf16 x (mixed precision: their gradients are then f32 too); cpu
// or cuda; eps >= 0; y has x's shape and dtype. Backward keeps x, weight, mean_r and
// rstd_r and computes
//   xhat = (x - mean) * rstd,  gy = dy * weight,
//   dx = rstd * (gy - mean_D(gy) - xhat * mean_D(gy * xhat)),
//   dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy),
// the row sums in a fixed order, so results do not depend on the thread count.
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                    double eps = 1e-5);

// weight ones, bias zeros (without affine, no parameters); created with options.
class LayerNorm final : public Cloneable<LayerNorm> {
 public:
  explicit LayerNorm(std::int64_t dim, double eps = 1e-5, bool affine = true,
                     TensorOptions options = {});

  // x (..., dim) -> (..., dim); another last dim is an error.
  Variable forward(const Variable& x) const;

  const Variable& weight() const { return weight_; }  // undefined without affine
  const Variable& bias() const { return bias_; }
  std::int64_t dim() const { return dim_; }
  double eps() const { return eps_; }

 private:
  std::int64_t dim_;
  double eps_;
  Variable weight_;
  Variable bias_;
};

}  // namespace longnet
