#include "nn/cuda/launch.cuh"
#include "nn/cuda/layer_norm.h"

namespace longnet::cuda {

namespace {

constexpr int kRowThreads = 256;  // 8 warps, one row each
constexpr int kRowsPerBlock = kRowThreads / 32;
constexpr int kColumnThreads = 256;

// One warp per row. The statistics follow the cpu: two passes in f64 (the mean, then the
// squares around it, which do not cancel the way E[x^2] - E[x]^2 does), rounded once to C.
template <class T, class W>
__global__ void forward_kernel(const T* x, const W* weight, const W* bias, double eps, T* y,
                               acc_t<T>* mean, acc_t<T>* rstd, std::int64_t rows,
                               std::int64_t dim) {
  using C = acc_t<T>;
  std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= rows) return;  // the whole warp leaves together
  const T* xr = x + row * dim;
  auto n = static_cast<double>(dim);
  double total = 0;
  for (std::int64_t j = lane; j < dim; j += 32) total += static_cast<C>(xr[j]);
  double mu = warp_sum(total) / n;
  double squares = 0;
  for (std::int64_t j = lane; j < dim; j += 32) {
    double d = static_cast<C>(xr[j]) - mu;
    squares += d * d;
  }
  squares = warp_sum(squares);
  auto m = static_cast<C>(mu);
  auto rs = static_cast<C>(1.0 / sqrt(squares / n + eps));
  T* yr = y + row * dim;
  for (std::int64_t j = lane; j < dim; j += 32) {
    C h = (static_cast<C>(xr[j]) - m) * rs;
    if (weight != nullptr) h *= static_cast<C>(weight[j]);
    if (bias != nullptr) h += static_cast<C>(bias[j]);
    yr[j] = static_cast<T>(h);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
}

// dx, one warp per row: dx = rstd * (gy - mean(gy) - xhat * mean(gy * xhat)), the two means
// accumulated in f64 and rounded to C as on the cpu.
template <class T, class W>
__global__ void input_grad_kernel(const T* g, const T* x, const W* weight, const acc_t<T>* mean,
                                  const acc_t<T>* rstd, T* dx, std::int64_t rows,
                                  std::int64_t dim) {
  using C = acc_t<T>;
  std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= rows) return;
  const T* xr = x + row * dim;
  const T* gr = g + row * dim;
  C m = mean[row];
  C rs = rstd[row];
  auto xhat = [&](std::int64_t j) { return (static_cast<C>(xr[j]) - m) * rs; };
  auto gy = [&](std::int64_t j) {
    C gj = static_cast<C>(gr[j]);
    return weight != nullptr ? gj * static_cast<C>(weight[j]) : gj;
  };
  double sum_gy = 0;
  double sum_gy_xhat = 0;
  for (std::int64_t j = lane; j < dim; j += 32) {
    C v = gy(j);
    sum_gy += v;
    sum_gy_xhat += v * xhat(j);
  }
  auto n = static_cast<double>(dim);
  auto a = static_cast<C>(warp_sum(sum_gy) / n);
  auto b = static_cast<C>(warp_sum(sum_gy_xhat) / n);
  T* dxr = dx + row * dim;
  for (std::int64_t j = lane; j < dim; j += 32)
    dxr[j] = static_cast<T>(rs * (gy(j) - a - xhat(j) * b));
}

// Per column j and row block blockIdx.y: the block's sums of dy * xhat and dy in f64, in row
// order (loads coalesce across the columns of a warp).
template <class T>
__global__ void affine_partial_kernel(const T* g, const T* x, const acc_t<T>* mean,
                                      const acc_t<T>* rstd, double* partial_w, double* partial_b,
                                      std::int64_t rows, std::int64_t dim,
                                      std::int64_t block_rows) {
  using C = acc_t<T>;
  std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x;
  if (j >= dim) return;
  std::int64_t blk = blockIdx.y;
  std::int64_t begin = blk * block_rows;
  std::int64_t end = begin + block_rows < rows ? begin + block_rows : rows;
  double acc_w = 0;
  double acc_b = 0;
  for (std::int64_t r = begin; r < end; ++r) {
    auto gj = static_cast<C>(g[r * dim + j]);
    if (partial_w != nullptr) {
      C xhat = (static_cast<C>(x[r * dim + j]) - mean[r]) * rstd[r];
      acc_w += static_cast<double>(gj * xhat);
    }
    acc_b += gj;
  }
  if (partial_w != nullptr) partial_w[blk * dim + j] = acc_w;
  if (partial_b != nullptr) partial_b[blk * dim + j] = acc_b;
}

// out[j] = sum over blocks, in block order, of partial[blk, j].
template <class T>
__global__ void sum_blocks_kernel(const double* partial, T* out, std::int64_t blocks,
                                  std::int64_t dim) {
  std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x;
  if (j >= dim) return;
  double total = 0;
  for (std::int64_t blk = 0; blk < blocks; ++blk) total += partial[blk * dim + j];
  out[j] = static_cast<T>(static_cast<acc_t<T>>(total));
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? device_ptr<const T>(t) : nullptr;
}

// Calls f with the element type W of the affine parameters, of dtype affine: T, or float
// beside bf16 inputs (mixed precision keeps LayerNorm parameters in f32).
template <class T, class F>
void with_affine_type(DType affine, F&& f) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (affine == DType::f32) return f(TypeTag<float>{});
  }
  f(TypeTag<T>{});
}

DType affine_dtype(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (weight.defined()) return weight.dtype();
  return bias.defined() ? bias.dtype() : x.dtype();
}

}  // namespace

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  std::int64_t dim = x.size(-1);
  std::int64_t rows = x.numel() / dim;
  if (rows == 0) return;
  DeviceGuard guard(x.device().index);
  dispatch_device_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    with_affine_type<T>(affine_dtype(x, weight, bias), [&](auto wtag) {
      using W = typename decltype(wtag)::type;
      forward_kernel<T, W><<<blocks, kRowThreads, 0, stream_for(x.device())>>>(
          device_ptr<const T>(x), ptr_or_null<W>(weight), ptr_or_null<W>(bias), eps,
          device_ptr<T>(y), device_ptr<C>(mean), device_ptr<C>(rstd), rows, dim);
    });
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

void layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& rstd, std::int64_t row_blocks, const Tensor& dx,
                         const Tensor& dweight, const Tensor& dbias) {
  std::int64_t dim = x.size(-1);
  std::int64_t rows = x.numel() / dim;
  DeviceGuard guard(x.device().index);
  cudaStream_t stream = stream_for(x.device());
  DType affine = affine_dtype(x, weight, dweight.defined() ? dweight : dbias);
  dispatch_device_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    with_affine_type<T>(affine, [&](auto wtag) {
      using W = typename decltype(wtag)::type;
      if (dx.defined() && rows > 0) {
        auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
        input_grad_kernel<T, W><<<blocks, kRowThreads, 0, stream>>>(
            device_ptr<const T>(g), device_ptr<const T>(x), ptr_or_null<W>(weight),
            device_ptr<const C>(mean), device_ptr<const C>(rstd), device_ptr<T>(dx), rows, dim);
        LN_CUDA_CHECK(cudaGetLastError());
      }
      if (!dweight.defined() && !dbias.defined()) return;
      // With no rows the sums are 0: one block of no rows writes the zero partials.
      std::int64_t blocks = row_blocks > 0 ? row_blocks : 1;
      std::int64_t block_rows = rows > 0 ? (rows + blocks - 1) / blocks : 0;
      Tensor partial_w =
          dweight.defined() ? empty({blocks, dim}, {DType::f64, x.device()}) : Tensor();
      Tensor partial_b =
          dbias.defined() ? empty({blocks, dim}, {DType::f64, x.device()}) : Tensor();
      double* pw = partial_w.defined() ? device_ptr<double>(partial_w) : nullptr;
      double* pb = partial_b.defined() ? device_ptr<double>(partial_b) : nullptr;
      auto column_blocks = static_cast<unsigned>((dim + kColumnThreads - 1) / kColumnThreads);
      affine_partial_kernel<T>
          <<<dim3(column_blocks, static_cast<unsigned>(blocks)), kColumnThreads, 0, stream>>>(
              device_ptr<const T>(g), device_ptr<const T>(x), device_ptr<const C>(mean),
              device_ptr<const C>(rstd), pw, pb, rows, dim, block_rows);
      LN_CUDA_CHECK(cudaGetLastError());
      if (pw != nullptr) {
        sum_blocks_kernel<W>
            <<<column_blocks, kColumnThreads, 0, stream>>>(pw, device_ptr<W>(dweight), blocks, dim);
        LN_CUDA_CHECK(cudaGetLastError());
      }
      if (pb != nullptr) {
        sum_blocks_kernel<W>
            <<<column_blocks, kColumnThreads, 0, stream>>>(pb, device_ptr<W>(dbias), blocks, dim);
        LN_CUDA_CHECK(cudaGetLastError());
      }
    });
  });
}

}  // namespace longnet::cuda
