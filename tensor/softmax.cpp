#include "tensor/softmax.h"

#include <cmath>
#include <limits>

#include "tensor/cpu/loop.h"
#include "tensor/cuda/softmax.h"

namespace longnet {

namespace {

// Runs row(in..., out, n, in_steps..., out_step) for every 1-d line along dim, with
// the lines split over threads. The inputs share out's shape.
template <std::size_t K, class Row>
void for_each_line(const std::array<const Tensor*, K>& inputs, const Tensor& out, std::int64_t dim,
                   Row row) {
  Shape outer = out.shape();
  outer[dim] = 1;
  std::array<Strides, K + 1> strides;
  strides[0] = out.strides();
  for (std::size_t k = 0; k < K; ++k) strides[k + 1] = inputs[k]->strides();
  std::int64_t n = out.shape()[dim];
  cpu::for_each_row<K + 1>(
      outer, strides,
      [&](auto off, std::int64_t count, auto step) {
        for (std::int64_t i = 0; i < count; ++i) {
          std::array<std::int64_t, K + 1> at{};
          for (std::size_t k = 0; k <= K; ++k) at[k] = off[k] + i * step[k];
          row(at, n);
        }
      },
      std::max<std::int64_t>(n, 1) * 4);
}

enum class Kind { softmax, log_softmax };

template <Kind kind>
Tensor forward(const Tensor& x, std::int64_t dim, const char* op) {
  check_defined(x, op);
  auto d = wrap_dim(dim, x.dim(), op);
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  if (x.device().is_cuda()) {
    LN_CHECK(is_floating(x.dtype()), op, ": expected a floating dtype (f32, f64, bf16), got ",
             name(x.dtype()));
    cuda::softmax_forward(x, d, kind == Kind::log_softmax, out);
    return out;
  }
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* in = x.data<T>();
    T* o = out.data<T>();
    std::int64_t sx = x.strides()[d];
    std::int64_t so = out.strides()[d];
    for_each_line<1>({&x}, out, d, [&](auto at, std::int64_t n) {
      C hi = -std::numeric_limits<C>::infinity();
      for (std::int64_t i = 0; i < n; ++i) hi = std::max(hi, static_cast<C>(in[at[1] + i * sx]));
      // A row of -inf stays finite-free: subtracting 0 keeps exp(-inf) = 0.
      if (std::isinf(hi) && hi < 0) hi = 0;
      C total = 0;
      for (std::int64_t i = 0; i < n; ++i)
        total += std::exp(static_cast<C>(in[at[1] + i * sx]) - hi);
      if constexpr (kind == Kind::softmax) {
        C inv = C(1) / total;
        for (std::int64_t i = 0; i < n; ++i) {
          o[at[0] + i * so] =
              static_cast<T>(std::exp(static_cast<C>(in[at[1] + i * sx]) - hi) * inv);
        }
      } else {
        // (x - max) - log(total), not x - (max + log(total)): the latter cancels badly.
        C log_total = std::log(total);
        for (std::int64_t i = 0; i < n; ++i) {
          o[at[0] + i * so] = static_cast<T>((static_cast<C>(in[at[1] + i * sx]) - hi) - log_total);
        }
      }
    });
  });
  return out;
}

template <Kind kind>
Tensor backward(const Tensor& y, const Tensor& dy, std::int64_t dim, const char* op) {
  check_defined(y, op);
  check_defined(dy, op);
  check_same_dtype(y, dy, op);
  check_same_device(y, dy, op);
  LN_CHECK(y.shape() == dy.shape(), op, ": shapes differ: ", describe(y), " vs ", describe(dy));
  auto d = wrap_dim(dim, y.dim(), op);
  Tensor dx = empty(y.shape(), {y.dtype(), y.device()});
  if (y.device().is_cuda()) {
    LN_CHECK(is_floating(y.dtype()), op, ": expected a floating dtype (f32, f64, bf16), got ",
             name(y.dtype()));
    cuda::softmax_backward(y, dy, d, kind == Kind::log_softmax, dx);
    return dx;
  }
  dispatch_floating(y.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* py = y.data<T>();
    const T* pg = dy.data<T>();
    T* o = dx.data<T>();
    std::int64_t sy = y.strides()[d];
    std::int64_t sg = dy.strides()[d];
    std::int64_t so = dx.strides()[d];
    for_each_line<2>({&y, &dy}, dx, d, [&](auto at, std::int64_t n) {
      auto yv = [&](std::int64_t i) { return static_cast<C>(py[at[1] + i * sy]); };
      auto gv = [&](std::int64_t i) { return static_cast<C>(pg[at[2] + i * sg]); };
      C dot = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        dot += kind == Kind::softmax ? gv(i) * yv(i) : gv(i);
      }
      for (std::int64_t i = 0; i < n; ++i) {
        C g = kind == Kind::softmax ? yv(i) * (gv(i) - dot) : gv(i) - std::exp(yv(i)) * dot;
        o[at[0] + i * so] = static_cast<T>(g);
      }
    });
  });
  return dx;
}

}  // namespace

Tensor softmax(const Tensor& x, std::int64_t dim) {
  return forward<Kind::softmax>(x, dim, "softmax");
}
Tensor log_softmax(const Tensor& x, std::int64_t dim) {
  return forward<Kind::log_softmax>(x, dim, "log_softmax");
}
Tensor softmax_backward(const Tensor& y, const Tensor& dy, std::int64_t dim) {
  return backward<Kind::softmax>(y, dy, dim, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy, std::int64_t dim) {
  return backward<Kind::log_softmax>(y, dy, dim, "log_softmax_backward");
}

}  // namespace longnet
