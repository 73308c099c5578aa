#include "tensor/view.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include "tensor/copy.h"

namespace longnet {

namespace {

Tensor make_view(const Tensor& t, Shape shape, Strides strides, std::int64_t offset) {
  return Tensor(t.storage(), std::move(shape), std::move(strides), offset, t.dtype());
}

Shape infer_shape(Shape shape, std::int64_t count, const Shape& from) {
  std::int64_t known = 1;
  int infer = -1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LN_CHECK(infer < 0, "reshape ", str(from), " to ", str(shape), ": more than one -1");
      infer = static_cast<int>(i);
    } else {
      LN_CHECK(shape[i] >= 0, "reshape ", str(from), " to ", str(shape), ": negative size");
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    LN_CHECK(known != 0 && count % known == 0, "reshape ", str(from), " to ", str(shape),
             ": cannot infer the -1 dim");
    shape[infer] = count / known;
    known *= shape[infer];
  }
  LN_CHECK(known == count, "reshape ", str(from), " (", count, " elements) to ", str(shape), " (",
           known, " elements)");
  return shape;
}

// Strides for viewing t as shape without a copy, or empty when that is impossible.
// Walks groups of old dims that map onto groups of new dims with equal products.
std::optional<Strides> view_strides(const Tensor& t, const Shape& shape) {
  Strides out(shape.size());
  Shape old_shape;
  Strides old_strides;
  // Size-1 dims carry no layout information; dropping them simplifies the walk.
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    if (t.shape()[d] != 1) {
      old_shape.push_back(t.shape()[d]);
      old_strides.push_back(t.strides()[d]);
    }
  }
  std::size_t oi = 0;
  std::size_t ni = 0;
  while (ni < shape.size()) {
    if (shape[ni] == 1) {
      out[ni++] = 1;
      continue;
    }
    if (oi >= old_shape.size()) return std::nullopt;
    // Gather old dims [oi, oj) that must be contiguous among themselves.
    std::int64_t old_prod = old_shape[oi];
    std::size_t oj = oi + 1;
    std::int64_t new_prod = shape[ni];
    std::size_t nj = ni + 1;
    while (old_prod != new_prod) {
      if (old_prod < new_prod) {
        if (oj >= old_shape.size()) return std::nullopt;
        if (old_strides[oj - 1] != old_strides[oj] * old_shape[oj]) return std::nullopt;
        old_prod *= old_shape[oj++];
      } else {
        if (nj >= shape.size()) return std::nullopt;
        new_prod *= shape[nj++];
      }
    }
    std::int64_t stride = old_strides[oj - 1];
    for (std::size_t k = nj; k-- > ni;) {
      out[k] = stride;
      stride *= shape[k];
    }
    ni = nj;
    oi = oj;
  }
  if (oi != old_shape.size()) return std::nullopt;
  return out;
}

}  // namespace

Tensor reshape(const Tensor& t, Shape shape) {
  check_defined(t, "reshape");
  shape = infer_shape(std::move(shape), t.numel(), t.shape());
  if (t.numel() == 0) return empty(shape, {t.dtype(), t.device()});
  if (auto strides = view_strides(t, shape)) return make_view(t, shape, *strides, t.offset());
  Tensor c = contiguous(t);
  return make_view(c, shape, contiguous_strides(shape), c.offset());
}

Tensor flatten(const Tensor& t) { return reshape(t, {t.numel()}); }

Tensor transpose(const Tensor& t, std::int64_t dim0, std::int64_t dim1) {
  check_defined(t, "transpose");
  std::vector<std::int64_t> dims(static_cast<std::size_t>(t.dim()));
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim(dim0, t.dim(), "transpose")], dims[wrap_dim(dim1, t.dim(), "transpose")]);
  return permute(t, dims);
}

Tensor permute(const Tensor& t, const std::vector<std::int64_t>& dims) {
  check_defined(t, "permute");
  LN_CHECK(static_cast<std::int64_t>(dims.size()) == t.dim(), "permute of ", describe(t), " needs ",
           t.dim(), " dims, got ", dims.size());
  Shape shape(dims.size());
  Strides strides(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (std::size_t i = 0; i < dims.size(); ++i) {
    auto d = wrap_dim(dims[i], t.dim(), "permute");
    LN_CHECK(!seen[d], "permute: dim ", d, " appears twice");
    seen[d] = true;
    shape[i] = t.shape()[d];
    strides[i] = t.strides()[d];
  }
  return make_view(t, shape, strides, t.offset());
}

Tensor slice(const Tensor& t, std::int64_t dim, std::int64_t start, std::int64_t end,
             std::int64_t step) {
  check_defined(t, "slice");
  auto d = wrap_dim(dim, t.dim(), "slice");
  LN_CHECK(step > 0, "slice: step must be positive, got ", step);
  std::int64_t n = t.shape()[d];
  auto clamp = [n](std::int64_t i) { return std::clamp(i < 0 ? i + n : i, std::int64_t{0}, n); };
  start = clamp(start);
  end = std::max(clamp(end), start);
  Shape shape = t.shape();
  Strides strides = t.strides();
  shape[d] = (end - start + step - 1) / step;
  std::int64_t offset = t.offset() + start * strides[d];
  strides[d] *= step;
  return make_view(t, shape, strides, offset);
}

Tensor narrow(const Tensor& t, std::int64_t dim, std::int64_t start, std::int64_t length) {
  check_defined(t, "narrow");
  auto d = wrap_dim(dim, t.dim(), "narrow");
  LN_CHECK(start >= 0 && length >= 0 && start + length <= t.shape()[d], "narrow of ", describe(t),
           " along dim ", d, ": [", start, ", ", start + length, ") is outside [0, ", t.shape()[d],
           ")");
  return slice(t, d, start, start + length);
}

Tensor expand(const Tensor& t, const Shape& shape) {
  check_defined(t, "expand");
  LN_CHECK(static_cast<std::int64_t>(shape.size()) >= t.dim(), "expand ", describe(t), " to ",
           str(shape), ": fewer dims");
  Strides strides(shape.size(), 0);
  auto lead = static_cast<std::int64_t>(shape.size()) - t.dim();
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    LN_CHECK(t.shape()[d] == shape[lead + d] || t.shape()[d] == 1, "expand ", describe(t), " to ",
             str(shape), ": dim ", d, " has size ", t.shape()[d]);
    strides[lead + d] = t.shape()[d] == 1 && shape[lead + d] != 1 ? 0 : t.strides()[d];
  }
  return make_view(t, shape, strides, t.offset());
}

Tensor unsqueeze(const Tensor& t, std::int64_t dim) {
  check_defined(t, "unsqueeze");
  auto d = wrap_dim(dim, t.dim() + 1, "unsqueeze");
  Shape shape = t.shape();
  Strides strides = t.strides();
  std::int64_t stride = d < t.dim() ? t.strides()[d] * t.shape()[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, stride);
  return make_view(t, shape, strides, t.offset());
}

Tensor squeeze(const Tensor& t, std::int64_t dim) {
  check_defined(t, "squeeze");
  auto d = wrap_dim(dim, t.dim(), "squeeze");
  LN_CHECK(t.shape()[d] == 1, "squeeze of ", describe(t), ": dim ", d, " has size ", t.shape()[d],
           ", not 1");
  Shape shape = t.shape();
  Strides strides = t.strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  return make_view(t, shape, strides, t.offset());
}

std::vector<Tensor> split(const Tensor& t, const std::vector<std::int64_t>& sizes,
                          std::int64_t dim) {
  check_defined(t, "split");
  auto d = wrap_dim(dim, t.dim(), "split");
  std::int64_t total = 0;
  for (auto s : sizes) {
    LN_CHECK(s >= 0, "split: negative size ", s);
    total += s;
  }
  LN_CHECK(total == t.shape()[d], "split of ", describe(t), " along dim ", d, ": sizes add up to ",
           total, ", not ", t.shape()[d]);
  std::vector<Tensor> out;
  std::int64_t at = 0;
  for (auto s : sizes) {
    out.push_back(narrow(t, d, at, s));
    at += s;
  }
  return out;
}

}  // namespace longnet
