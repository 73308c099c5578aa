// Layer normalisation over the last dim, as one fused differentiable op.
#pragma once

#include <optional>

#include "nn/module.h"

namespace longnet {

// For each row r of x (..., D): mean_r and rstd_r = 1 / sqrt(var_r + eps) (biased
// variance about mean_r; the CPU sums in f64, the GPU each thread's elements in f32 and the
// threads' sums in f64), y = (x - mean_r) * rstd_r * weight + bias. weight and bias
// are (D) or undefined (then 1 and 0). One floating dtype for all, except that weight and
// bias may be f32 beside a bf16 x (mixed precision: their gradients are then f32 too); cpu
// or cuda; eps >= 0; y has x's shape and the dtype out (default x's): bf16 beside an f32 x
// is written by the norm itself (mixed precision's cast fused in, its gradient read as
// bf16), any other change of dtype is a cast after it. Backward keeps x, weight, mean_r and
// rstd_r and computes
//   xhat = (x - mean) * rstd,  gy = dy * weight,
//   dx = rstd * (gy - mean_D(gy) - xhat * mean_D(gy * xhat)),
//   dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy),
// the row sums in a fixed order, so results do not depend on the thread count.
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                    double eps = 1e-5, std::optional<DType> out = std::nullopt);

// layer_norm(gelu(x), weight, bias, eps, out), gelu the exact (erf) form. On the GPU one op:
// the kernels apply the GELU as they read x (rounded to x's dtype, as the gelu op stores it)
// and its output is never stored, so the pair costs one read of x forward and its
// gradient comes out through the GELU in the same pass; on the CPU the two ops.
Variable gelu_layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                         double eps = 1e-5, std::optional<DType> out = std::nullopt);

// weight ones, bias zeros (without affine, no parameters); created with options.
class LayerNorm final : public Cloneable<LayerNorm> {
 public:
  explicit LayerNorm(std::int64_t dim, double eps = 1e-5, bool affine = true,
                     TensorOptions options = {});

  // x (..., dim) -> (..., dim) in dtype out (default x's, see layer_norm); another last dim is
  // an error.
  Variable forward(const Variable& x, std::optional<DType> out = std::nullopt) const;
  // forward(gelu(x)) as one op on the GPU (gelu_layer_norm).
  Variable forward_gelu(const Variable& x, std::optional<DType> out = std::nullopt) const;

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
