#include "tensor/matmul.h"

#include <optional>

#include <Eigen/Core>

#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/cuda/matmul.h"

namespace longnet {

namespace {

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
using Stride = Eigen::OuterStride<>;

// Layout of the last two dims as Eigen sees them: row-major with leading dimension ld,
// or column-major (a transposed view) with leading dimension ld.
struct MatrixLayout {
  bool row_major = true;
  std::int64_t ld = 0;
};

std::optional<MatrixLayout> matrix_layout(const Tensor& t) {
  std::int64_t rows = t.size(-2);
  std::int64_t cols = t.size(-1);
  std::int64_t rs = t.stride(-2);
  std::int64_t cs = t.stride(-1);
  // A stride along a dim of size 1 is never used; treat it as the natural one.
  if (cs == 1 || cols == 1) {
    std::int64_t ld = rows == 1 ? std::max<std::int64_t>(cols, 1) : rs;
    if (ld >= std::max<std::int64_t>(cols, 1)) return MatrixLayout{true, ld};
  }
  if (rs == 1 || rows == 1) {
    std::int64_t ld = cols == 1 ? std::max<std::int64_t>(rows, 1) : cs;
    if (ld >= std::max<std::int64_t>(rows, 1)) return MatrixLayout{false, ld};
  }
  return std::nullopt;
}

// Calls f(map) with an Eigen map of matrix ptr in the given layout.
template <class T, class F>
void with_map(const T* ptr, std::int64_t rows, std::int64_t cols, MatrixLayout layout, F f) {
  if (layout.row_major) {
    f(Eigen::Map<const RowMajor<T>, 0, Stride>(ptr, rows, cols, Stride(layout.ld)));
  } else {
    f(Eigen::Map<const ColMajor<T>, 0, Stride>(ptr, rows, cols, Stride(layout.ld)));
  }
}

template <class T>
void matmul_cpu(const Tensor& a, const Tensor& b, const Tensor& out, const Shape& batch) {
  std::int64_t m = a.size(-2);
  std::int64_t k = a.size(-1);
  std::int64_t n = b.size(-1);
  MatrixLayout la = *matrix_layout(a);
  MatrixLayout lb = *matrix_layout(b);
  auto batch_strides = [&](const Tensor& t) {
    Tensor lead = Tensor(t.storage(), Shape(t.shape().begin(), t.shape().end() - 2),
                         Strides(t.strides().begin(), t.strides().end() - 2), 0, t.dtype());
    return cpu::broadcast_strides(lead, batch);
  };
  Strides sa = batch_strides(a);
  Strides sb = batch_strides(b);
  Strides so(out.strides().begin(), out.strides().end() - 2);
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* po = out.data<T>();
  std::int64_t count = numel(batch);

  auto one = [&](std::int64_t i) {
    std::int64_t oa = 0;
    std::int64_t ob = 0;
    std::int64_t oo = 0;
    std::int64_t rest = i;
    for (auto d = static_cast<std::int64_t>(batch.size()) - 1; d >= 0; --d) {
      std::int64_t idx = rest % batch[d];
      rest /= batch[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
      oo += idx * so[d];
    }
    Eigen::Map<RowMajor<T>> c(po + oo, m, n);
    with_map(pa + oa, m, k, la, [&](const auto& x) {
      with_map(pb + ob, k, n, lb, [&](const auto& y) { c.noalias() = x * y; });
    });
  };
  // Many small products: one per thread (Eigen then stays single-threaded inside).
  // Few large ones: one at a time, each spread over threads by Eigen.
  if (count > 1 && m * n * k < (std::int64_t{1} << 21)) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < count; ++i) one(i);
  } else {
    for (std::int64_t i = 0; i < count; ++i) one(i);
  }
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_defined(a, "matmul");
  check_defined(b, "matmul");
  LN_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul needs operands with at least 2 dims, got ",
           describe(a), " and ", describe(b));
  check_same_dtype(a, b, "matmul");
  check_same_device(a, b, "matmul");
  LN_CHECK(is_floating(a.dtype()), "matmul: needs a floating dtype, got ", describe(a));
  LN_CHECK(a.size(-1) == b.size(-2), "matmul: inner dims differ: ", describe(a), " times ",
           describe(b));
  Shape batch = broadcast_shapes(Shape(a.shape().begin(), a.shape().end() - 2),
                                 Shape(b.shape().begin(), b.shape().end() - 2), "matmul");
  Shape out_shape = batch;
  out_shape.push_back(a.size(-2));
  out_shape.push_back(b.size(-1));

  if (a.dtype() == DType::bf16 && a.device().is_cpu()) {
    // bf16 on the CPU: products in f32, rounded once at the end.
    return to(matmul(to(a, DType::f32), to(b, DType::f32)), DType::bf16);
  }
  Tensor x = matrix_layout(a) ? a : contiguous(a);
  Tensor y = matrix_layout(b) ? b : contiguous(b);
  Tensor out = empty(out_shape, {a.dtype(), a.device()});
  if (out.numel() == 0) return out;
  if (a.size(-1) == 0) {
    fill_(out, 0.0);
    return out;
  }
  if (a.device().is_cuda()) {
    cuda::matmul(x, y, out);
    return out;
  }
  if (a.dtype() == DType::f64) {
    matmul_cpu<double>(x, y, out, batch);
  } else {
    matmul_cpu<float>(x, y, out, batch);
  }
  return out;
}

}  // namespace longnet
