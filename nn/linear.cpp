#include "nn/linear.h"

#include "autograd/ops.h"
#include "nn/init.h"
#include "tensor/creation.h"

namespace longnet {

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  LN_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1), "linear: input ",
           describe(x.data()), " needs a last dim equal to in of weight ", describe(weight.data()),
           " [out, in]");
  std::int64_t in = weight.size(1);
  std::int64_t out = weight.size(0);
  LN_CHECK(!bias.defined() || bias.shape() == Shape{out}, "linear: bias ", describe(bias.data()),
           " must have shape [", out, "] for weight ", describe(weight.data()));
  Shape out_shape = x.shape();
  out_shape.back() = out;
  std::int64_t rows = numel(x.shape()) / std::max<std::int64_t>(in, 1);
  // One (rows, in) x (in, out) product; the transposed weight is read in place.
  Variable y = matmul(reshape(x, {rows, in}), transpose(weight, 0, 1));
  if (bias.defined()) y = y + bias;
  return reshape(y, out_shape);
}

Linear::Linear(std::int64_t in_features, std::int64_t out_features, Generator& gen, bool bias,
               TensorOptions options) {
  LN_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got in ",
           in_features, ", out ", out_features);
  register_parameter("weight", &Linear::weight_, empty({out_features, in_features}, options));
  xavier_normal_(weight_, 1.0, gen);
  if (bias) register_parameter("bias", &Linear::bias_, zeros({out_features}, options));
}

Variable Linear::forward(const Variable& x) const {
  LN_CHECK(x.dim() >= 1 && x.size(-1) == in_features(), "Linear(", in_features(), " -> ",
           out_features(), "): input ", describe(x.data()), " needs last dim ", in_features());
  if (x.dtype() == DType::bf16 && weight_.dtype() == DType::f32) {
    // Mixed precision: the f32 parameters are rounded to bf16 for this product; their
    // gradients come back through the cast as f32.
    return linear(x, to(weight_, DType::bf16),
                  bias_.defined() ? to(bias_, DType::bf16) : Variable());
  }
  return linear(x, weight_, bias_);
}

}  // namespace longnet
