#include "tensor/copy.h"

#include "tensor/cpu/loop.h"
#include "tensor/cuda/copy.h"
#include "tensor/cuda/runtime.h"
#include "tensor/view.h"

namespace longnet {

namespace {

template <class D, class S>
D convert(S value) {
  if constexpr (std::is_same_v<D, S>) {
    return value;
  } else {
    return static_cast<D>(static_cast<compute_t<D>>(static_cast<compute_t<S>>(value)));
  }
}

void copy_cpu(const Tensor& dst, const Tensor& src) {
  Strides src_strides = cpu::broadcast_strides(src, dst.shape());
  dispatch(dst.dtype(), [&](auto dtag) {
    using D = typename decltype(dtag)::type;
    dispatch(src.dtype(), [&](auto stag) {
      using S = typename decltype(stag)::type;
      D* out = dst.data<D>();
      const S* in = src.data<S>();
      cpu::for_each_row<2>(dst.shape(), {dst.strides(), src_strides},
                           [&](auto off, std::int64_t n, auto step) {
                             D* o = out + off[0];
                             const S* x = in + off[1];
                             for (std::int64_t i = 0; i < n; ++i) {
                               o[i * step[0]] = convert<D>(x[i * step[1]]);
                             }
                           });
    });
  });
}

}  // namespace

void copy_(const Tensor& dst, const Tensor& src) {
  check_defined(dst, "copy_");
  check_defined(src, "copy_");
  if (dst.device() == src.device()) {
    if (dst.device().is_cuda()) {
      cuda::copy(dst, src);
    } else {
      copy_cpu(dst, src);
    }
    return;
  }
  // Between devices the bytes move as they are, packed on the source side; casting and
  // broadcasting then happen on the destination's device (src has at most dst's elements).
  Tensor packed = contiguous(src);
  if (dst.dtype() == src.dtype() && dst.shape() == src.shape() && dst.is_contiguous()) {
    cuda::copy_bytes(dst.raw_data(), dst.device(), packed.raw_data(), packed.device(),
                     static_cast<std::size_t>(packed.numel()) * element_size(packed.dtype()));
    return;
  }
  Tensor moved = empty(src.shape(), {src.dtype(), dst.device()});
  copy_(moved, packed);
  copy_(dst, moved);
}

void fill_(const Tensor& t, double value) {
  check_defined(t, "fill_");
  if (t.device().is_cuda()) {
    cuda::fill(t, value);
    return;
  }
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v = static_cast<T>(static_cast<compute_t<T>>(value));
    T* p = t.data<T>();
    cpu::for_each_row<1>(t.shape(), {t.strides()}, [&](auto off, std::int64_t n, auto step) {
      for (std::int64_t i = 0; i < n; ++i) p[off[0] + i * step[0]] = v;
    });
  });
}

Tensor contiguous(const Tensor& t) {
  check_defined(t, "contiguous");
  return t.is_contiguous() ? t : clone(t);
}

Tensor clone(const Tensor& t) {
  check_defined(t, "clone");
  Tensor out = empty(t.shape(), {t.dtype(), t.device()});
  copy_(out, t);
  return out;
}

Tensor to(const Tensor& t, DType dtype) {
  check_defined(t, "to");
  if (t.dtype() == dtype) return t;
  Tensor out = empty(t.shape(), {dtype, t.device()});
  copy_(out, t);
  return out;
}

Tensor to(const Tensor& t, Device device) {
  check_defined(t, "to");
  if (t.device() == device) return t;
  Tensor src = contiguous(t);
  Tensor out = empty(t.shape(), {t.dtype(), device});
  copy_(out, src);
  return out;
}

Tensor concat(const std::vector<Tensor>& tensors, std::int64_t dim) {
  LN_CHECK(!tensors.empty(), "concat: needs at least one tensor");
  const Tensor& first = tensors.front();
  check_defined(first, "concat");
  std::int64_t d = wrap_dim(dim, first.dim(), "concat");
  Shape shape = first.shape();
  shape[d] = 0;
  for (const auto& t : tensors) {
    check_defined(t, "concat");
    check_same_dtype(first, t, "concat");
    check_same_device(first, t, "concat");
    bool same_rank = t.dim() == first.dim();
    for (std::int64_t i = 0; same_rank && i < t.dim(); ++i) {
      same_rank = i == d || t.shape()[i] == first.shape()[i];
    }
    LN_CHECK(same_rank, "concat along dim ", d, ": shapes ", str(first.shape()), " and ",
             str(t.shape()), " differ outside that dim");
    shape[d] += t.shape()[d];
  }
  Tensor out = empty(shape, {first.dtype(), first.device()});
  std::int64_t at = 0;
  for (const auto& t : tensors) {
    copy_(narrow(out, d, at, t.shape()[d]), t);
    at += t.shape()[d];
  }
  return out;
}

}  // namespace longnet
