// Elementwise ops with numpy broadcasting. Operands of a binary op share one dtype and one
// device; the result is contiguous with the broadcast shape. Comparisons return 0/1 in the
// operands' dtype.
#pragma once

#include "tensor/tensor.h"

namespace longnet {

// neg .. relu take any dtype, the rest floating dtypes only. gelu is the exact (erf) form,
// x * Phi(x); gelu_grad is its derivative.
enum class UnaryOp {
  // clang-format off
  neg, abs, sign, square, relu,
  exp, log, sqrt, rsqrt, reciprocal, tanh, sigmoid, gelu, gelu_grad,
  // clang-format on
};

// add .. ge take any dtype, div and pow floating dtypes only. maximum and minimum propagate
// NaN.
enum class BinaryOp {
  // clang-format off
  add, sub, mul, maximum, minimum,
  eq, lt, le, gt, ge,
  div, pow,
  // clang-format on
};

const char* name(UnaryOp op);
const char* name(BinaryOp op);

Tensor unary(UnaryOp op, const Tensor& x);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
// Writes op(a, b) into out, whose shape must be the broadcast shape. out may be a or b.
void binary_out(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
// cond != 0 ? a : b, broadcasting all three; cond may have any dtype.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// dst += src in place (src broadcasts to dst).
void add_(const Tensor& dst, const Tensor& src);

inline Tensor neg(const Tensor& x) { return unary(UnaryOp::neg, x); }
inline Tensor abs(const Tensor& x) { return unary(UnaryOp::abs, x); }
inline Tensor sign(const Tensor& x) { return unary(UnaryOp::sign, x); }
inline Tensor square(const Tensor& x) { return unary(UnaryOp::square, x); }
inline Tensor relu(const Tensor& x) { return unary(UnaryOp::relu, x); }
inline Tensor exp(const Tensor& x) { return unary(UnaryOp::exp, x); }
inline Tensor log(const Tensor& x) { return unary(UnaryOp::log, x); }
inline Tensor sqrt(const Tensor& x) { return unary(UnaryOp::sqrt, x); }
inline Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::rsqrt, x); }
inline Tensor reciprocal(const Tensor& x) { return unary(UnaryOp::reciprocal, x); }
inline Tensor tanh(const Tensor& x) { return unary(UnaryOp::tanh, x); }
inline Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::sigmoid, x); }
inline Tensor gelu(const Tensor& x) { return unary(UnaryOp::gelu, x); }

inline Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::add, a, b); }
inline Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::sub, a, b); }
inline Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::mul, a, b); }
inline Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::div, a, b); }
inline Tensor pow(const Tensor& a, const Tensor& b) { return binary(BinaryOp::pow, a, b); }
inline Tensor maximum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::maximum, a, b); }
inline Tensor minimum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::minimum, a, b); }

// x + to(u, x.dtype()), the same values as the two ops; on a GPU, where x is f32 and u bf16
// (a residual stream and a layer's update in mixed precision; that conversion is exact), in
// one pass over x and u. x and u floating, of one shape and device.
Tensor add_converted(const Tensor& x, const Tensor& u);

// x op scalar, the scalar taking x's dtype and device.
Tensor add(const Tensor& x, double s);
Tensor mul(const Tensor& x, double s);
Tensor pow(const Tensor& x, double s);
Tensor gt(const Tensor& x, double s);

}  // namespace longnet
