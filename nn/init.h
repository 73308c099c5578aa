// Parameter initialisers. Each overwrites the values of param in place (any floating
// dtype, any device) and records nothing in the autograd graph. Random draws come from gen
// (counter-based), so a seed fixes the result on every machine.
#pragma once

#include "autograd/variable.h"
#include "tensor/random.h"

namespace longnet {

// Normal(0, std) with std = gain * sqrt(2 / (fan_in + fan_out)), where for a weight of
// shape [out, in, k...] fan_in = in * prod(k) and fan_out = out * prod(k) (PyTorch's
// xavier_normal_). param needs at least 2 dims.
void xavier_normal_(const Variable& param, double gain, Generator& gen);

// Normal(mean, std); std >= 0.
void normal_(const Variable& param, double mean, double std, Generator& gen);

void zeros_(const Variable& param);
void ones_(const Variable& param);

}  // namespace longnet
