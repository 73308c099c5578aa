#include "nn/loss.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "nn/cuda/cross_entropy.h"
#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/creation.h"
#include "tensor/view.h"

namespace longnet {

namespace {

// Calls body(block, r0) for consecutive chunks of at most chunk_rows rows of x2 (rows, V);
// block is the chunk, contiguous, and r0 its first row.
template <class Body>
void for_each_chunk(const Tensor& x2, std::int64_t chunk_rows, Body body) {
  std::int64_t rows = x2.size(0);
  for (std::int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    body(contiguous(narrow(x2, 0, r0, std::min(chunk_rows, rows - r0))), r0);
  }
}

template <class T>
using Compute = std::conditional_t<std::is_same_v<T, double>, double, float>;

// lse per row and the rows' losses (0 on ignored rows).
void forward_rows(const Tensor& x2, const std::int64_t* target, std::int64_t ignore_index,
                  std::int64_t chunk_rows, const Tensor& lse, std::vector<double>& row_loss) {
  std::int64_t classes = x2.size(1);
  dispatch_floating(x2.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = Compute<T>;
    C* plse = lse.data<C>();
    for_each_chunk(x2, chunk_rows, [&](const Tensor& block, std::int64_t r0) {
      const T* px = block.data<T>();
      std::int64_t n = block.size(0);
#pragma omp parallel for schedule(static) if (n * classes >= cpu::kParallelGrain && n > 1)
      for (std::int64_t i = 0; i < n; ++i) {
        std::int64_t r = r0 + i;
        if (target[r] == ignore_index) continue;
        const T* xr = px + i * classes;
        C hi = static_cast<C>(xr[0]);
        for (std::int64_t v = 1; v < classes; ++v) hi = std::max(hi, static_cast<C>(xr[v]));
        double total = 0;
        for (std::int64_t v = 0; v < classes; ++v) total += std::exp(static_cast<C>(xr[v]) - hi);
        // classes > 0 and the maximum contributes exp(0) = 1, so total >= 1.
        // cppcheck-suppress invalidFunctionArg
        auto l = static_cast<C>(hi + std::log(total));
        plse[r] = l;
        row_loss[static_cast<std::size_t>(r)] =
            static_cast<double>(l) - static_cast<C>(xr[target[r]]);
      }
    });
  });
}

// dx (rows, V) = (exp(x - lse) - onehot(target)) * scale, 0 on ignored rows.
void backward_rows(const Tensor& x2, const std::int64_t* target, std::int64_t ignore_index,
                   std::int64_t chunk_rows, const Tensor& lse, double scale, const Tensor& dx) {
  std::int64_t classes = x2.size(1);
  dispatch_floating(x2.dtype(), "cross_entropy backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = Compute<T>;
    const C* plse = lse.data<C>();
    T* pdx = dx.data<T>();
    auto s = static_cast<C>(scale);
    for_each_chunk(x2, chunk_rows, [&](const Tensor& block, std::int64_t r0) {
      const T* px = block.data<T>();
      std::int64_t n = block.size(0);
#pragma omp parallel for schedule(static) if (n * classes >= cpu::kParallelGrain && n > 1)
      for (std::int64_t i = 0; i < n; ++i) {
        std::int64_t r = r0 + i;
        T* dr = pdx + r * classes;
        if (target[r] == ignore_index || s == C(0)) {
          std::fill(dr, dr + classes, static_cast<T>(C(0)));
          continue;
        }
        const T* xr = px + i * classes;
        C l = plse[r];
        for (std::int64_t v = 0; v < classes; ++v) {
          C p = std::exp(static_cast<C>(xr[v]) - l);
          dr[v] = static_cast<T>((v == target[r] ? p - C(1) : p) * s);
        }
      }
    });
  });
}

}  // namespace

Variable cross_entropy(const Variable& logits, const Tensor& targets, std::int64_t ignore_index,
                       std::int64_t chunk_rows) {
  const Tensor& x = logits.data();
  check_defined(targets, "cross_entropy");
  check_same_device(x, targets, "cross_entropy");
  LN_CHECK(x.dim() >= 1 && x.size(-1) > 0, "cross_entropy: logits ", describe(x),
           " need a non-empty last dim (the classes)");
  LN_CHECK(targets.dtype() == DType::i64 || targets.dtype() == DType::i32,
           "cross_entropy: targets must be i64 or i32, got ", describe(targets));
  Shape row_shape(x.shape().begin(), x.shape().end() - 1);
  LN_CHECK(targets.shape() == row_shape, "cross_entropy: targets ", describe(targets),
           " must have shape ", str(row_shape), " for logits ", describe(x));
  LN_CHECK(chunk_rows > 0, "cross_entropy: chunk_rows must be positive, got ", chunk_rows);

  std::int64_t classes = x.size(-1);
  std::int64_t rows = x.numel() / classes;
  const Shape& shape = x.shape();
  Device device = x.device();
  Tensor x2 = reshape(x, {rows, classes});
  DType stat_dtype = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  DType loss_dtype = x.dtype() == DType::bf16 ? DType::f32 : x.dtype();
  Tensor lse = zeros({rows}, {stat_dtype, device});

  if (device.is_cuda()) {
    // The targets stay on the device in their dtype; the count (and the range check) is the
    // one value that comes back to the host.
    Tensor t = reshape(contiguous(targets), {rows});
    std::int64_t count = cuda::cross_entropy_count(t, classes, ignore_index);
    Tensor row_loss = empty({rows}, {DType::f64, device});
    for_each_chunk(x2, chunk_rows, [&](const Tensor& block, std::int64_t r0) {
      cuda::cross_entropy_forward(block, t, r0, ignore_index, lse, row_loss);
    });
    Tensor loss = empty({}, {loss_dtype, device});
    cuda::cross_entropy_loss(row_loss, count, loss);
    return make_result(
        loss, {logits}, "cross_entropy", [=](const Tensor& g) -> std::vector<Tensor> {
          Tensor dx = empty({rows, classes}, {x2.dtype(), device});
          for_each_chunk(x2, chunk_rows, [&](const Tensor& block, std::int64_t r0) {
            cuda::cross_entropy_backward(block, t, r0, ignore_index, lse, g, count, dx);
          });
          return {reshape(dx, shape)};
        });
  }

  Tensor t64 = contiguous(to(targets, DType::i64));
  const std::int64_t* target = t64.data<std::int64_t>();
  std::int64_t count = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    if (target[r] == ignore_index) continue;
    LN_CHECK(target[r] >= 0 && target[r] < classes, "cross_entropy: target ", target[r], " at row ",
             r, " is outside [0, ", classes, ") and is not ignore_index (", ignore_index, ")");
    ++count;
  }

  std::vector<double> row_loss(static_cast<std::size_t>(rows), 0.0);
  forward_rows(x2, target, ignore_index, chunk_rows, lse, row_loss);
  // Summed in row order after the parallel part: the same loss for every thread count.
  double total = 0;
  for (double l : row_loss) total += l;
  Tensor loss = scalar(count > 0 ? total / static_cast<double>(count) : 0.0, {loss_dtype});

  return make_result(loss, {logits}, "cross_entropy", [=](const Tensor& g) -> std::vector<Tensor> {
    double scale = count > 0 ? g.item() / static_cast<double>(count) : 0.0;
    Tensor dx = empty({rows, classes}, {x2.dtype()});
    backward_rows(x2, t64.data<std::int64_t>(), ignore_index, chunk_rows, lse, scale, dx);
    return {reshape(dx, shape)};
  });
}

}  // namespace longnet
