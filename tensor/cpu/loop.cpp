#include "tensor/cpu/loop.h"

namespace longnet::cpu {

Strides broadcast_strides(const Tensor& t, const Shape& shape) {
  Strides out(shape.size(), 0);
  auto lead = static_cast<std::int64_t>(shape.size()) - t.dim();
  LN_CHECK(lead >= 0, "cannot broadcast ", describe(t), " to ", str(shape));
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    LN_CHECK(t.shape()[d] == shape[lead + d] || t.shape()[d] == 1, "cannot broadcast ", describe(t),
             " to ", str(shape));
    out[lead + d] = t.shape()[d] == 1 ? 0 : t.strides()[d];
  }
  return out;
}

}  // namespace longnet::cpu
