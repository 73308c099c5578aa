#include "nn/positional.h"

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "nn/cuda/positional.h"
#include "tensor/copy.h"
#include "tensor/cpu/loop.h"

namespace longnet {

namespace {

enum class Scale { none, up, down };

struct Rotary {
  std::int64_t offset;
  double theta;
  Scale scale;
  double scale_base;
};

void check_input(const Tensor& x, const Rotary& r, const char* op) {
  LN_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, op, ": x ", describe(x),
           " must be (B, N, H, D) with D even");
  LN_CHECK(r.offset >= 0, op, ": position_offset must be >= 0, got ", r.offset);
  LN_CHECK(r.theta > 0 && r.scale_base > 0, op, ": theta and scale_base must be positive, got ",
           r.theta, " and ", r.scale_base);
}

// Applies the rotation (transposed when transpose, i.e. the backward pass) and XPOS scale
// of r to x (B, N, H, D).
Tensor rotate(const Tensor& x, const Rotary& r, bool transpose, const char* op) {
  Tensor src = contiguous(x);
  // The GPU kernel moves each pair in one access: a view starting mid-pair is copied.
  auto pair_bytes = 2 * element_size(src.dtype());
  if (src.device().is_cuda() &&
      reinterpret_cast<std::uintptr_t>(src.raw_data()) % pair_bytes != 0) {
    src = clone(src);
  }
  Tensor out = empty(src.shape(), {src.dtype(), src.device()});
  double exponent_sign = r.scale == Scale::up ? 1.0 : r.scale == Scale::down ? -1.0 : 0.0;
  if (src.device().is_cuda()) {
    cuda::rotary(src, r.offset, r.theta, exponent_sign, r.scale_base, transpose, out);
    return out;
  }
  std::int64_t batch = src.size(0);
  std::int64_t length = src.size(1);
  std::int64_t heads = src.size(2);
  std::int64_t dim = src.size(3);
  std::int64_t half = dim / 2;
  auto d = static_cast<double>(dim);
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  std::vector<double> log_base(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(r.theta, -2.0 * static_cast<double>(i) / d);
    log_base[i] = std::log((2.0 * static_cast<double>(i) + 0.4 * d) / (1.4 * d));
  }
  double sin_sign = transpose ? -1.0 : 1.0;

  dispatch_floating(src.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* px = src.data<T>();
    T* po = out.data<T>();
    // One position's cos and sin (scale folded in) serve all B x H rows at that position.
#pragma omp parallel if (src.numel() >= cpu::kParallelGrain && length > 1)
    {
      std::vector<C> cosine(static_cast<std::size_t>(half));
      std::vector<C> sine(static_cast<std::size_t>(half));
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < length; ++n) {
        auto pos = static_cast<double>(r.offset + n);
        for (std::int64_t i = 0; i < half; ++i) {
          double angle = pos * inv_freq[i];
          double s = std::exp(exponent_sign * log_base[i] * pos / r.scale_base);
          cosine[i] = static_cast<C>(s * std::cos(angle));
          sine[i] = static_cast<C>(sin_sign * s * std::sin(angle));
        }
        for (std::int64_t b = 0; b < batch; ++b) {
          for (std::int64_t h = 0; h < heads; ++h) {
            std::int64_t at = ((b * length + n) * heads + h) * dim;
            const T* xr = px + at;
            T* yr = po + at;
            for (std::int64_t i = 0; i < half; ++i) {
              auto x0 = static_cast<C>(xr[2 * i]);
              auto x1 = static_cast<C>(xr[2 * i + 1]);
              yr[2 * i] = static_cast<T>(x0 * cosine[i] - x1 * sine[i]);
              yr[2 * i + 1] = static_cast<T>(x0 * sine[i] + x1 * cosine[i]);
            }
          }
        }
      }
    }
  });
  return out;
}

Variable rotary(const Variable& x, const Rotary& r, const char* op) {
  check_input(x.data(), r, op);
  return make_result(
      rotate(x.data(), r, false, op), {x}, op,
      [r, op](const Tensor& g) -> std::vector<Tensor> { return {rotate(g, r, true, op)}; });
}

}  // namespace

Variable apply_rope(const Variable& x, std::int64_t position_offset, double theta) {
  return rotary(x, {position_offset, theta, Scale::none, 1.0}, "apply_rope");
}

Variable apply_xpos(const Variable& x, std::int64_t position_offset, bool downscale,
                    double scale_base) {
  return rotary(x, {position_offset, 10000.0, downscale ? Scale::down : Scale::up, scale_base},
                "apply_xpos");
}

}  // namespace longnet
