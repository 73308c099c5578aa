#include "nn/init.h"

#include <cmath>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"

namespace longnet {

void xavier_normal_(const Variable& param, double gain, Generator& gen) {
  const Tensor& t = param.data();
  LN_CHECK(t.dim() >= 2, "xavier_normal_: needs a weight with at least 2 dims, got ", describe(t));
  std::int64_t receptive = 1;
  for (std::int64_t d = 2; d < t.dim(); ++d) receptive *= t.size(d);
  auto fan_in = static_cast<double>(t.size(1) * receptive);
  auto fan_out = static_cast<double>(t.size(0) * receptive);
  normal_(param, 0.0, gain * std::sqrt(2.0 / (fan_in + fan_out)), gen);
}

void normal_(const Variable& param, double mean, double std, Generator& gen) {
  const Tensor& t = param.data();
  LN_CHECK(std >= 0, "normal_: std must be >= 0, got ", std);
  // Drawn and scaled in f64 on the host, then rounded once to the parameter's dtype.
  Tensor values = add(mul(randn(t.shape(), gen, {DType::f64}), std), mean);
  copy_(t, to(to(values, t.dtype()), t.device()));
}

void zeros_(const Variable& param) { fill_(param.data(), 0.0); }
void ones_(const Variable& param) { fill_(param.data(), 1.0); }

}  // namespace longnet
