// A build without CUDA: tensors are never on a GPU, so this is never reached.
#include "dist/cuda/topk.h"

namespace longnet::cuda {

void take_top_k(const Tensor& acc, std::int64_t /*k*/, const Tensor& /*index*/,
                const Tensor& /*values*/) {
  throw Error(cat("take_top_k: ", describe(acc), " needs a build with CUDA support"));
}

}  // namespace longnet::cuda
