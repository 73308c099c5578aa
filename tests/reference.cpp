#include "tests/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace longnet::ref {

Ref Ref::of(const Tensor& t) { return {t.shape(), t.to_vector<double>()}; }

Index unravel(std::int64_t flat, const Shape& shape) {
  Index i(shape.size());
  for (auto d = static_cast<std::int64_t>(shape.size()) - 1; d >= 0; --d) {
    i[d] = flat % shape[d];
    flat /= shape[d];
  }
  return i;
}

std::int64_t ravel(const Index& i, const Shape& shape) {
  std::int64_t flat = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + i[d];
  return flat;
}

double Ref::at(const Index& i) const { return v[ravel(i, shape)]; }

double Ref::bat(const Index& i) const {
  Index own(shape.size());
  std::size_t lead = i.size() - shape.size();
  for (std::size_t d = 0; d < shape.size(); ++d) own[d] = shape[d] == 1 ? 0 : i[lead + d];
  return at(own);
}

Ref make(const Shape& shape, const std::function<double(const Index&)>& f) {
  Ref out{shape, std::vector<double>(static_cast<std::size_t>(numel(shape)))};
  for (std::int64_t k = 0; k < out.numel(); ++k) out.v[k] = f(unravel(k, shape));
  return out;
}

Shape broadcast(const Shape& a, const Shape& b) {
  std::size_t n = std::max(a.size(), b.size());
  Shape out(n, 1);
  for (std::size_t k = 0; k < n; ++k) {
    std::int64_t x = k < n - a.size() ? 1 : a[k - (n - a.size())];
    std::int64_t y = k < n - b.size() ? 1 : b[k - (n - b.size())];
    out[k] = std::max(x, y);
  }
  return out;
}

Ref sum(const Ref& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  auto nd = static_cast<std::int64_t>(x.shape.size());
  std::vector<bool> reduced(x.shape.size(), dims.empty());
  for (auto d : dims) reduced[d < 0 ? d + nd : d] = true;
  Shape kept = x.shape;
  Shape out_shape;
  for (std::int64_t d = 0; d < nd; ++d) {
    if (reduced[d]) kept[d] = 1;
    if (!reduced[d] || keepdim) out_shape.push_back(kept[d]);
  }
  Ref out{out_shape, std::vector<double>(static_cast<std::size_t>(numel(out_shape)), 0.0)};
  for (std::int64_t k = 0; k < x.numel(); ++k) {
    Index i = unravel(k, x.shape);
    for (std::int64_t d = 0; d < nd; ++d) {
      if (reduced[d]) i[d] = 0;
    }
    out.v[ravel(i, kept)] += x.v[k];
  }
  return out;
}

Ref max(const Ref& x, std::int64_t dim, bool keepdim) {
  auto nd = static_cast<std::int64_t>(x.shape.size());
  std::int64_t d = dim < 0 ? dim + nd : dim;
  Shape kept = x.shape;
  kept[d] = 1;
  Ref out = make(kept, [&](const Index& i) {
    double best = -std::numeric_limits<double>::infinity();
    Index j = i;
    for (j[d] = 0; j[d] < x.shape[d]; ++j[d]) best = std::max(best, x.at(j));
    return best;
  });
  if (!keepdim) out.shape.erase(out.shape.begin() + d);
  return out;
}

Ref matmul(const Ref& a, const Ref& b) {
  Shape ab(a.shape.begin(), a.shape.end() - 2);
  Shape bb(b.shape.begin(), b.shape.end() - 2);
  Shape out_shape = broadcast(ab, bb);
  std::int64_t m = a.shape[a.shape.size() - 2];
  std::int64_t k = a.shape.back();
  std::int64_t n = b.shape.back();
  out_shape.push_back(m);
  out_shape.push_back(n);
  return make(out_shape, [&](const Index& i) {
    double total = 0;
    Index ia = i;
    Index ib = i;
    for (std::int64_t p = 0; p < k; ++p) {
      ia[i.size() - 1] = p;
      ib[i.size() - 2] = p;
      total += a.bat(ia) * b.bat(ib);
    }
    return total;
  });
}

Ref softmax(const Ref& x, std::int64_t dim, bool log) {
  auto nd = static_cast<std::int64_t>(x.shape.size());
  std::int64_t d = dim < 0 ? dim + nd : dim;
  return make(x.shape, [&](const Index& i) {
    Index j = i;
    double total = 0;
    for (j[d] = 0; j[d] < x.shape[d]; ++j[d]) total += std::exp(x.at(j));
    return log ? x.at(i) - std::log(total) : std::exp(x.at(i)) / total;
  });
}

}  // namespace longnet::ref
