#include "tensor/index.h"

#include <atomic>

#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/cuda/index.h"

namespace longnet {

namespace {

void check_index(const Tensor& t, const Tensor& index, const char* op) {
  check_defined(t, op);
  check_defined(index, op);
  check_same_device(t, index, op);
  LN_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32, op,
           ": index must be i64 or i32, got ", describe(index));
}

[[noreturn]] void out_of_range(const char* op, std::int64_t value, std::int64_t size,
                               std::int64_t dim) {
  throw Error(cat(op, ": index ", value, " is out of range for dim ", dim, " of size ", size,
                  " (valid: 0 to ", size - 1, ")"));
}

// Calls f(I) with the C++ type of the index dtype.
template <class F>
void dispatch_index(DType dtype, F f) {
  if (dtype == DType::i32) {
    f(TypeTag<std::int32_t>{});
  } else {
    f(TypeTag<std::int64_t>{});
  }
}

void check_gather_shapes(const Tensor& t, std::int64_t d, const Tensor& index, const char* op) {
  LN_CHECK(index.dim() == t.dim(), op, ": index ", describe(index),
           " needs the same number of dims as ", describe(t));
  for (std::int64_t i = 0; i < t.dim(); ++i) {
    LN_CHECK(i == d || index.shape()[i] <= t.shape()[i], op, ": index ", describe(index),
             " is larger than ", describe(t), " in dim ", i);
  }
}

// Walks index's shape with three operands (a dense one with first_strides, the indexed
// one, the index) and calls f(at_first, at_indexed_base, idx) for every element after
// checking idx against size. The indexed operand's stride along dim is left out of
// at_indexed_base; the caller applies it.
template <class F>
void walk_indexed(const Strides& first_strides, Strides indexed_strides, std::int64_t size,
                  std::int64_t d, const Tensor& index, const char* op, bool parallel, F f) {
  indexed_strides[d] = 0;
  std::atomic<bool> failed{false};
  std::atomic<std::int64_t> bad{0};
  dispatch_index(index.dtype(), [&](auto tag) {
    using I = typename decltype(tag)::type;
    const I* idx = index.data<I>();
    auto body = [&](auto off, std::int64_t n, auto step) {
      for (std::int64_t i = 0; i < n; ++i) {
        std::int64_t v = idx[off[2] + i * step[2]];
        if (v < 0 || v >= size) {
          bad = v;
          failed = true;
          continue;
        }
        f(off[0] + i * step[0], off[1] + i * step[1], v);
      }
    };
    // Scatters read-modify-write shared slots, so they stay on one thread (cost 0).
    cpu::for_each_row<3>(index.shape(), {first_strides, indexed_strides, index.strides()}, body,
                         parallel ? 1 : 0);
  });
  if (failed) out_of_range(op, bad, size, d);
}

}  // namespace

Tensor gather(const Tensor& t, std::int64_t dim, const Tensor& index) {
  check_index(t, index, "gather");
  auto d = wrap_dim(dim, t.dim(), "gather");
  check_gather_shapes(t, d, index, "gather");
  Tensor out = empty(index.shape(), {t.dtype(), t.device()});
  if (t.device().is_cuda()) {
    if (auto bad = cuda::gather(t, d, index, out)) out_of_range("gather", *bad, t.shape()[d], d);
    return out;
  }
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* in = t.data<T>();
    T* o = out.data<T>();
    std::int64_t stride = t.strides()[d];
    walk_indexed(
        out.strides(), t.strides(), t.shape()[d], d, index, "gather", true,
        [&](std::int64_t at, std::int64_t base, std::int64_t v) { o[at] = in[base + v * stride]; });
  });
  return out;
}

Tensor scatter_add(const Tensor& t, std::int64_t dim, const Tensor& index, const Tensor& src) {
  check_index(t, index, "scatter_add");
  check_same_dtype(t, src, "scatter_add");
  check_same_device(t, src, "scatter_add");
  auto d = wrap_dim(dim, t.dim(), "scatter_add");
  check_gather_shapes(t, d, index, "scatter_add");
  check_gather_shapes(src, -1, index, "scatter_add");
  Tensor out = clone(t);
  if (t.device().is_cuda()) {
    if (auto bad = cuda::scatter_add(out, d, index, src)) {
      out_of_range("scatter_add", *bad, out.shape()[d], d);
    }
    return out;
  }
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* s = src.data<T>();
    T* o = out.data<T>();
    std::int64_t stride = out.strides()[d];
    walk_indexed(src.strides(), out.strides(), out.shape()[d], d, index, "scatter_add", false,
                 [&](std::int64_t at, std::int64_t base, std::int64_t v) {
                   T& slot = o[base + v * stride];
                   slot = static_cast<T>(static_cast<C>(slot) + static_cast<C>(s[at]));
                 });
  });
  return out;
}

Tensor index_select(const Tensor& t, std::int64_t dim, const Tensor& index, IndexCheck check) {
  check_index(t, index, "index_select");
  LN_CHECK(index.dim() == 1, "index_select: index must be 1-d, got ", describe(index));
  auto d = wrap_dim(dim, t.dim(), "index_select");
  Shape shape = t.shape();
  shape[d] = index.numel();
  Tensor out = empty(shape, {t.dtype(), t.device()});
  // index expanded over out's shape, so every output element finds its source slice.
  Strides view_strides(static_cast<std::size_t>(t.dim()), 0);
  view_strides[d] = index.strides()[0];
  Tensor full_idx(index.storage(), shape, view_strides, index.offset(), index.dtype());
  if (t.device().is_cuda()) {
    if (auto bad = cuda::gather(t, d, full_idx, out, check == IndexCheck::check)) {
      out_of_range("index_select", *bad, t.shape()[d], d);
    }
    return out;
  }
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* in = t.data<T>();
    T* o = out.data<T>();
    std::int64_t stride = t.strides()[d];
    walk_indexed(
        out.strides(), t.strides(), t.shape()[d], d, full_idx, "index_select", true,
        [&](std::int64_t at, std::int64_t base, std::int64_t v) { o[at] = in[base + v * stride]; });
  });
  return out;
}

void index_add_(const Tensor& t, std::int64_t dim, const Tensor& index, const Tensor& src,
                IndexCheck check) {
  check_index(t, index, "index_add");
  check_same_dtype(t, src, "index_add");
  check_same_device(t, src, "index_add");
  LN_CHECK(index.dim() == 1, "index_add: index must be 1-d, got ", describe(index));
  auto d = wrap_dim(dim, t.dim(), "index_add");
  Shape expected = t.shape();
  expected[d] = index.numel();
  LN_CHECK(src.shape() == expected, "index_add: src ", describe(src), " should have shape ",
           str(expected), " for ", describe(t), " and ", index.numel(), " indices");
  Strides view_strides(static_cast<std::size_t>(t.dim()), 0);
  view_strides[d] = index.strides()[0];
  Tensor full_idx(index.storage(), expected, view_strides, index.offset(), index.dtype());
  if (t.device().is_cuda()) {
    if (auto bad = cuda::scatter_add(t, d, full_idx, src, check == IndexCheck::check)) {
      out_of_range("index_add", *bad, t.shape()[d], d);
    }
    return;
  }
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* s = src.data<T>();
    T* o = t.data<T>();
    std::int64_t stride = t.strides()[d];
    walk_indexed(src.strides(), t.strides(), t.shape()[d], d, full_idx, "index_add", false,
                 [&](std::int64_t at, std::int64_t base, std::int64_t v) {
                   T& slot = o[base + v * stride];
                   slot = static_cast<T>(static_cast<C>(slot) + static_cast<C>(s[at]));
                 });
  });
}

Tensor index_add(const Tensor& t, std::int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor out = clone(t);
  index_add_(out, dim, index, src);
  return out;
}

}  // namespace longnet
