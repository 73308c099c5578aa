#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "nn/cuda/launch.cuh"
#include "nn/cuda/layer_norm.h"

namespace longnet::cuda {

namespace {

constexpr int kRowThreads = 256;  // 8 warps, one row each
constexpr int kRowsPerBlock = kRowThreads / 32;
constexpr int kColumnThreads = 256;

// V consecutive elements at p as C, and back: one 16-byte access when V > 1 (p is then
// 16-byte aligned), so a warp moves 512 contiguous bytes per access.
template <int V, class T>
struct alignas(sizeof(T) * V) Chunk {
  T v[V];
};

template <int V, class C, class T>
__device__ __forceinline__ void load_chunk(const T* p, C (&out)[V]) {
  Chunk<V, T> c = *reinterpret_cast<const Chunk<V, T>*>(p);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = static_cast<C>(c.v[e]);
}

template <int V, class C, class T>
__device__ __forceinline__ void store_chunk(T* p, const C (&in)[V]) {
  Chunk<V, T> c;
#pragma unroll
  for (int e = 0; e < V; ++e) c.v[e] = static_cast<T>(in[e]);
  *reinterpret_cast<Chunk<V, T>*>(p) = c;
}

// One warp per row, lane l holding chunks l, l + 32, ... of V elements. The statistics
// follow the cpu: two passes in f64 (the mean, then the squares around it, which do not
// cancel the way E[x^2] - E[x]^2 does), rounded once to C.
template <class T, class W, int V>
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
  for (std::int64_t j = lane * V; j < dim; j += 32 * V) {
    C v[V];
    load_chunk<V>(xr + j, v);
#pragma unroll
    for (int e = 0; e < V; ++e) total += v[e];
  }
  double mu = warp_sum(total) / n;
  double squares = 0;
  for (std::int64_t j = lane * V; j < dim; j += 32 * V) {
    C v[V];
    load_chunk<V>(xr + j, v);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      double d = v[e] - mu;
      squares += d * d;
    }
  }
  squares = warp_sum(squares);
  auto m = static_cast<C>(mu);
  auto rs = static_cast<C>(1.0 / sqrt(squares / n + eps));
  T* yr = y + row * dim;
  for (std::int64_t j = lane * V; j < dim; j += 32 * V) {
    C v[V];
    load_chunk<V>(xr + j, v);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      C h = (v[e] - m) * rs;
      if (weight != nullptr) h *= static_cast<C>(weight[j + e]);
      if (bias != nullptr) h += static_cast<C>(bias[j + e]);
      v[e] = h;
    }
    store_chunk<V>(yr + j, v);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
}

// dx, one warp per row as in the forward: dx = rstd * (gy - mean(gy) - xhat * mean(gy *
// xhat)), the two means accumulated in f64 and rounded to C as on the cpu.
template <class T, class W, int V>
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
  // The chunk at j: xhat and gy = dy * weight.
  auto load = [&](std::int64_t j, C(&xhat)[V], C(&gy)[V]) {
    load_chunk<V>(xr + j, xhat);
    load_chunk<V>(gr + j, gy);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      xhat[e] = (xhat[e] - m) * rs;
      if (weight != nullptr) gy[e] *= static_cast<C>(weight[j + e]);
    }
  };
  double sum_gy = 0;
  double sum_gy_xhat = 0;
  for (std::int64_t j = lane * V; j < dim; j += 32 * V) {
    C xhat[V];
    C gy[V];
    load(j, xhat, gy);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      sum_gy += gy[e];
      sum_gy_xhat += gy[e] * xhat[e];
    }
  }
  auto n = static_cast<double>(dim);
  auto a = static_cast<C>(warp_sum(sum_gy) / n);
  auto b = static_cast<C>(warp_sum(sum_gy_xhat) / n);
  T* dxr = dx + row * dim;
  for (std::int64_t j = lane * V; j < dim; j += 32 * V) {
    C xhat[V];
    C gy[V];
    load(j, xhat, gy);
#pragma unroll
    for (int e = 0; e < V; ++e) gy[e] = rs * (gy[e] - a - xhat[e] * b);
    store_chunk<V>(dxr + j, gy);
  }
}

// Calls f with the chunk width the rows allow: 16 bytes of T when every row of every
// pointer starts 16-byte aligned (dim a multiple of the width), else 1.
template <class T, class F>
void with_chunk_width(std::int64_t dim, std::initializer_list<const void*> rows, F&& f) {
  constexpr int kWide = sizeof(T) < 8 ? static_cast<int>(16 / sizeof(T)) : 1;
  bool aligned = dim % kWide == 0;
  for (const void* p : rows) aligned = aligned && reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
  if (kWide > 1 && aligned) {
    f(std::integral_constant<int, kWide>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// Per column j and row block blockIdx.y: the block's sums of dy * xhat and dy in f64. A
// thread block is kPartialColumns columns x kPartialLanes row lanes: lane l sums the rows
// begin + l, begin + l + kPartialLanes, ... in order (a warp reads one row's consecutive
// columns, so loads coalesce, and the lanes keep many rows in flight), then the lanes'
// sums are added in lane order: a fixed order, so the sums repeat exactly run to run.
constexpr int kPartialColumns = 32;
constexpr int kPartialLanes = 8;

template <class T>
__global__ void __launch_bounds__(kPartialColumns* kPartialLanes)
    affine_partial_kernel(const T* g, const T* x, const acc_t<T>* mean, const acc_t<T>* rstd,
                          double* partial_w, double* partial_b, std::int64_t rows, std::int64_t dim,
                          std::int64_t block_rows) {
  using C = acc_t<T>;
  __shared__ double sum_w[kPartialLanes][kPartialColumns];
  __shared__ double sum_b[kPartialLanes][kPartialColumns];
  int column = static_cast<int>(threadIdx.x % kPartialColumns);
  int lane = static_cast<int>(threadIdx.x / kPartialColumns);
  std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kPartialColumns + column;
  std::int64_t blk = blockIdx.y;
  std::int64_t begin = blk * block_rows;
  std::int64_t end = begin + block_rows < rows ? begin + block_rows : rows;
  double acc_w = 0;
  double acc_b = 0;
  if (j < dim) {
    for (std::int64_t r = begin + lane; r < end; r += kPartialLanes) {
      auto gj = static_cast<C>(g[r * dim + j]);
      if (partial_w != nullptr) {
        C xhat = (static_cast<C>(x[r * dim + j]) - mean[r]) * rstd[r];
        acc_w += static_cast<double>(gj * xhat);
      }
      acc_b += gj;
    }
  }
  sum_w[lane][column] = acc_w;
  sum_b[lane][column] = acc_b;
  __syncthreads();
  if (lane != 0 || j >= dim) return;
  double total_w = 0;
  double total_b = 0;
  for (int l = 0; l < kPartialLanes; ++l) {
    total_w += sum_w[l][column];
    total_b += sum_b[l][column];
  }
  if (partial_w != nullptr) partial_w[blk * dim + j] = total_w;
  if (partial_b != nullptr) partial_b[blk * dim + j] = total_b;
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
      with_chunk_width<T>(dim, {x.raw_data(), y.raw_data()}, [&](auto width) {
        forward_kernel<T, W, decltype(width)::value>
            <<<blocks, kRowThreads, 0, stream_for(x.device())>>>(
                device_ptr<const T>(x), ptr_or_null<W>(weight), ptr_or_null<W>(bias), eps,
                device_ptr<T>(y), device_ptr<C>(mean), device_ptr<C>(rstd), rows, dim);
      });
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
        with_chunk_width<T>(dim, {g.raw_data(), x.raw_data(), dx.raw_data()}, [&](auto width) {
          input_grad_kernel<T, W, decltype(width)::value><<<blocks, kRowThreads, 0, stream>>>(
              device_ptr<const T>(g), device_ptr<const T>(x), ptr_or_null<W>(weight),
              device_ptr<const C>(mean), device_ptr<const C>(rstd), device_ptr<T>(dx), rows, dim);
        });
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
      auto partial_blocks = static_cast<unsigned>((dim + kPartialColumns - 1) / kPartialColumns);
      affine_partial_kernel<T>
          <<<dim3(partial_blocks, static_cast<unsigned>(blocks)), kPartialColumns * kPartialLanes,
             0, stream>>>(device_ptr<const T>(g), device_ptr<const T>(x), device_ptr<const C>(mean),
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
