// Activation modules: parameter-free wrappers of the autograd ops relu and gelu (the exact
// erf form, x * Phi(x), as PyTorch's nn.GELU() default). Any shape and floating dtype.
#pragma once

#include "autograd/ops.h"
#include "nn/module.h"

namespace longnet {

class ReLU final : public Cloneable<ReLU> {
 public:
  Variable forward(const Variable& x) const { return relu(x); }
};

class GELU final : public Cloneable<GELU> {
 public:
  Variable forward(const Variable& x) const { return gelu(x); }
};

}  // namespace longnet
