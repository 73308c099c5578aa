// The optimizer's kernels in a build without CUDA: no tensor can be on a device there, so
// these are never reached; they throw the runtime's error all the same.
#include "tensor/cuda/runtime.h"
#include "train/cuda/adamw.h"

namespace longnet::cuda {

void adamw_update(const std::vector<AdamWTensors>&, const AdamWStep&) { no_cuda(); }
void sum_of_squares(const Tensor&, const Tensor&, std::int64_t) { no_cuda(); }
void scale_(const Tensor&, double) { no_cuda(); }

}  // namespace longnet::cuda
