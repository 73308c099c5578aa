#include "tensor/creation.h"

#include <cmath>

#include "tensor/copy.h"
#include "tensor/cuda/random.h"
#include "tensor/distributions.h"

namespace longnet {

namespace {

// One value per element from the four words of counter first + i / 4, computed in f64 by
// distribution and converted to the requested dtype: on the host, or on the device by the
// same arithmetic (tensor/distributions.h), so both give the same bits. Launch is
// cuda::draw_normal and friends, called as launch(out, seed, first).
template <class Distribution, class Launch>
Tensor draw(const Shape& shape, Generator& gen, TensorOptions options, Distribution distribution,
            Launch launch) {
  std::int64_t n = numel(shape);
  std::int64_t counters = (n + 3) / 4;
  std::uint64_t first = gen.reserve(static_cast<std::uint64_t>(counters));
  if (options.device.is_cuda()) {
    Tensor out = empty(shape, options);
    launch(out, gen.seed(), first);
    return out;
  }
  Tensor host = empty(shape, {DType::f64, Device::cpu()});
  double* out = host.data<double>();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t c = 0; c < counters; ++c) {
    double values[4];
    distribution(distributions::philox_words(first + static_cast<std::uint64_t>(c), gen.seed()),
                 values);
    for (std::int64_t j = 0; j < 4 && 4 * c + j < n; ++j) out[4 * c + j] = values[j];
  }
  return to(host, options.dtype);
}

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
  return draw(shape, gen, options, distributions::Normal{},
              [](const Tensor& out, std::uint64_t seed, std::uint64_t first) {
                cuda::draw_normal(out, seed, first);
              });
}

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, TensorOptions options) {
  LN_CHECK(is_floating(options.dtype), "uniform: needs a floating dtype, got ",
           name(options.dtype));
  LN_CHECK(low < high, "uniform: low (", low, ") must be below high (", high, ")");
  return draw(shape, gen, options, distributions::Uniform{low, high},
              [low, high](const Tensor& out, std::uint64_t seed, std::uint64_t first) {
                cuda::draw_uniform(out, low, high, seed, first);
              });
}

Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, Generator& gen,
               TensorOptions options) {
  LN_CHECK(!is_floating(options.dtype), "randint: needs an integer dtype, got ",
           name(options.dtype));
  LN_CHECK(low < high && high - low <= (std::int64_t{1} << 32), "randint: need low < high and ",
           "a range of at most 2^32, got [", low, ", ", high, ")");
  auto range = static_cast<std::uint64_t>(high - low);
  return draw(shape, gen, options, distributions::Integer{low, range},
              [low, range](const Tensor& out, std::uint64_t seed, std::uint64_t first) {
                cuda::draw_integers(out, low, range, seed, first);
              });
}

}  // namespace longnet
