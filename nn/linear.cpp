#include "nn/linear.h"

#include "autograd/ops.h"
#include "nn/init.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/matmul.h"
#include "tensor/elementwise.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"
#include "tensor/view.h"

namespace longnet {

namespace {

// The one rule for the fused node: x on a CUDA device, f32 or bf16, a bias, and a
// non-empty product. Everything else (the CPU, f64, no bias, no rows) composes matmul and
// add. Inside the node each product takes its bias epilogue where cuBLASLt has a kernel for
// the operands, and otherwise (operands aligned to less than its kernels read) runs plain,
// with the bias added, or its gradient summed, apart: the composition's arithmetic.
bool fuses(const Variable& x, const Variable& weight, const Variable& bias) {
  DType dtype = x.dtype();
  return x.device().is_cuda() && (dtype == DType::f32 || dtype == DType::bf16) && bias.defined() &&
         x.numel() > 0 && weight.numel() > 0;
}

// y = x W^T + b as one node, with the bias added in the forward product's epilogue and its
// gradient summed in the epilogue of the weight gradient's product: dx = dy W,
// dW = dy^T x, db = sum_rows(dy).
Variable linear_fused(const Variable& x, const Variable& weight, const Variable& bias,
                      std::int64_t rows, const Shape& out_shape) {
  std::int64_t in = weight.size(1);
  std::int64_t out = weight.size(0);
  Device device = x.device();
  Tensor xc = contiguous(reshape(x.data(), {rows, in}));
  Tensor wc = contiguous(weight.data());
  Tensor bc = contiguous(bias.data());
  Tensor y = empty({rows, out}, {x.dtype(), device});
  if (!cuda::matmul_bias(xc, wc, bc, y)) y = add(matmul(xc, transpose(wc, 0, 1)), bc);

  bool need_x = x.requires_grad();
  bool need_w = weight.requires_grad();
  bool need_b = bias.requires_grad();
  // dx reads the weight, dW reads x; keep only what the needed gradients read.
  Tensor x_kept = need_w ? xc : Tensor();
  Tensor w_kept = need_x ? wc : Tensor();
  const Shape& x_shape = x.shape();
  auto backward = [=](const Tensor& g) -> std::vector<Tensor> {
    Tensor gc = contiguous(reshape(g, {rows, out}));
    Tensor dx = need_x ? reshape(matmul(gc, w_kept), x_shape) : Tensor();
    Tensor dw;
    Tensor db;
    if (need_w) {
      dw = empty({out, in}, {gc.dtype(), device});
      db = empty({out}, {gc.dtype(), device});
      if (!cuda::matmul_bias_grad(gc, x_kept, dw, db)) {
        dw = matmul(transpose(gc, 0, 1), x_kept);
        db = Tensor();
      }
    }
    if (need_b && !db.defined()) db = sum(gc, {0});
    return {dx, dw, need_b ? db : Tensor()};
  };
  return make_result(reshape(y, out_shape), {x, weight, bias}, "linear", backward);
}

}  // namespace

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  LN_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1), "linear: input ",
           describe(x.data()), " needs a last dim equal to in of weight ", describe(weight.data()),
           " [out, in]");
  std::int64_t in = weight.size(1);
  std::int64_t out = weight.size(0);
  LN_CHECK(!bias.defined() || bias.shape() == Shape{out}, "linear: bias ", describe(bias.data()),
           " must have shape [", out, "] for weight ", describe(weight.data()));
  // The fused node skips the checks of matmul and add: make them here.
  for (const Variable* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    check_same_dtype(x.data(), p->data(), "linear");
    check_same_device(x.data(), p->data(), "linear");
  }
  Shape out_shape = x.shape();
  out_shape.back() = out;
  std::int64_t rows = numel(x.shape()) / std::max<std::int64_t>(in, 1);
  if (fuses(x, weight, bias)) return linear_fused(x, weight, bias, rows, out_shape);
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
    // gradients come back through the cast as f32. (cuBLASLt adds a bias of the output's
    // type only, so the bias is rounded too.)
    return linear(x, to(weight_, DType::bf16),
                  bias_.defined() ? to(bias_, DType::bf16) : Variable());
  }
  return linear(x, weight_, bias_);
}

}  // namespace longnet
