// Linear: y = x W^T + b over the last dim.
#pragma once

#include "nn/module.h"
#include "tensor/random.h"

namespace longnet {

// x (..., in) with weight (out, in) and bias (out) or undefined -> (..., out); one floating
// dtype and one device. The leading dims are flattened into the rows of a single matrix
// product. On a GPU, f32 and bf16 with a bias run as one node: the product adds the bias to
// its f32 sums before rounding (cuBLASLt's epilogue), and the weight gradient's product
// sums the bias gradient too. Elsewhere the product is rounded, then the bias added.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = {});

// weight (out, in) as in PyTorch, initialised Xavier-normal with gain 1; bias (out),
// zeros. Parameters are created with options (f32 on the cpu by default).
class Linear final : public Cloneable<Linear> {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, Generator& gen, bool bias = true,
         TensorOptions options = {});

  // x (..., in_features) -> (..., out_features); another last dim is an error. A bf16 x with
  // f32 parameters (mixed precision) multiplies by the parameters rounded to bf16; their
  // gradients come back f32.
  Variable forward(const Variable& x) const;

  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }  // undefined without bias
  std::int64_t in_features() const { return weight_.size(1); }
  std::int64_t out_features() const { return weight_.size(0); }

 private:
  Variable weight_;
  Variable bias_;
};

}  // namespace longnet
