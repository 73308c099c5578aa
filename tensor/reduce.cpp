#include "tensor/reduce.h"

#include <cmath>

#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/cuda/reduce.h"
#include "tensor/elementwise.h"
#include "tensor/view.h"

namespace longnet {

namespace {

// The kept dims (in order) and the reduced dims of a reduction, with their layouts.
struct Plan {
  Shape kept_shape;
  Strides kept_strides;
  Shape reduced_shape;
  Strides reduced_strides;
  Shape out_shape;                 // with or without the size-1 reduced dims
  std::int64_t count = 1;          // elements reduced into each output
  std::vector<std::int64_t> dims;  // the reduced dims, in increasing order
};

Plan plan(const Tensor& t, const std::vector<std::int64_t>& dims, bool keepdim, const char* op) {
  std::vector<bool> reduced(static_cast<std::size_t>(t.dim()), dims.empty());
  for (auto d : dims) {
    auto w = wrap_dim(d, t.dim(), op);
    LN_CHECK(!reduced[w], op, ": dim ", w, " listed twice");
    reduced[w] = true;
  }
  Plan p;
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    if (reduced[d]) {
      p.dims.push_back(d);
      p.reduced_shape.push_back(t.shape()[d]);
      p.reduced_strides.push_back(t.strides()[d]);
      p.count *= t.shape()[d];
      if (keepdim) p.out_shape.push_back(1);
    } else {
      p.kept_shape.push_back(t.shape()[d]);
      p.kept_strides.push_back(t.strides()[d]);
      p.out_shape.push_back(t.shape()[d]);
    }
  }
  return p;
}

// Calls visit(offset) for every element of the reduced space, in row-major order.
template <class Visit>
void walk(const cpu::Layout<1>& layout, std::int64_t base, Visit visit) {
  auto nd = layout.shape.size();
  if (nd == 0) {
    visit(base);
    return;
  }
  const auto& shape = layout.shape;
  const auto& strides = layout.strides[0];
  std::vector<std::int64_t> index(nd, 0);
  std::int64_t inner = shape[nd - 1];
  std::int64_t step = strides[nd - 1];
  while (true) {
    for (std::int64_t i = 0; i < inner; ++i) visit(base + i * step);
    std::size_t d = nd - 1;
    while (d-- > 0) {
      base += strides[d];
      if (++index[d] < shape[d]) break;
      base -= strides[d] * shape[d];
      index[d] = 0;
    }
    if (d == static_cast<std::size_t>(-1)) return;
  }
}

// Calls reduce_one(in_offset, out_index) for every output element, in parallel.
template <class ReduceOne>
void for_each_output(const Plan& p, ReduceOne reduce_one) {
  Strides out_strides = contiguous_strides(p.kept_shape);
  cpu::for_each_row<2>(
      p.kept_shape, {out_strides, p.kept_strides},
      [&](auto off, std::int64_t n, auto step) {
        for (std::int64_t i = 0; i < n; ++i) reduce_one(off[1] + i * step[1], off[0] + i * step[0]);
      },
      std::max<std::int64_t>(p.count, 1));
}

}  // namespace

Tensor sum(const Tensor& t, const std::vector<std::int64_t>& dims, bool keepdim) {
  check_defined(t, "sum");
  Plan p = plan(t, dims, keepdim, "sum");
  Tensor out = empty(p.out_shape, {t.dtype(), t.device()});
  if (p.count == 0) {
    fill_(out, 0.0);
    return out;
  }
  if (t.device().is_cuda()) {
    cuda::sum(t, p.dims, out);
    return out;
  }
  cpu::Layout<1> reduced = cpu::coalesce<1>(p.reduced_shape, {p.reduced_strides});
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = std::conditional_t<std::is_integral_v<T>, std::int64_t, double>;
    const T* in = t.data<T>();
    T* o = out.data<T>();
    for_each_output(p, [&](std::int64_t base, std::int64_t at) {
      Acc acc = 0;
      walk(reduced, base,
           [&](std::int64_t k) { acc += static_cast<Acc>(static_cast<compute_t<T>>(in[k])); });
      o[at] = static_cast<T>(static_cast<compute_t<T>>(acc));
    });
  });
  return out;
}

Tensor mean(const Tensor& t, const std::vector<std::int64_t>& dims, bool keepdim) {
  check_defined(t, "mean");
  LN_CHECK(is_floating(t.dtype()), "mean: needs a floating dtype, got ", describe(t));
  Tensor s = sum(t, dims, keepdim);
  std::int64_t count = t.numel() / std::max<std::int64_t>(s.numel(), 1);
  return mul(s, 1.0 / static_cast<double>(count));
}

MaxResult max(const Tensor& t, std::int64_t dim, bool keepdim) {
  check_defined(t, "max");
  auto d = wrap_dim(dim, t.dim(), "max");
  LN_CHECK(t.shape()[d] > 0, "max: dim ", d, " of ", describe(t), " is empty");
  Plan p = plan(t, {d}, keepdim, "max");
  MaxResult r{empty(p.out_shape, {t.dtype(), t.device()}),
              empty(p.out_shape, {DType::i64, t.device()})};
  if (t.device().is_cuda()) {
    cuda::max(t, d, r.values, r.indices);
    return r;
  }
  std::int64_t n = t.shape()[d];
  std::int64_t stride = t.strides()[d];
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* in = t.data<T>();
    T* values = r.values.data<T>();
    auto* indices = r.indices.data<std::int64_t>();
    for_each_output(p, [&](std::int64_t base, std::int64_t at) {
      auto best = static_cast<C>(in[base]);
      std::int64_t best_i = 0;
      for (std::int64_t i = 1; i < n; ++i) {
        auto v = static_cast<C>(in[base + i * stride]);
        bool nan_best = false;
        if constexpr (std::is_floating_point_v<C>) nan_best = std::isnan(best);
        if (nan_best) break;
        bool take = v > best;
        if constexpr (std::is_floating_point_v<C>) take = take || std::isnan(v);
        if (take) {
          best = v;
          best_i = i;
        }
      }
      values[at] = static_cast<T>(best);
      indices[at] = best_i;
    });
  });
  return r;
}

Tensor argmax(const Tensor& t, std::int64_t dim, bool keepdim) {
  return max(t, dim, keepdim).indices;
}

Tensor sum_to(const Tensor& t, const Shape& shape) {
  check_defined(t, "sum_to");
  if (t.shape() == shape) return t;
  auto lead = t.dim() - static_cast<std::int64_t>(shape.size());
  LN_CHECK(lead >= 0, "sum_to: cannot reduce ", describe(t), " to ", str(shape));
  std::vector<std::int64_t> dims;
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    if (d < lead) {
      dims.push_back(d);
      continue;
    }
    std::int64_t target = shape[d - lead];
    LN_CHECK(target == t.shape()[d] || target == 1, "sum_to: cannot reduce ", describe(t), " to ",
             str(shape));
    if (target == 1 && t.shape()[d] != 1) dims.push_back(d);
  }
  if (dims.empty()) return reshape(t, shape);
  return reshape(sum(t, dims, true), shape);
}

}  // namespace longnet
