#include "nn/embedding.h"

#include "autograd/ops.h"
#include "nn/cuda/embedding.h"
#include "nn/init.h"
#include "tensor/copy.h"
#include "tensor/view.h"

namespace longnet {

Variable embedding(const Tensor& index, const Variable& weight) {
  check_defined(index, "embedding");
  LN_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32,
           "embedding: index must be i64 or i32, got ", describe(index));
  LN_CHECK(weight.dim() == 2, "embedding: weight ", describe(weight.data()),
           " must be (num_embeddings, dim)");
  check_same_device(index, weight.data(), "embedding");
  std::int64_t num = weight.size(0);
  Tensor flat = reshape(contiguous(index), {index.numel()});
  Shape out_shape = index.shape();
  out_shape.push_back(weight.size(1));
  if (index.device().is_cuda()) {
    // A gather and, for the gradient, a deterministic scatter-add: no (n, dim) index
    // expansion and no atomics on the table.
    const Tensor& w = weight.data();
    Shape rows_shape{flat.numel(), w.size(1)};
    Tensor out = empty(rows_shape, {w.dtype(), w.device()});
    cuda::embedding_forward(flat, contiguous(w), out);
    TensorOptions options{w.dtype(), w.device()};
    Shape table_shape = w.shape();
    return make_result(reshape(out, out_shape), {weight}, "embedding",
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         Tensor dw = empty(table_shape, options);
                         cuda::embedding_backward(flat, reshape(contiguous(g), rows_shape), dw);
                         return {dw};
                       });
  }
  // Checked here so that the message speaks of the table, not of index_select's dim 0.
  auto check = [&](const auto* values) {
    for (std::int64_t i = 0; i < flat.numel(); ++i) {
      LN_CHECK(values[i] >= 0 && values[i] < num, "embedding: index ", values[i],
               " is out of range for a table of ", num, " embeddings (valid: 0 to ", num - 1, ")");
    }
  };
  if (flat.dtype() == DType::i32) {
    check(flat.data<std::int32_t>());
  } else {
    check(flat.data<std::int64_t>());
  }
  return reshape(index_select(weight, 0, flat), out_shape);
}

Embedding::Embedding(std::int64_t num_embeddings, std::int64_t dim, Generator& gen,
                     TensorOptions options) {
  LN_CHECK(num_embeddings > 0 && dim > 0, "Embedding: sizes must be positive, got ", num_embeddings,
           " x ", dim);
  register_parameter("weight", &Embedding::weight_, empty({num_embeddings, dim}, options));
  normal_(weight_, 0.0, 1.0, gen);
}

}  // namespace longnet
