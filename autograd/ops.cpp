#include "autograd/ops.h"

#include <numeric>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"
#include "tensor/softmax.h"
#include "tensor/view.h"

namespace longnet {

using Grads = std::vector<Tensor>;

namespace {

bool needs(const Variable& v) { return v.requires_grad(); }

// The shape, dtype and device of a tensor: what a backward function keeps when it needs no
// values (the graph keeps no data that backward does not use).
struct Meta {
  explicit Meta(const Tensor& t) : shape(t.shape()), options{t.dtype(), t.device()} {}
  Shape shape;
  TensorOptions options;
  Tensor zeros() const { return longnet::zeros(shape, options); }
};

// The gradient of a view: g written into zeros of the source's shape through the same view.
template <class View>
Tensor through_view(const Meta& source, const Tensor& g, View view) {
  Tensor out = source.zeros();
  copy_(view(out), g);
  return out;
}

Tensor like(const Tensor& t, double value) { return scalar(value, {t.dtype(), t.device()}); }

}  // namespace

Variable unary(UnaryOp op, const Variable& x) {
  LN_CHECK(op != UnaryOp::gelu_grad, "gelu_grad is not differentiable");
  const Tensor& xd = x.data();
  Tensor y = unary(op, xd);
  // Each derivative is written with the input or with the output; only that one is kept.
  bool from_output = op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt ||
                     op == UnaryOp::reciprocal || op == UnaryOp::tanh || op == UnaryOp::sigmoid;
  Tensor x_kept = from_output || op == UnaryOp::neg ? Tensor() : xd;
  Tensor y_kept = from_output ? y : Tensor();
  return make_result(y, {x}, name(op), [op, xd = x_kept, y = y_kept](const Tensor& g) -> Grads {
    switch (op) {
      case UnaryOp::neg:
        return {neg(g)};
      case UnaryOp::abs:
        return {mul(g, sign(xd))};
      case UnaryOp::sign:
        return {zeros_like(xd)};
      case UnaryOp::square:
        return {mul(g, mul(xd, 2.0))};
      case UnaryOp::relu:
        return {mul(g, gt(xd, 0.0))};
      case UnaryOp::exp:
        return {mul(g, y)};
      case UnaryOp::log:
        return {div(g, xd)};
      case UnaryOp::sqrt:
        return {div(mul(g, 0.5), y)};
      case UnaryOp::rsqrt:
        return {mul(mul(g, -0.5), mul(y, square(y)))};
      case UnaryOp::reciprocal:
        return {neg(mul(g, square(y)))};
      case UnaryOp::tanh:
        return {mul(g, sub(like(y, 1.0), square(y)))};
      case UnaryOp::sigmoid:
        return {mul(g, mul(y, sub(like(y, 1.0), y)))};
      case UnaryOp::gelu:
        return {mul(g, unary(UnaryOp::gelu_grad, xd))};
      case UnaryOp::gelu_grad:
        break;
    }
    return {Tensor()};
  });
}

Variable binary(BinaryOp op, const Variable& a, const Variable& b) {
  const Tensor& ad = a.data();
  const Tensor& bd = b.data();
  Tensor y = binary(op, ad, bd);
  bool comparison = op >= BinaryOp::eq && op <= BinaryOp::ge;
  if (comparison) return Variable(y);  // piecewise constant: no gradient flows
  bool ga = needs(a);
  bool gb = needs(b);
  // Keep only the values the derivatives read: none for add and sub.
  bool both = op == BinaryOp::pow || op == BinaryOp::maximum || op == BinaryOp::minimum;
  Tensor a_kept = both || (op == BinaryOp::mul && gb) ? ad : Tensor();
  Tensor b_kept = both || (op == BinaryOp::mul && ga) || op == BinaryOp::div ? bd : Tensor();
  Tensor y_kept = (op == BinaryOp::div || op == BinaryOp::pow) && gb ? y : Tensor();
  const Shape& a_shape = ad.shape();
  const Shape& b_shape = bd.shape();
  return make_result(y, {a, b}, name(op),
                     [op, ga, gb, ad = a_kept, bd = b_kept, y = y_kept, a_shape,
                      b_shape](const Tensor& g) -> Grads {
                       Tensor da;
                       Tensor db;
                       switch (op) {
                         case BinaryOp::add:
                           da = g;
                           db = g;
                           break;
                         case BinaryOp::sub:
                           da = g;
                           if (gb) db = neg(g);
                           break;
                         case BinaryOp::mul:
                           if (ga) da = mul(g, bd);
                           if (gb) db = mul(g, ad);
                           break;
                         case BinaryOp::div:
                           if (ga) da = div(g, bd);
                           if (gb) db = neg(div(mul(g, y), bd));
                           break;
                         case BinaryOp::pow:
                           if (ga) da = mul(g, mul(bd, pow(ad, sub(bd, like(bd, 1.0)))));
                           if (gb) db = mul(g, mul(y, log(ad)));
                           break;
                         case BinaryOp::maximum:
                         case BinaryOp::minimum: {
                           // The winner takes the gradient; a tie splits it evenly.
                           BinaryOp wins = op == BinaryOp::maximum ? BinaryOp::gt : BinaryOp::lt;
                           Tensor half = mul(binary(BinaryOp::eq, ad, bd), 0.5);
                           if (ga) da = mul(g, add(binary(wins, ad, bd), half));
                           if (gb) db = mul(g, add(binary(wins, bd, ad), half));
                           break;
                         }
                         default:
                           break;
                       }
                       return {ga && da.defined() ? sum_to(da, a_shape) : Tensor(),
                               gb && db.defined() ? sum_to(db, b_shape) : Tensor()};
                     });
}

Variable add(const Variable& x, double s) {
  return add(x, Variable(scalar(s, {x.dtype(), x.device()})));
}
Variable mul(const Variable& x, double s) {
  return mul(x, Variable(scalar(s, {x.dtype(), x.device()})));
}
Variable pow(const Variable& x, double s) {
  return pow(x, Variable(scalar(s, {x.dtype(), x.device()})));
}

Variable where(const Tensor& cond, const Variable& a, const Variable& b) {
  const Tensor& ad = a.data();
  const Tensor& bd = b.data();
  const Shape& a_shape = ad.shape();
  const Shape& b_shape = bd.shape();
  return make_result(where(cond, ad, bd), {a, b}, "where", [=](const Tensor& g) -> Grads {
    Tensor zero = like(g, 0.0);
    return {sum_to(where(cond, g, zero), a_shape), sum_to(where(cond, zero, g), b_shape)};
  });
}

namespace {

// g of a reduction output, viewed with the reduced dims kept as size 1 and expanded back.
Tensor expand_reduced(const Tensor& g, const Shape& input, const std::vector<std::int64_t>& dims) {
  auto nd = static_cast<std::int64_t>(input.size());
  Shape kept = input;
  for (std::int64_t d = 0; d < nd; ++d) {
    bool reduced = dims.empty();
    for (auto r : dims) reduced = reduced || wrap_dim(r, nd, "sum") == d;
    if (reduced) kept[d] = 1;
  }
  return expand(reshape(g, kept), input);
}

}  // namespace

Variable sum(const Variable& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  const Shape& shape = x.shape();
  return make_result(sum(x.data(), dims, keepdim), {x}, "sum",
                     [=](const Tensor& g) -> Grads { return {expand_reduced(g, shape, dims)}; });
}

Variable mean(const Variable& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  const Shape& shape = x.shape();
  Tensor y = mean(x.data(), dims, keepdim);
  double count =
      static_cast<double>(numel(shape)) / static_cast<double>(std::max<std::int64_t>(y.numel(), 1));
  return make_result(y, {x}, "mean", [=](const Tensor& g) -> Grads {
    return {expand_reduced(mul(g, 1.0 / count), shape, dims)};
  });
}

Variable max(const Variable& x, std::int64_t dim, bool keepdim) {
  const Tensor& xd = x.data();
  auto d = wrap_dim(dim, x.dim(), "max");
  MaxResult r = max(xd, d, true);
  Tensor values = keepdim ? r.values : squeeze(r.values, d);
  Tensor indices = r.indices;
  Meta source(xd);
  return make_result(values, {x}, "max", [=](const Tensor& g) -> Grads {
    Tensor gk = keepdim ? g : unsqueeze(g, d);
    return {scatter_add(source.zeros(), d, indices, contiguous(gk))};
  });
}

Variable matmul(const Variable& a, const Variable& b) {
  const Tensor& ad = a.data();
  const Tensor& bd = b.data();
  bool ga = needs(a);
  bool gb = needs(b);
  // Each gradient reads the other operand: keep what the needed ones read.
  Tensor a_kept = gb ? ad : Tensor();
  Tensor b_kept = ga ? bd : Tensor();
  const Shape& a_shape = ad.shape();
  const Shape& b_shape = bd.shape();
  return make_result(
      matmul(ad, bd), {a, b}, "matmul",
      [ga, gb, ad = a_kept, bd = b_kept, a_shape, b_shape](const Tensor& g) -> Grads {
        return {ga ? sum_to(matmul(g, transpose(bd, -1, -2)), a_shape) : Tensor(),
                gb ? sum_to(matmul(transpose(ad, -1, -2), g), b_shape) : Tensor()};
      });
}

Variable softmax(const Variable& x, std::int64_t dim) {
  Tensor y = softmax(x.data(), dim);
  return make_result(y, {x}, "softmax",
                     [=](const Tensor& g) -> Grads { return {softmax_backward(y, g, dim)}; });
}

Variable log_softmax(const Variable& x, std::int64_t dim) {
  Tensor y = log_softmax(x.data(), dim);
  return make_result(y, {x}, "log_softmax",
                     [=](const Tensor& g) -> Grads { return {log_softmax_backward(y, g, dim)}; });
}

Variable gather(const Variable& x, std::int64_t dim, const Tensor& index) {
  const Tensor& xd = x.data();
  Meta source(xd);
  return make_result(gather(xd, dim, index), {x}, "gather", [=](const Tensor& g) -> Grads {
    return {scatter_add(source.zeros(), dim, index, g)};
  });
}

Variable scatter_add(const Variable& x, std::int64_t dim, const Tensor& index,
                     const Variable& src) {
  const Tensor& sd = src.data();
  bool gs = needs(src);
  Meta source(sd);
  return make_result(scatter_add(x.data(), dim, index, sd), {x, src}, "scatter_add",
                     [=](const Tensor& g) -> Grads {
                       if (!gs) return {g, Tensor()};
                       Tensor picked = gather(g, dim, index);
                       if (picked.shape() == source.shape) return {g, picked};
                       // src larger than index: its other elements were never added.
                       return {g, through_view(source, picked, [&](const Tensor& t) {
                                 Tensor v = t;
                                 for (std::int64_t d = 0; d < v.dim(); ++d) {
                                   v = narrow(v, d, 0, index.shape()[d]);
                                 }
                                 return v;
                               })};
                     });
}

Variable index_select(const Variable& x, std::int64_t dim, const Tensor& index) {
  const Tensor& xd = x.data();
  Meta source(xd);
  return make_result(index_select(xd, dim, index), {x}, "index_select",
                     [=](const Tensor& g) -> Grads {
                       return {index_add(source.zeros(), dim, index, contiguous(g))};
                     });
}

Variable index_add(const Variable& x, std::int64_t dim, const Tensor& index, const Variable& src) {
  return make_result(index_add(x.data(), dim, index, src.data()), {x, src}, "index_add",
                     [=](const Tensor& g) -> Grads {
                       return {g, index_select(g, dim, index)};
                     });
}

Variable concat(const std::vector<Variable>& xs, std::int64_t dim) {
  std::vector<Tensor> data;
  std::vector<std::int64_t> sizes;
  data.reserve(xs.size());
  sizes.reserve(xs.size());
  for (const auto& x : xs) data.push_back(x.data());
  Tensor y = concat(data, dim);
  auto d = wrap_dim(dim, y.dim(), "concat");
  for (const auto& t : data) sizes.push_back(t.shape()[d]);
  return make_result(y, xs, "concat", [=](const Tensor& g) -> Grads { return split(g, sizes, d); });
}

std::vector<Variable> split(const Variable& x, const std::vector<std::int64_t>& sizes,
                            std::int64_t dim) {
  auto d = wrap_dim(dim, x.dim(), "split");
  split(x.data(), sizes, d);  // validates the sizes
  std::vector<Variable> out;
  std::int64_t at = 0;
  for (auto s : sizes) {
    out.push_back(narrow(x, d, at, s));
    at += s;
  }
  return out;
}

Variable reshape(const Variable& x, Shape shape) {
  const Shape& from = x.shape();
  return make_result(reshape(x.data(), std::move(shape)), {x}, "reshape",
                     [=](const Tensor& g) -> Grads { return {reshape(g, from)}; });
}

Variable flatten(const Variable& x) { return reshape(x, {x.numel()}); }

Variable transpose(const Variable& x, std::int64_t dim0, std::int64_t dim1) {
  return make_result(transpose(x.data(), dim0, dim1), {x}, "transpose",
                     [=](const Tensor& g) -> Grads { return {transpose(g, dim0, dim1)}; });
}

Variable permute(const Variable& x, const std::vector<std::int64_t>& dims) {
  Tensor y = permute(x.data(), dims);
  std::vector<std::int64_t> inverse(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i) {
    inverse[wrap_dim(dims[i], x.dim(), "permute")] = static_cast<std::int64_t>(i);
  }
  return make_result(y, {x}, "permute",
                     [=](const Tensor& g) -> Grads { return {permute(g, inverse)}; });
}

Variable slice(const Variable& x, std::int64_t dim, std::int64_t start, std::int64_t end,
               std::int64_t step) {
  const Tensor& xd = x.data();
  Meta source(xd);
  return make_result(slice(xd, dim, start, end, step), {x}, "slice", [=](const Tensor& g) -> Grads {
    return {
        through_view(source, g, [&](const Tensor& t) { return slice(t, dim, start, end, step); })};
  });
}

Variable narrow(const Variable& x, std::int64_t dim, std::int64_t start, std::int64_t length) {
  const Tensor& xd = x.data();
  Meta source(xd);
  return make_result(narrow(xd, dim, start, length), {x}, "narrow", [=](const Tensor& g) -> Grads {
    return {
        through_view(source, g, [&](const Tensor& t) { return narrow(t, dim, start, length); })};
  });
}

Variable expand(const Variable& x, const Shape& shape) {
  const Shape& from = x.shape();
  return make_result(expand(x.data(), shape), {x}, "expand",
                     [=](const Tensor& g) -> Grads { return {sum_to(g, from)}; });
}

Variable unsqueeze(const Variable& x, std::int64_t dim) {
  auto d = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  return make_result(unsqueeze(x.data(), d), {x}, "unsqueeze",
                     [=](const Tensor& g) -> Grads { return {squeeze(g, d)}; });
}

Variable squeeze(const Variable& x, std::int64_t dim) {
  auto d = wrap_dim(dim, x.dim(), "squeeze");
  return make_result(squeeze(x.data(), d), {x}, "squeeze",
                     [=](const Tensor& g) -> Grads { return {unsqueeze(g, d)}; });
}

Variable contiguous(const Variable& x) {
  return make_result(contiguous(x.data()), {x}, "contiguous",
                     [](const Tensor& g) -> Grads { return {g}; });
}

Variable to(const Variable& x, DType dtype) {
  DType from = x.dtype();
  return make_result(to(x.data(), dtype), {x}, "to",
                     [=](const Tensor& g) -> Grads { return {to(g, from)}; });
}

Variable add_converted(const Variable& x, const Variable& u) {
  DType from = u.dtype();
  return make_result(add_converted(x.data(), u.data()), {x, u}, "add_converted",
                     [=](const Tensor& g) -> Grads {
                       return {g, to(g, from)};
                     });
}

}  // namespace longnet
