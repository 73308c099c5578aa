// What the GPU tests share: every GPU op is checked against its CPU version, the oracle, on
// fresh random inputs, with outputs poisoned first (DESIGN.md section 9). Cases live in
// TEST_SUITE("gpu"), which the runner skips on machines without a device.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "tensor/copy.h"
#include "tensor/creation.h"

namespace longnet::testing {

inline const Device kGpu = Device::cuda(0);

// The tolerances of DESIGN.md section 9, as max |got - expected| / max |expected|.
constexpr double kGpuF32 = 1e-5;
constexpr double kGpuBf16 = 1e-2;

inline double tolerance_for(DType dtype) { return dtype == DType::bf16 ? kGpuBf16 : kGpuF32; }

// An uninitialised tensor on device filled with NaN (floating) or a sentinel (integers), so
// an op that leaves an element unwritten is caught.
inline Tensor poisoned(const Shape& shape, TensorOptions options) {
  Tensor t = empty(shape, options);
  fill_(t, is_floating(options.dtype) ? std::numeric_limits<double>::quiet_NaN() : -123456789.0);
  return t;
}

// Max |got - expected| over max |expected| (floor 1e-30), both read back as f64; infinite
// when shapes differ or got holds a NaN that expected does not.
inline double relative_error(const Tensor& got, const Tensor& expected) {
  if (got.shape() != expected.shape()) return std::numeric_limits<double>::infinity();
  auto g = to(to(got, Device::cpu()), DType::f64).to_vector<double>();
  auto e = to(to(expected, Device::cpu()), DType::f64).to_vector<double>();
  double diff = 0;
  double scale = 1e-30;
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) != std::isnan(e[i])) return std::numeric_limits<double>::infinity();
    if (std::isnan(e[i])) continue;
    if (std::isinf(e[i]) || std::isinf(g[i])) {
      if (g[i] != e[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    diff = std::max(diff, std::abs(g[i] - e[i]));
    scale = std::max(scale, std::abs(e[i]));
  }
  return diff / scale;
}

}  // namespace longnet::testing
