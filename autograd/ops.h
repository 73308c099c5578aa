// Differentiable ops on Variables: the tensor ops of tensor/ with their backward passes.
// Shapes, dtypes and errors are those of the tensor op of the same name.
#pragma once

#include <vector>

#include "autograd/variable.h"
#include "tensor/elementwise.h"

namespace longnet {

Variable unary(UnaryOp op, const Variable& x);                       // every UnaryOp but gelu_grad
Variable binary(BinaryOp op, const Variable& a, const Variable& b);  // add..minimum, div, pow

inline Variable neg(const Variable& x) { return unary(UnaryOp::neg, x); }
inline Variable abs(const Variable& x) { return unary(UnaryOp::abs, x); }
inline Variable square(const Variable& x) { return unary(UnaryOp::square, x); }
inline Variable relu(const Variable& x) { return unary(UnaryOp::relu, x); }
inline Variable exp(const Variable& x) { return unary(UnaryOp::exp, x); }
inline Variable log(const Variable& x) { return unary(UnaryOp::log, x); }
inline Variable sqrt(const Variable& x) { return unary(UnaryOp::sqrt, x); }
inline Variable rsqrt(const Variable& x) { return unary(UnaryOp::rsqrt, x); }
inline Variable reciprocal(const Variable& x) { return unary(UnaryOp::reciprocal, x); }
inline Variable tanh(const Variable& x) { return unary(UnaryOp::tanh, x); }
inline Variable sigmoid(const Variable& x) { return unary(UnaryOp::sigmoid, x); }
inline Variable gelu(const Variable& x) { return unary(UnaryOp::gelu, x); }

inline Variable add(const Variable& a, const Variable& b) { return binary(BinaryOp::add, a, b); }
inline Variable sub(const Variable& a, const Variable& b) { return binary(BinaryOp::sub, a, b); }
inline Variable mul(const Variable& a, const Variable& b) { return binary(BinaryOp::mul, a, b); }
inline Variable div(const Variable& a, const Variable& b) { return binary(BinaryOp::div, a, b); }
inline Variable pow(const Variable& a, const Variable& b) { return binary(BinaryOp::pow, a, b); }
inline Variable maximum(const Variable& a, const Variable& b) {
  return binary(BinaryOp::maximum, a, b);
}
inline Variable minimum(const Variable& a, const Variable& b) {
  return binary(BinaryOp::minimum, a, b);
}
Variable add(const Variable& x, double s);
Variable mul(const Variable& x, double s);
Variable pow(const Variable& x, double s);

inline Variable operator+(const Variable& a, const Variable& b) { return add(a, b); }
inline Variable operator-(const Variable& a, const Variable& b) { return sub(a, b); }
inline Variable operator*(const Variable& a, const Variable& b) { return mul(a, b); }
inline Variable operator/(const Variable& a, const Variable& b) { return div(a, b); }
inline Variable operator-(const Variable& x) { return neg(x); }

// cond != 0 ? a : b; cond is not differentiated.
Variable where(const Tensor& cond, const Variable& a, const Variable& b);

Variable sum(const Variable& x, const std::vector<std::int64_t>& dims = {}, bool keepdim = false);
Variable mean(const Variable& x, const std::vector<std::int64_t>& dims = {}, bool keepdim = false);
// The values of max along dim; the gradient goes to the first maximal element.
Variable max(const Variable& x, std::int64_t dim, bool keepdim = false);

Variable matmul(const Variable& a, const Variable& b);
Variable softmax(const Variable& x, std::int64_t dim);
Variable log_softmax(const Variable& x, std::int64_t dim);

Variable gather(const Variable& x, std::int64_t dim, const Tensor& index);
Variable scatter_add(const Variable& x, std::int64_t dim, const Tensor& index, const Variable& src);
Variable index_select(const Variable& x, std::int64_t dim, const Tensor& index);
Variable index_add(const Variable& x, std::int64_t dim, const Tensor& index, const Variable& src);

Variable concat(const std::vector<Variable>& xs, std::int64_t dim);
std::vector<Variable> split(const Variable& x, const std::vector<std::int64_t>& sizes,
                            std::int64_t dim);

Variable reshape(const Variable& x, Shape shape);
Variable flatten(const Variable& x);
Variable transpose(const Variable& x, std::int64_t dim0, std::int64_t dim1);
Variable permute(const Variable& x, const std::vector<std::int64_t>& dims);
Variable slice(const Variable& x, std::int64_t dim, std::int64_t start, std::int64_t end,
               std::int64_t step = 1);
Variable narrow(const Variable& x, std::int64_t dim, std::int64_t start, std::int64_t length);
Variable expand(const Variable& x, const Shape& shape);
Variable unsqueeze(const Variable& x, std::int64_t dim);
Variable squeeze(const Variable& x, std::int64_t dim);
Variable contiguous(const Variable& x);
Variable to(const Variable& x, DType dtype);
// x + to(u, x.dtype()) as one op (see the tensor add_converted); u's gradient is x's in u's
// dtype.
Variable add_converted(const Variable& x, const Variable& u);

}  // namespace longnet
