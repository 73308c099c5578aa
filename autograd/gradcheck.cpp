#include "autograd/gradcheck.h"

#include <cmath>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/reduce.h"

namespace longnet {

GradcheckResult gradcheck(const std::function<Variable(const std::vector<Variable>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options) {
  std::vector<Variable> vars;
  for (const auto& t : inputs) {
    bool floating = is_floating(t.dtype());
    vars.emplace_back(floating ? clone(to(t, DType::f64)) : t, floating);
  }
  Variable y = f(vars);
  LN_CHECK(y.dtype() == DType::f64, "gradcheck: f returned ", describe(y.data()),
           "; its floating inputs were f64, so should its output be");
  Generator gen(options.seed);
  Tensor w = randn(y.shape(), gen, {DType::f64, y.device()});
  auto loss = [&](const std::vector<Variable>& xs) {
    NoGradGuard no_grad;
    return sum(mul(f(xs).data(), w)).item();
  };
  if (y.requires_grad()) y.backward(w);

  GradcheckResult result;
  for (std::size_t i = 0; i < vars.size(); ++i) {
    if (!vars[i].requires_grad()) continue;
    Tensor x = vars[i].data();
    Tensor analytic = vars[i].grad().defined() ? contiguous(vars[i].grad()) : zeros_like(x);
    const double* a = analytic.data<double>();
    double* p = x.data<double>();
    for (std::int64_t j = 0; j < x.numel(); ++j) {
      double saved = p[j];
      p[j] = saved + options.eps;
      double up = loss(vars);
      p[j] = saved - options.eps;
      double down = loss(vars);
      p[j] = saved;
      double numeric = (up - down) / (2 * options.eps);
      double error = std::abs(a[j] - numeric);
      result.max_abs_error = std::max(result.max_abs_error, error);
      if (!(error <= options.atol + options.rtol * std::abs(numeric)) && result.ok) {
        result.ok = false;
        result.message = cat("input ", i, " ", describe(x), " element ", j, ": analytic ", a[j],
                             " vs numeric ", numeric);
      }
    }
  }
  return result;
}

}  // namespace longnet
