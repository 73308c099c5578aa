#include "nn/layer_norm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "autograd/ops.h"
#include "nn/cuda/layer_norm.h"
#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/creation.h"

namespace longnet {

namespace {

// The backward pass splits the rows into blocks fixed by the row count alone and sums the
// blocks' weight and bias gradients in block order: one summation order for every thread
// count. At most kMaxBlocks partial rows of D doubles are held.
constexpr std::int64_t kMaxBlocks = 256;
constexpr std::int64_t kMinBlockRows = 64;

// Elementwise arithmetic type: f64 for f64 tensors, f32 for f32 and bf16.
template <class T>
using Compute = std::conditional_t<std::is_same_v<T, double>, double, float>;

void check_affine(const Variable& p, const Tensor& x, std::int64_t dim, const char* what) {
  if (!p.defined()) return;
  LN_CHECK(p.shape() == Shape{dim}, "layer_norm: ", what, " ", describe(p.data()),
           " must have shape [", dim, "] for input ", describe(x));
  // Mixed precision keeps the parameters in f32 beside bf16 inputs.
  LN_CHECK(p.dtype() == x.dtype() || (p.dtype() == DType::f32 && x.dtype() == DType::bf16),
           "layer_norm: ", what, " ", describe(p.data()), " must have the dtype of input ",
           describe(x), " (or f32 beside a bf16 input)");
  check_same_device(x, p.data(), "layer_norm");
}

// Calls f with the element type W of the affine parameters, of dtype affine: T, or float
// beside bf16 inputs.
template <class T, class F>
void with_affine_type(DType affine, F&& f) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (affine == DType::f32) return f(TypeTag<float>{});
  }
  f(TypeTag<T>{});
}

using cuda::layer_norm_affine_dtype;

// Calls f with the element type Y of y and dy, of dtype out: T, or bf16 beside f32 x (the
// cast to the compute dtype fused into the norm).
template <class T, class F>
void with_output_type(DType out, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (out == DType::bf16) return f(TypeTag<bf16>{});
  }
  f(TypeTag<T>{});
}

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// The cpu forward pass: y, mean and rstd as layer_norm() describes, one row per iteration.
void forward_cpu(const Tensor& xc, const Tensor& wc, const Tensor& bc, double eps, const Tensor& y,
                 const Tensor& mean, const Tensor& rstd) {
  std::int64_t dim = xc.size(-1);
  std::int64_t rows = xc.numel() / dim;
  dispatch_floating(xc.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_affine_type<T>(layer_norm_affine_dtype(xc, wc, bc), [&](auto wtag) {
      with_output_type<T>(y.dtype(), [&](auto ytag) {
        using W = typename decltype(wtag)::type;
        using Y = typename decltype(ytag)::type;
        using C = Compute<T>;
        const T* px = xc.data<T>();
        const W* pw = data_or_null<W>(wc);
        const W* pb = data_or_null<W>(bc);
        Y* py = y.data<Y>();
        C* pm = mean.data<C>();
        C* pr = rstd.data<C>();
        auto n = static_cast<double>(dim);
#pragma omp parallel for schedule(static) if (rows * dim >= cpu::kParallelGrain && rows > 1)
        for (std::int64_t r = 0; r < rows; ++r) {
          const T* xr = px + r * dim;
          // Two passes in f64: the mean first, then the variance around it, which does not
          // cancel the way E[x^2] - E[x]^2 does.
          double total = 0;
          for (std::int64_t j = 0; j < dim; ++j) total += static_cast<C>(xr[j]);
          double mu = total / n;
          double squares = 0;
          for (std::int64_t j = 0; j < dim; ++j) {
            double d = static_cast<C>(xr[j]) - mu;
            squares += d * d;
          }
          auto m = static_cast<C>(mu);
          auto rs = static_cast<C>(1.0 / std::sqrt(squares / n + eps));
          Y* yr = py + r * dim;
          for (std::int64_t j = 0; j < dim; ++j) {
            C h = (static_cast<C>(xr[j]) - m) * rs;
            if (pw != nullptr) h *= static_cast<C>(pw[j]);
            if (pb != nullptr) h += static_cast<C>(pb[j]);
            yr[j] = static_cast<Y>(h);
          }
          pm[r] = m;
          pr[r] = rs;
        }
      });
    });
  });
}

// The cpu backward pass over row blocks (see kMaxBlocks); writes the defined ones of dx, dw
// and db.
void backward_cpu(const Tensor& gc, const Tensor& xc, const Tensor& wc, const Tensor& mean,
                  const Tensor& rstd, std::int64_t blocks, const Tensor& dx, const Tensor& dw,
                  const Tensor& db) {
  std::int64_t dim = xc.size(-1);
  std::int64_t rows = xc.numel() / dim;
  bool need_w = dw.defined();
  bool need_b = db.defined();
  bool need_x = dx.defined();
  std::int64_t block_rows = blocks > 0 ? (rows + blocks - 1) / blocks : 0;
  auto partial_size = static_cast<std::size_t>(blocks * dim);
  std::vector<double> partial_w(need_w ? partial_size : 0, 0.0);
  std::vector<double> partial_b(need_b ? partial_size : 0, 0.0);

  dispatch_floating(xc.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_affine_type<T>(layer_norm_affine_dtype(xc, wc, dw.defined() ? dw : db), [&](auto wtag) {
      with_output_type<T>(gc.dtype(), [&](auto ytag) {
        using W = typename decltype(wtag)::type;
        using Y = typename decltype(ytag)::type;
        using C = Compute<T>;
        const T* px = xc.data<T>();
        const Y* pg = gc.data<Y>();
        const W* pw = data_or_null<W>(wc);
        const C* pm = mean.data<C>();
        const C* pr = rstd.data<C>();
        T* pdx = need_x ? dx.data<T>() : nullptr;
        auto n = static_cast<double>(dim);
#pragma omp parallel for schedule(static) if (rows * dim >= cpu::kParallelGrain && blocks > 1)
        for (std::int64_t blk = 0; blk < blocks; ++blk) {
          double* acc_w = need_w ? partial_w.data() + blk * dim : nullptr;
          double* acc_b = need_b ? partial_b.data() + blk * dim : nullptr;
          std::int64_t end = std::min(rows, (blk + 1) * block_rows);
          for (std::int64_t r = blk * block_rows; r < end; ++r) {
            const T* xr = px + r * dim;
            const Y* gr = pg + r * dim;
            C m = pm[r];
            C rs = pr[r];
            auto xhat = [&](std::int64_t j) { return (static_cast<C>(xr[j]) - m) * rs; };
            auto gy = [&](std::int64_t j) {
              C gj = static_cast<C>(gr[j]);
              return pw != nullptr ? gj * static_cast<C>(pw[j]) : gj;
            };
            if (pdx != nullptr) {
              double sum_gy = 0;
              double sum_gy_xhat = 0;
              for (std::int64_t j = 0; j < dim; ++j) {
                C v = gy(j);
                sum_gy += v;
                sum_gy_xhat += v * xhat(j);
              }
              auto a = static_cast<C>(sum_gy / n);
              auto b = static_cast<C>(sum_gy_xhat / n);
              T* dxr = pdx + r * dim;
              for (std::int64_t j = 0; j < dim; ++j) {
                dxr[j] = static_cast<T>(rs * (gy(j) - a - xhat(j) * b));
              }
            }
            for (std::int64_t j = 0; acc_w != nullptr && j < dim; ++j) {
              acc_w[j] += static_cast<double>(static_cast<C>(gr[j]) * xhat(j));
            }
            for (std::int64_t j = 0; acc_b != nullptr && j < dim; ++j) {
              acc_b[j] += static_cast<C>(gr[j]);
            }
          }
        }
        auto reduce = [&](const std::vector<double>& partial, const Tensor& out) {
          W* po = out.data<W>();
          for (std::int64_t j = 0; j < dim; ++j) {
            double total = 0;
            for (std::int64_t blk = 0; blk < blocks; ++blk) total += partial[blk * dim + j];
            po[j] = static_cast<W>(static_cast<Compute<W>>(total));
          }
        };
        if (need_w) reduce(partial_w, dw);
        if (need_b) reduce(partial_b, db);
      });
    });
  });
}

// layer_norm(), of gelu(x) with gelu_first: the GELU is applied by the GPU kernels as they
// read x (and its output never stored); the CPU runs gelu then the norm.
Variable norm(const Variable& x, const Variable& weight, const Variable& bias, double eps,
              std::optional<DType> out, bool gelu_first) {
  const Tensor& xd = x.data();
  if (gelu_first && !xd.device().is_cuda()) return norm(gelu(x), weight, bias, eps, out, false);
  DType y_dtype = out.value_or(xd.dtype());
  if (y_dtype != xd.dtype() && !(xd.dtype() == DType::f32 && y_dtype == DType::bf16)) {
    return to(norm(x, weight, bias, eps, std::nullopt, gelu_first), y_dtype);
  }
  LN_CHECK(xd.dim() >= 1 && xd.size(-1) > 0, "layer_norm: input ", describe(xd),
           " needs a non-empty last dim");
  LN_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got ", eps);
  std::int64_t dim = xd.size(-1);
  check_affine(weight, xd, dim, "weight");
  check_affine(bias, xd, dim, "bias");
  LN_CHECK(!weight.defined() || !bias.defined() || weight.dtype() == bias.dtype(),
           "layer_norm: weight ", describe(weight.data()), " and bias ", describe(bias.data()),
           " must have one dtype");

  Tensor xc = contiguous(xd);
  Tensor wc = weight.defined() ? contiguous(weight.data()) : Tensor();
  Tensor bc = bias.defined() ? contiguous(bias.data()) : Tensor();
  std::int64_t rows = xc.numel() / dim;
  DType stat_dtype = xd.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Device device = xd.device();
  Tensor mean = empty({rows}, {stat_dtype, device});
  Tensor rstd = empty({rows}, {stat_dtype, device});
  Tensor y = empty(xd.shape(), {y_dtype, device});

  if (device.is_cuda()) {
    cuda::layer_norm_forward(xc, wc, bc, eps, gelu_first, y, mean, rstd);
  } else {
    forward_cpu(xc, wc, bc, eps, y, mean, rstd);
  }

  bool need_x = x.requires_grad();
  bool need_w = weight.defined() && weight.requires_grad();
  bool need_b = bias.defined() && bias.requires_grad();
  return make_result(y, {x, weight, bias}, gelu_first ? "gelu_layer_norm" : "layer_norm",
                     [=](const Tensor& g) -> std::vector<Tensor> {
                       Tensor gc = contiguous(g);
                       Tensor dx = need_x ? empty(xc.shape(), {xc.dtype(), device}) : Tensor();
                       Tensor dw = need_w ? empty({dim}, {wc.dtype(), device}) : Tensor();
                       Tensor db = need_b ? empty({dim}, {bc.dtype(), device}) : Tensor();
                       if (device.is_cuda()) {
                         cuda::layer_norm_backward(gc, xc, gelu_first, wc, mean, rstd, dx, dw, db);
                       } else {
                         std::int64_t blocks =
                             std::min(kMaxBlocks, (rows + kMinBlockRows - 1) / kMinBlockRows);
                         backward_cpu(gc, xc, wc, mean, rstd, blocks, dx, dw, db);
                       }
                       return {dx, dw, db};
                     });
}

}  // namespace

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps,
                    std::optional<DType> out) {
  return norm(x, weight, bias, eps, out, false);
}

Variable gelu_layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                         double eps, std::optional<DType> out) {
  return norm(x, weight, bias, eps, out, true);
}

LayerNorm::LayerNorm(std::int64_t dim, double eps, bool affine, TensorOptions options)
    : dim_(dim), eps_(eps) {
  LN_CHECK(dim > 0, "LayerNorm: dim must be positive, got ", dim);
  LN_CHECK(eps >= 0, "LayerNorm: eps must be >= 0, got ", eps);
  if (affine) {
    register_parameter("weight", &LayerNorm::weight_, ones({dim}, options));
    register_parameter("bias", &LayerNorm::bias_, zeros({dim}, options));
  }
}

Variable LayerNorm::forward(const Variable& x, std::optional<DType> out) const {
  LN_CHECK(x.dim() >= 1 && x.size(-1) == dim_, "LayerNorm(", dim_, "): input ", describe(x.data()),
           " needs last dim ", dim_);
  return layer_norm(x, weight_, bias_, eps_, out);
}

Variable LayerNorm::forward_gelu(const Variable& x, std::optional<DType> out) const {
  LN_CHECK(x.dim() >= 1 && x.size(-1) == dim_, "LayerNorm(", dim_, "): input ", describe(x.data()),
           " needs last dim ", dim_);
  return gelu_layer_norm(x, weight_, bias_, eps_, out);
}

}  // namespace longnet
