// Embedding: rows of a (num_embeddings, dim) table looked up by index.
#pragma once

#include "nn/module.h"
#include "tensor/random.h"

namespace longnet {

// index: i64 or i32 on weight's device (cpu or cuda), any shape (0-d included); weight (num, dim)
// floating -> (index..., dim). An index outside [0, num) is an error naming the value.
// The weight gradient is dense (num, dim); repeated indices accumulate.
Variable embedding(const Tensor& index, const Variable& weight);

// weight (num_embeddings, dim) drawn from Normal(0, 1) as in PyTorch's nn.Embedding,
// created with options.
class Embedding final : public Cloneable<Embedding> {
 public:
  Embedding(std::int64_t num_embeddings, std::int64_t dim, Generator& gen,
            TensorOptions options = {});

  Variable forward(const Tensor& index) const { return embedding(index, weight_); }

  const Variable& weight() const { return weight_; }
  std::int64_t num_embeddings() const { return weight_.size(0); }
  std::int64_t dim() const { return weight_.size(1); }

 private:
  Variable weight_;
};

}  // namespace longnet
