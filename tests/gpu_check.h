// What the GPU tests share: every GPU op is checked against its CPU version, the oracle, on
// fresh random inputs, with outputs poisoned first (DESIGN.md section 9). Cases live in
// TEST_SUITE("gpu"), which the runner skips on machines without a device.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"

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

// t's values on the host as f64 (exact for f32 and bf16): two results compare bit for bit.
inline std::vector<double> host_values(const Tensor& t) {
  return to(to(t, Device::cpu()), DType::f64).to_vector<double>();
}

// Max |got - expected| over max |expected| (floor 1e-30), both read back as f64; infinite
// when shapes differ or got holds a NaN that expected does not.
inline double relative_error(const Tensor& got, const Tensor& expected) {
  if (got.shape() != expected.shape()) return std::numeric_limits<double>::infinity();
  auto g = host_values(got);
  auto e = host_values(expected);
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

// t copied to the GPU.
inline Tensor gpu(const Tensor& t) { return to(t, kGpu); }

// A GPU result against the CPU oracle: defined, on the GPU, within tol (relative_error).
inline void check_close(const Tensor& got, const Tensor& expected, double tol,
                        const std::string& what) {
  REQUIRE(got.defined());
  CHECK_MESSAGE(got.device() == kGpu, what, ": on the host");
  double err = relative_error(got, expected);
  CHECK_MESSAGE(err <= tol, what, ": relative error ", err, " > ", tol);
}

// How attention inputs lie in GPU memory. bf16 with D == Dv in {32, 64, 128} runs on tensor
// cores when every row is 16-byte aligned (contiguous, strided); misaligned rows take the
// CUDA-core kernel (dilated) or are copied first (block-sparse).
enum class Layout { contiguous, strided, misaligned };

inline const char* name(Layout layout) {
  switch (layout) {
    case Layout::contiguous:
      return "contiguous";
    case Layout::strided:
      return "strided";
    case Layout::misaligned:
      return "misaligned";
  }
  return "";
}

// t (B, N, H, D) on the GPU in the given layout. strided: transposed tensors (q, dout) as a
// view of a (B, H, N, D) tensor, the others inside rows of D + 8 elements from element 8;
// misaligned: inside rows of D + 3 elements from element 1. The spare elements are NaN.
inline Tensor place(const Tensor& t, Layout layout, bool transposed) {
  Tensor g = to(t, kGpu);
  if (layout == Layout::contiguous) return g;
  if (layout == Layout::strided && transposed) {
    return transpose(contiguous(transpose(g, 1, 2)), 1, 2);
  }
  const bool aligned = layout == Layout::strided;
  Tensor wide =
      poisoned({t.size(0), t.size(1), t.size(2), t.size(3) + (aligned ? 8 : 3)}, {t.dtype(), kGpu});
  Tensor view = narrow(wide, 3, aligned ? 8 : 1, t.size(3));
  copy_(view, g);
  return view;
}

}  // namespace longnet::testing
