// Gradient check by central differences in f64: floating inputs are cast to f64, the
// function's output is reduced to L = sum(w * f(x)) with fixed random weights w, and every
// element of d L / d x from backward() is compared with (L(x + eps) - L(x - eps)) / 2 eps.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace longnet {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  std::uint64_t seed = 7;  // for the weights w
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string message;  // the worst element when !ok
};

// f receives one Variable per input (floating inputs as f64 leaves requiring grad, integer
// inputs as constants) and returns a floating Variable of any shape.
GradcheckResult gradcheck(const std::function<Variable(const std::vector<Variable>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options = {});

}  // namespace longnet
