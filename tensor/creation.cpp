#include "tensor/creation.h"

#include <cmath>
#include <numbers>

#include "tensor/copy.h"

namespace longnet {

namespace {

// Draws one value per element on the host in f64 from the four words of counter
// first + i / 4, then converts to the requested dtype and device.
template <class Draw>
Tensor draw(const Shape& shape, Generator& gen, TensorOptions options, Draw draw_four) {
  Tensor host = empty(shape, {DType::f64, Device::cpu()});
  double* out = host.data<double>();
  std::int64_t n = host.numel();
  std::int64_t counters = (n + 3) / 4;
  std::uint64_t first = gen.reserve(static_cast<std::uint64_t>(counters));
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t c = 0; c < counters; ++c) {
    std::uint64_t counter = first + static_cast<std::uint64_t>(c);
    std::array<double, 4> values = draw_four(philox4x32(
        {static_cast<std::uint32_t>(counter), static_cast<std::uint32_t>(counter >> 32), 0U, 0U},
        gen.seed()));
    for (std::int64_t j = 0; j < 4 && 4 * c + j < n; ++j) out[4 * c + j] = values[j];
  }
  return to(to(host, options.dtype), options.device);
}

// (0, 1]: never 0, so the logarithm in Box-Muller stays finite.
double open_unit(std::uint32_t word) { return (static_cast<double>(word) + 1.0) * 0x1p-32; }

}  // namespace

Tensor full(const Shape& shape, double value, TensorOptions options) {
  Tensor t = empty(shape, options);
  fill_(t, value);
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions options) { return full(shape, 0.0, options); }
Tensor ones(const Shape& shape, TensorOptions options) { return full(shape, 1.0, options); }
Tensor scalar(double value, TensorOptions options) { return full({}, value, options); }

Tensor arange(double start, double end, double step, TensorOptions options) {
  LN_CHECK(step != 0, "arange: step must not be 0");
  auto n = static_cast<std::int64_t>(std::max(0.0, std::ceil((end - start) / step)));
  Tensor host = empty({n}, {DType::f64, Device::cpu()});
  double* p = host.data<double>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = start + static_cast<double>(i) * step;
  return to(to(host, options.dtype), options.device);
}

Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), {t.dtype(), t.device()}); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), {t.dtype(), t.device()}); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), {t.dtype(), t.device()}); }

template <class T>
Tensor from_data(const std::vector<T>& values, const Shape& shape, Device device) {
  LN_CHECK(static_cast<std::int64_t>(values.size()) == numel(shape), "from_data: ", values.size(),
           " values for shape ", str(shape), " (", numel(shape), " elements)");
  Tensor host = empty(shape, {dtype_of<T>(), Device::cpu()});
  std::copy(values.begin(), values.end(), host.data<T>());
  return to(host, device);
}
template Tensor from_data(const std::vector<float>&, const Shape&, Device);
template Tensor from_data(const std::vector<double>&, const Shape&, Device);
template Tensor from_data(const std::vector<bf16>&, const Shape&, Device);
template Tensor from_data(const std::vector<std::int32_t>&, const Shape&, Device);
template Tensor from_data(const std::vector<std::int64_t>&, const Shape&, Device);

Tensor randn(const Shape& shape, Generator& gen, TensorOptions options) {
  LN_CHECK(is_floating(options.dtype), "randn: needs a floating dtype, got ", name(options.dtype));
  return draw(shape, gen, options, [](std::array<std::uint32_t, 4> w) {
    std::array<double, 4> out{};
    for (std::size_t pair = 0; pair < 2; ++pair) {
      double radius = std::sqrt(-2.0 * std::log(open_unit(w[2 * pair])));
      double angle = 2.0 * std::numbers::pi * open_unit(w[2 * pair + 1]);
      out[2 * pair] = radius * std::cos(angle);
      out[2 * pair + 1] = radius * std::sin(angle);
    }
    return out;
  });
}

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, TensorOptions options) {
  LN_CHECK(is_floating(options.dtype), "uniform: needs a floating dtype, got ",
           name(options.dtype));
  LN_CHECK(low < high, "uniform: low (", low, ") must be below high (", high, ")");
  return draw(shape, gen, options, [low, high](std::array<std::uint32_t, 4> w) {
    std::array<double, 4> out{};
    // 24 random bits keep every value strictly below high after rounding to f32.
    for (int j = 0; j < 4; ++j) out[j] = low + (high - low) * ((w[j] >> 8) * 0x1p-24);
    return out;
  });
}

Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, Generator& gen,
               TensorOptions options) {
  LN_CHECK(!is_floating(options.dtype), "randint: needs an integer dtype, got ",
           name(options.dtype));
  LN_CHECK(low < high && high - low <= (std::int64_t{1} << 32), "randint: need low < high and ",
           "a range of at most 2^32, got [", low, ", ", high, ")");
  auto range = static_cast<std::uint64_t>(high - low);
  return draw(shape, gen, options, [low, range](std::array<std::uint32_t, 4> w) {
    std::array<double, 4> out{};
    for (int j = 0; j < 4; ++j) {
      out[j] = static_cast<double>(low + static_cast<std::int64_t>((w[j] * range) >> 32));
    }
    return out;
  });
}

}  // namespace longnet
