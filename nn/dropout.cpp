#include "nn/dropout.h"

#include <cmath>
#include <type_traits>

#include "nn/cuda/dropout.h"
#include "tensor/copy.h"
#include "tensor/cpu/loop.h"

namespace longnet {

namespace {

void check_p(double p, const char* op) {
  LN_CHECK(p >= 0 && p < 1, op, ": p must be in [0, 1), got ", p);
}

// in * mask * scale elementwise, the mask drawn as dropout() describes.
Tensor apply_mask(const Tensor& in, std::uint64_t seed, std::uint64_t first,
                  std::uint64_t threshold, double scale) {
  Tensor src = contiguous(in);
  Tensor out = empty(src.shape(), {src.dtype(), src.device()});
  if (src.device().is_cuda()) {
    cuda::dropout_mask(src, seed, first, threshold, scale, out);
    return out;
  }
  std::int64_t n = src.numel();
  std::int64_t blocks = (n + 3) / 4;
  dispatch_floating(src.dtype(), "dropout", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* x = src.data<T>();
    T* o = out.data<T>();
    auto s = static_cast<C>(scale);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelGrain)
    for (std::int64_t blk = 0; blk < blocks; ++blk) {
      std::uint64_t counter = first + static_cast<std::uint64_t>(blk);
      auto words = philox4x32(
          {static_cast<std::uint32_t>(counter), static_cast<std::uint32_t>(counter >> 32), 0U, 0U},
          seed);
      for (std::int64_t j = 0; j < 4 && 4 * blk + j < n; ++j) {
        std::int64_t i = 4 * blk + j;
        bool keep = words[static_cast<std::size_t>(j)] >= threshold;
        o[i] = static_cast<T>(keep ? static_cast<C>(x[i]) * s : C(0));
      }
    }
  });
  return out;
}

}  // namespace

Variable dropout(const Variable& x, double p, Generator& gen, bool training) {
  check_p(p, "dropout");
  if (!training || p == 0) return x;
  std::uint64_t seed = gen.seed();
  std::uint64_t first = gen.reserve(static_cast<std::uint64_t>((x.numel() + 3) / 4));
  auto threshold = static_cast<std::uint64_t>(std::llround(std::ldexp(p, 32)));
  double scale = 1.0 / (1.0 - p);
  Tensor y = apply_mask(x.data(), seed, first, threshold, scale);
  return make_result(y, {x}, "dropout", [=](const Tensor& g) -> std::vector<Tensor> {
    return {apply_mask(g, seed, first, threshold, scale)};
  });
}

Dropout::Dropout(double p) : p_(p) { check_p(p, "Dropout"); }

Variable Dropout::forward(const Variable& x, Generator& gen) const {
  return dropout(x, p_, gen, is_training());
}

}  // namespace longnet
