// The CUDA runtime of a build without CUDA: no devices, clear errors.
#include "tensor/cuda/runtime.h"
#include "tensor/error.h"

namespace longnet::cuda {

namespace {
[[noreturn]] void no_cuda() {
  throw Error(
      "this build has no CUDA support: install the CUDA toolkit (nvcc) and reconfigure with "
      "-Dcuda=enabled, or use device \"cpu\"");
}
}  // namespace

bool built_with_cuda() { return false; }
int device_count() { return 0; }
void* allocate(std::size_t, int) { no_cuda(); }
void release(void*, int) noexcept {}
void copy_bytes(void*, Device, const void*, Device, std::size_t) { no_cuda(); }
void fill(void*, DType, double, std::int64_t, int) { no_cuda(); }

}  // namespace longnet::cuda
