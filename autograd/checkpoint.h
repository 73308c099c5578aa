// Activation recomputation (gradient checkpointing): a block of ops whose intermediate
// results are not kept for backward but computed again from the block's input when the
// gradient reaches it. Memory for a stack of such blocks is one input per block plus the
// intermediates of one block, for about one more forward pass of compute.
#pragma once

#include <functional>
#include <vector>

#include "autograd/variable.h"
#include "tensor/random.h"

namespace longnet {

// y = f(x, gen), recorded as one op. The forward runs f without recording; backward runs
// f again from the same x and the same generator state (so dropout draws the same masks),
// recording, and backpropagates y's gradient through it. params are the leaves f reads
// besides x (a module's parameters): their gradients accumulate during that inner
// backward, and listing them records the op even when x needs no gradient. f must be a
// function of x, params and gen alone.
Variable checkpoint(const std::function<Variable(const Variable&, Generator&)>& f,
                    const Variable& x, Generator& gen, const std::vector<Variable>& params);

}  // namespace longnet
