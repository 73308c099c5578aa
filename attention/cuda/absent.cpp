// The CUDA attention kernels of a build without CUDA: no tensor can be on a device there,
// so these only keep the dispatch in attention/dilated.cpp and attention/block_sparse.cpp
// linkable.
#include "attention/cuda/block_sparse.h"
#include "attention/cuda/dilated.h"
#include "tensor/cuda/runtime.h"

namespace longnet::cuda {

void dilated_attention_forward(const Tensor&, const Tensor&, const Tensor&,
                               const DilatedAttentionConfig&, double, const Tensor&,
                               const Tensor&) {
  no_cuda();
}

bool dilated_attention_on_tensor_cores(const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda();
}

const char* dilated_attention_kernels(const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }

void dilated_attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const DilatedAttentionConfig&, double,
                                double, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda();
}

void block_sparse_attention_forward(const Tensor&, const Tensor&, const Tensor&,
                                    const BlockSparseConfig&, double, const Tensor&,
                                    const Tensor&) {
  no_cuda();
}

void block_sparse_attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, const Tensor&, const BlockSparseConfig&, double,
                                     const Tensor&, const Tensor&, const Tensor&) {
  no_cuda();
}

}  // namespace longnet::cuda
