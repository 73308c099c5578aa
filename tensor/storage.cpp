#include "tensor/storage.h"

#include <cstdlib>
#include <new>

#include "tensor/cuda/runtime.h"
#include "tensor/error.h"

namespace longnet {

namespace {
constexpr std::size_t kCpuAlignment = 64;
}

Storage::Storage(std::size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (device.is_cuda()) {
    data_ = cuda::allocate(bytes, device.index);
    return;
  }
  std::size_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  data_ = std::aligned_alloc(kCpuAlignment, rounded == 0 ? kCpuAlignment : rounded);
  LN_CHECK(data_ != nullptr, "out of host memory: could not allocate ", bytes, " bytes");
}

Storage::~Storage() {
  if (device_.is_cuda()) {
    cuda::release(data_, device_.index);
  } else {
    std::free(data_);
  }
}

}  // namespace longnet
