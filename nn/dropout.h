// Dropout: inverted dropout with a mask from the counter-based generator.
#pragma once

#include "nn/module.h"
#include "tensor/random.h"

namespace longnet {

// training and p > 0: each element is kept with probability 1 - p and scaled by
// 1 / (1 - p), else zeroed. Element i is kept when word i % 4 of Philox block
// (first + i / 4) is at least round(p * 2^32), first being the counters gen reserves
// (ceil(numel / 4) of them), so a seed and offset fix the mask on every machine and thread
// count. Backward recomputes the mask from (seed, first) instead of storing it.
// !training or p == 0: x itself. p outside [0, 1) is an error. Floating x on the cpu or a
// GPU (the same mask on both), contiguous or not; the result has x's shape and dtype.
Variable dropout(const Variable& x, double p, Generator& gen, bool training);

class Dropout final : public Cloneable<Dropout> {
 public:
  explicit Dropout(double p);  // p in [0, 1)

  // dropout(x, p, gen, is_training()).
  Variable forward(const Variable& x, Generator& gen) const;

  double p() const { return p_; }

 private:
  double p_;
};

}  // namespace longnet
