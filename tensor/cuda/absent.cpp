// The CUDA runtime of a build without CUDA: no devices, clear errors.
#include "nn/cuda/cross_entropy.h"
#include "nn/cuda/dropout.h"
#include "nn/cuda/embedding.h"
#include "nn/cuda/layer_norm.h"
#include "nn/cuda/positional.h"
#include "tensor/cuda/copy.h"
#include "tensor/cuda/elementwise.h"
#include "tensor/cuda/index.h"
#include "tensor/cuda/matmul.h"
#include "tensor/cuda/random.h"
#include "tensor/cuda/reduce.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda/softmax.h"
#include "tensor/error.h"

namespace longnet::cuda {

[[noreturn]] void no_cuda() {
  throw Error(
      "this build has no CUDA support: install the CUDA toolkit (nvcc) and reconfigure with "
      "-Dcuda=enabled, or use device \"cpu\"");
}

bool built_with_cuda() { return false; }
int device_count() { return 0; }
std::string device_name(int) { no_cuda(); }
void* allocate(std::size_t, int) { no_cuda(); }
void release(void*, int) noexcept {}
void copy_bytes(void*, Device, const void*, Device, std::size_t) { no_cuda(); }
void fill(void*, DType, double, std::int64_t, int) { no_cuda(); }
MemoryStats memory_stats(int) { no_cuda(); }
void reset_peak_memory(int) { no_cuda(); }
void empty_cache(int) { no_cuda(); }
void synchronize(int) { no_cuda(); }
Event::Event(int) { no_cuda(); }
Event::~Event() = default;
void Event::record() { no_cuda(); }
void Event::synchronize() const { no_cuda(); }
void Event::wait(int) const { no_cuda(); }
bool Event::done() const { no_cuda(); }
float Event::elapsed_ms(const Event&) const { no_cuda(); }
void copy(const Tensor&, const Tensor&) { no_cuda(); }
void fill(const Tensor&, double) { no_cuda(); }
void draw_normal(const Tensor&, std::uint64_t, std::uint64_t) { no_cuda(); }
void draw_uniform(const Tensor&, double, double, std::uint64_t, std::uint64_t) { no_cuda(); }
void draw_integers(const Tensor&, std::int64_t, std::uint64_t, std::uint64_t, std::uint64_t) {
  no_cuda();
}
void unary(UnaryOp, const Tensor&, const Tensor&) { no_cuda(); }
void binary(BinaryOp, const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
bool add_converted(const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
void where(const Tensor&, const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
void sum(const Tensor&, const std::vector<std::int64_t>&, const Tensor&) { no_cuda(); }
void max(const Tensor&, std::int64_t, const Tensor&, const Tensor&) { no_cuda(); }
void softmax_forward(const Tensor&, std::int64_t, bool, const Tensor&) { no_cuda(); }
void softmax_backward(const Tensor&, const Tensor&, std::int64_t, bool, const Tensor&) {
  no_cuda();
}
void matmul(const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
bool matmul_bias(const Tensor&, const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
bool matmul_bias_grad(const Tensor&, const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
std::optional<std::int64_t> gather(const Tensor&, std::int64_t, const Tensor&, const Tensor&,
                                   bool) {
  no_cuda();
}
std::optional<std::int64_t> scatter_add(const Tensor&, std::int64_t, const Tensor&, const Tensor&,
                                        bool) {
  no_cuda();
}
// nn/cuda
void layer_norm_forward(const Tensor&, const Tensor&, const Tensor&, double, bool, const Tensor&,
                        const Tensor&, const Tensor&) {
  no_cuda();
}
void layer_norm_backward(const Tensor&, const Tensor&, bool, const Tensor&, const Tensor&,
                         const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda();
}
std::int64_t cross_entropy_count(const Tensor&, std::int64_t, std::int64_t) { no_cuda(); }
void cross_entropy_forward(const Tensor&, const Tensor&, std::int64_t, std::int64_t, const Tensor&,
                           const Tensor&) {
  no_cuda();
}
void cross_entropy_loss(const Tensor&, std::int64_t, const Tensor&) { no_cuda(); }
void cross_entropy_backward(const Tensor&, const Tensor&, std::int64_t, std::int64_t, const Tensor&,
                            const Tensor&, std::int64_t, const Tensor&) {
  no_cuda();
}
void embedding_forward(const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
void embedding_backward(const Tensor&, const Tensor&, const Tensor&) { no_cuda(); }
void dropout_mask(const Tensor&, std::uint64_t, std::uint64_t, std::uint64_t, double,
                  const Tensor&) {
  no_cuda();
}
void rotary(const Tensor&, std::int64_t, double, double, double, bool, const Tensor&) { no_cuda(); }

}  // namespace longnet::cuda
