#include "tensor/elementwise.h"

#include <cmath>
#include <numbers>

#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/creation.h"
#include "tensor/cuda/elementwise.h"

namespace longnet {

namespace {

bool integer_ok(UnaryOp op) { return op <= UnaryOp::relu; }
bool integer_ok(BinaryOp op) { return op < BinaryOp::div; }

template <class C>
C apply(UnaryOp op, C x) {
  switch (op) {
    case UnaryOp::neg:
      return -x;
    case UnaryOp::abs:
      return x < C(0) ? -x : x;
    case UnaryOp::sign:
      return static_cast<C>((C(0) < x) - (x < C(0)));
    case UnaryOp::square:
      return x * x;
    case UnaryOp::relu:
      return x < C(0) ? C(0) : x;  // NaN passes through
    default:
      break;
  }
  if constexpr (std::is_floating_point_v<C>) {
    constexpr C kInvSqrt2 = C(1) / std::numbers::sqrt2_v<C>;
    constexpr C kInvSqrt2Pi = std::numbers::inv_sqrtpi_v<C> * kInvSqrt2;
    switch (op) {
      case UnaryOp::exp:
        return std::exp(x);
      case UnaryOp::log:
        return std::log(x);
      case UnaryOp::sqrt:
        return std::sqrt(x);
      case UnaryOp::rsqrt:
        return C(1) / std::sqrt(x);
      case UnaryOp::reciprocal:
        return C(1) / x;
      case UnaryOp::tanh:
        return std::tanh(x);
      case UnaryOp::sigmoid: {
        // Split by sign so exp never overflows.
        if (x >= C(0)) return C(1) / (C(1) + std::exp(-x));
        C e = std::exp(x);
        return e / (C(1) + e);
      }
      case UnaryOp::gelu:
        return C(0.5) * x * (C(1) + std::erf(x * kInvSqrt2));
      case UnaryOp::gelu_grad:
        return C(0.5) * (C(1) + std::erf(x * kInvSqrt2)) +
               x * kInvSqrt2Pi * std::exp(C(-0.5) * x * x);
      default:
        break;
    }
  }
  return x;
}

template <class C>
C apply(BinaryOp op, C a, C b) {
  switch (op) {
    case BinaryOp::add:
      return a + b;
    case BinaryOp::sub:
      return a - b;
    case BinaryOp::mul:
      return a * b;
    case BinaryOp::maximum:
      if constexpr (std::is_floating_point_v<C>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return a < b ? b : a;
    case BinaryOp::minimum:
      if constexpr (std::is_floating_point_v<C>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return b < a ? b : a;
    case BinaryOp::eq:
      return static_cast<C>(a == b);
    case BinaryOp::lt:
      return static_cast<C>(a < b);
    case BinaryOp::le:
      return static_cast<C>(a <= b);
    case BinaryOp::gt:
      return static_cast<C>(a > b);
    case BinaryOp::ge:
      return static_cast<C>(a >= b);
    case BinaryOp::div:
      return a / b;
    case BinaryOp::pow:
      if constexpr (std::is_floating_point_v<C>) return std::pow(a, b);
      break;
  }
  return a;
}

// The op is a template parameter so the switch in apply() folds away inside the loops.
template <class T, UnaryOp Op>
void unary_kernel(const Tensor& x, const Tensor& out) {
  using C = compute_t<T>;
  const T* in = x.data<T>();
  T* o = out.data<T>();
  cpu::for_each_row<2>(
      out.shape(), {out.strides(), x.strides()}, [&](auto off, std::int64_t n, auto step) {
        T* po = o + off[0];
        const T* px = in + off[1];
        if (step[0] == 1 && step[1] == 1) {
          for (std::int64_t i = 0; i < n; ++i) {
            po[i] = static_cast<T>(apply<C>(Op, static_cast<C>(px[i])));
          }
        } else {
          for (std::int64_t i = 0; i < n; ++i) {
            po[i * step[0]] = static_cast<T>(apply<C>(Op, static_cast<C>(px[i * step[1]])));
          }
        }
      });
}

template <class T, BinaryOp Op>
void binary_kernel(const Tensor& a, const Tensor& b, const Tensor& out) {
  using C = compute_t<T>;
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* o = out.data<T>();
  Strides sa = cpu::broadcast_strides(a, out.shape());
  Strides sb = cpu::broadcast_strides(b, out.shape());
  cpu::for_each_row<3>(
      out.shape(), {out.strides(), sa, sb}, [&](auto off, std::int64_t n, auto step) {
        T* po = o + off[0];
        const T* x = pa + off[1];
        const T* y = pb + off[2];
        if (step[0] == 1 && step[1] == 1 && step[2] == 1) {
          for (std::int64_t i = 0; i < n; ++i) {
            po[i] = static_cast<T>(apply<C>(Op, static_cast<C>(x[i]), static_cast<C>(y[i])));
          }
        } else if (step[0] == 1 && step[1] == 1 && step[2] == 0) {
          auto yv = static_cast<C>(y[0]);
          for (std::int64_t i = 0; i < n; ++i) {
            po[i] = static_cast<T>(apply<C>(Op, static_cast<C>(x[i]), yv));
          }
        } else {
          for (std::int64_t i = 0; i < n; ++i) {
            po[i * step[0]] = static_cast<T>(
                apply<C>(Op, static_cast<C>(x[i * step[1]]), static_cast<C>(y[i * step[2]])));
          }
        }
      });
}

template <class T, std::size_t... I>
void run_unary(UnaryOp op, const Tensor& x, const Tensor& out, std::index_sequence<I...>) {
  ((op == static_cast<UnaryOp>(I) ? unary_kernel<T, static_cast<UnaryOp>(I)>(x, out) : void()),
   ...);
}

template <class T, std::size_t... I>
void run_binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                std::index_sequence<I...>) {
  ((op == static_cast<BinaryOp>(I) ? binary_kernel<T, static_cast<BinaryOp>(I)>(a, b, out)
                                   : void()),
   ...);
}

constexpr std::size_t kUnaryOps = static_cast<std::size_t>(UnaryOp::gelu_grad) + 1;
constexpr std::size_t kBinaryOps = static_cast<std::size_t>(BinaryOp::pow) + 1;

}  // namespace

const char* name(UnaryOp op) {
  static constexpr const char* kNames[] = {"neg",  "abs",     "sign", "square",   "relu",
                                           "exp",  "log",     "sqrt", "rsqrt",    "reciprocal",
                                           "tanh", "sigmoid", "gelu", "gelu_grad"};
  return kNames[static_cast<int>(op)];
}

const char* name(BinaryOp op) {
  static constexpr const char* kNames[] = {"add", "sub", "mul", "maximum", "minimum", "eq",
                                           "lt",  "le",  "gt",  "ge",      "div",     "pow"};
  return kNames[static_cast<int>(op)];
}

Tensor unary(UnaryOp op, const Tensor& x) {
  check_defined(x, name(op));
  LN_CHECK(integer_ok(op) || is_floating(x.dtype()), name(op), ": needs a floating dtype, got ",
           describe(x));
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  if (x.device().is_cuda()) {
    cuda::unary(op, x, out);
    return out;
  }
  dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    run_unary<T>(op, x, out, std::make_index_sequence<kUnaryOps>{});
  });
  return out;
}

void binary_out(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  check_defined(a, name(op));
  check_defined(b, name(op));
  check_same_dtype(a, b, name(op));
  check_same_dtype(a, out, name(op));
  check_same_device(a, b, name(op));
  check_same_device(a, out, name(op));
  LN_CHECK(integer_ok(op) || is_floating(a.dtype()), name(op), ": needs a floating dtype, got ",
           describe(a));
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name(op));
  LN_CHECK(out.shape() == shape, name(op), ": output ", describe(out), " for broadcast shape ",
           str(shape));
  if (a.device().is_cuda()) {
    cuda::binary(op, a, b, out);
    return;
  }
  dispatch(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    run_binary<T>(op, a, b, out, std::make_index_sequence<kBinaryOps>{});
  });
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  check_defined(a, name(op));
  check_defined(b, name(op));
  Tensor out = empty(broadcast_shapes(a.shape(), b.shape(), name(op)), {a.dtype(), a.device()});
  binary_out(op, a, b, out);
  return out;
}

Tensor add_converted(const Tensor& x, const Tensor& u) {
  check_defined(x, "add_converted");
  check_defined(u, "add_converted");
  check_same_device(x, u, "add_converted");
  LN_CHECK(is_floating(x.dtype()) && is_floating(u.dtype()),
           "add_converted: needs floating dtypes, got ", describe(x), " and ", describe(u));
  LN_CHECK(x.shape() == u.shape(), "add_converted: shapes differ: ", describe(x), " and ",
           describe(u));
  if (x.device().is_cuda()) {
    Tensor out = empty(x.shape(), {x.dtype(), x.device()});
    if (cuda::add_converted(x, u, out)) return out;
  }
  return add(x, to(u, x.dtype()));
}

void add_(const Tensor& dst, const Tensor& src) { binary_out(BinaryOp::add, dst, src, dst); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined(cond, "where");
  check_defined(a, "where");
  check_defined(b, "where");
  check_same_dtype(a, b, "where");
  check_same_device(a, b, "where");
  check_same_device(cond, a, "where");
  Shape shape =
      broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(shape, {a.dtype(), a.device()});
  if (a.device().is_cuda()) {
    cuda::where(cond, a, b, out);
    return out;
  }
  std::array<Strides, 4> strides = {out.strides(), cpu::broadcast_strides(cond, shape),
                                    cpu::broadcast_strides(a, shape),
                                    cpu::broadcast_strides(b, shape)};
  dispatch(cond.dtype(), [&](auto ctag) {
    using K = typename decltype(ctag)::type;
    dispatch(a.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const K* pc = cond.data<K>();
      const T* pa = a.data<T>();
      const T* pb = b.data<T>();
      T* o = out.data<T>();
      cpu::for_each_row<4>(shape, strides, [&](auto off, std::int64_t n, auto step) {
        for (std::int64_t i = 0; i < n; ++i) {
          bool take_a = static_cast<compute_t<K>>(pc[off[1] + i * step[1]]) != compute_t<K>(0);
          o[off[0] + i * step[0]] = take_a ? pa[off[2] + i * step[2]] : pb[off[3] + i * step[3]];
        }
      });
    });
  });
  return out;
}

Tensor add(const Tensor& x, double s) { return add(x, scalar(s, {x.dtype(), x.device()})); }
Tensor mul(const Tensor& x, double s) { return mul(x, scalar(s, {x.dtype(), x.device()})); }
Tensor pow(const Tensor& x, double s) { return pow(x, scalar(s, {x.dtype(), x.device()})); }
Tensor gt(const Tensor& x, double s) {
  return binary(BinaryOp::gt, x, scalar(s, {x.dtype(), x.device()}));
}

}  // namespace longnet
