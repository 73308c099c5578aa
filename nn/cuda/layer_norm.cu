#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "nn/cuda/launch.cuh"
#include "nn/cuda/layer_norm.h"
#include "tensor/cuda/gelu.cuh"

namespace longnet::cuda {

namespace {

// A row block is one thread block: thread t holds chunks t, t + threads, ... of V elements
// of its rows (V > 1: one 16-byte access each, so a warp moves 512 contiguous bytes). The
// first kCachedChunks chunks of each thread stay in registers between the passes over a
// row; wider rows re-read the rest. Every load of a row is issued at once, by threads of
// one chunk each for the model's widths (768 and 3072), so the kernels run at memory
// speed instead of waiting on one warp's chain of loads per row.
constexpr int kMaxRowThreads = 512;
constexpr int kCachedChunks = 2;
// Rows of one backward block: at least kBackwardRows, more where that would make over
// kMaxBackwardBlocks blocks. The weight and bias sums of its columns are kept over them, so
// the partial sums written are at most kMaxBackwardBlocks x D floats each (24 MiB for the
// FFN's 3072 columns, whatever the row count: 1M rows of 32 would be 768 MiB).
constexpr std::int64_t kBackwardRows = 32;
constexpr std::int64_t kMaxBackwardBlocks = 2048;
constexpr int kPartialColumns = 32;
constexpr int kPartialLanes = 32;

// V consecutive elements at p as C, and back: one 16-byte access when V > 1 (p is then
// 16-byte aligned).
template <int V, class T>
struct alignas(sizeof(T) * V) Chunk {
  T v[V];
};

template <int V, class T>
__device__ __forceinline__ Chunk<V, T> load_chunk(const T* p) {
  return *reinterpret_cast<const Chunk<V, T>*>(p);
}

template <int V, class C, class T>
__device__ __forceinline__ void store_chunk(T* p, const C (&in)[V]) {
  Chunk<V, T> c;
#pragma unroll
  for (int e = 0; e < V; ++e) c.v[e] = static_cast<T>(in[e]);
  *reinterpret_cast<Chunk<V, T>*>(p) = c;
}

// One row of V-element chunks: this thread's first kCachedChunks in registers.
template <int V, class T>
struct CachedRow {
  const T* row;
  Chunk<V, T> cache[kCachedChunks];

  __device__ __forceinline__ void fill(const T* r, int chunks) {
    row = r;
#pragma unroll
    for (int c = 0; c < kCachedChunks; ++c) {
      int q = c * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x);
      if (q < chunks) cache[c] = load_chunk<V>(r + static_cast<std::int64_t>(q) * V);
    }
  }

  // Chunk q, this thread's c-th, as C values.
  template <class C>
  __device__ __forceinline__ void get(int c, int q, C (&out)[V]) const {
    Chunk<V, T> v = c < kCachedChunks ? cache[c < kCachedChunks ? c : 0]
                                      : load_chunk<V>(row + static_cast<std::int64_t>(q) * V);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = static_cast<C>(v.v[e]);
  }
};

// Calls f(c, q) for this thread's chunks q of a row of `chunks`, c counting them; c is a
// constant below kCachedChunks (once inlined), so cached chunks come from registers.
template <class F>
__device__ __forceinline__ void for_chunks(int chunks, F&& f) {
  int threads = static_cast<int>(blockDim.x);
#pragma unroll
  for (int c = 0; c < kCachedChunks; ++c) {
    int q = c * threads + static_cast<int>(threadIdx.x);
    if (q < chunks) f(c, q);
  }
  for (int q = kCachedChunks * threads + static_cast<int>(threadIdx.x); q < chunks; q += threads) {
    f(kCachedChunks, q);
  }
}

// The sums over the thread block of each v[i] (every thread gets them): warps by a fixed
// butterfly, then warps in order, so the result is the same on every run. scratch holds
// 32 x N doubles; a barrier first lets a previous call's readers finish.
template <int N>
__device__ __forceinline__ void block_sum(double (&v)[N], double* scratch) {
  int warp = static_cast<int>(threadIdx.x / 32);
  int warps = static_cast<int>((blockDim.x + 31) / 32);
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(v[i]);
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[warp * N + i] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    double total = 0;
    for (int w = 0; w < warps; ++w) total += scratch[w * N + i];
    v[i] = total;
  }
}

// The norm's input from loaded x: x itself, or with kGelu gelu(x) rounded to T, the value
// the unfused gelu op would have stored.
template <bool kGelu, class T, int V, class C>
__device__ __forceinline__ void prologue(C (&v)[V]) {
  if constexpr (kGelu) {
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = static_cast<C>(static_cast<T>(gelu(v[e])));
  }
}

template <class W, int V, class C>
__device__ __forceinline__ void load_affine(const W* p, std::int64_t j, C (&out)[V]) {
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = p != nullptr ? static_cast<C>(p[j + e]) : C(1);
}

// One thread block per row. The statistics follow the cpu's two passes (the mean, then
// the squares around it, which do not cancel the way E[x^2] - E[x]^2 does): each thread
// sums its few elements in C, the threads' sums are added in f64 and rounded once to C.
template <class T, class Y, class W, int V, bool kGelu>
__global__ void __launch_bounds__(kMaxRowThreads)
    forward_kernel(const T* x, const W* weight, const W* bias, double eps, Y* y, acc_t<T>* mean,
                   acc_t<T>* rstd, std::int64_t dim) {
  using C = acc_t<T>;
  __shared__ double scratch[32];
  std::int64_t row = blockIdx.x;
  int chunks = static_cast<int>(dim / V);
  CachedRow<V, T> xr;
  xr.fill(x + row * dim, chunks);
  auto n = static_cast<double>(dim);
  C sum = 0;
  for_chunks(chunks, [&](int c, int q) {
    C v[V];
    xr.get(c, q, v);
    prologue<kGelu, T>(v);
#pragma unroll
    for (int e = 0; e < V; ++e) sum += v[e];
  });
  double total[1] = {static_cast<double>(sum)};
  block_sum(total, scratch);
  auto m = static_cast<C>(total[0] / n);
  C squares = 0;
  for_chunks(chunks, [&](int c, int q) {
    C v[V];
    xr.get(c, q, v);
    prologue<kGelu, T>(v);
#pragma unroll
    for (int e = 0; e < V; ++e) squares += (v[e] - m) * (v[e] - m);
  });
  total[0] = static_cast<double>(squares);
  block_sum(total, scratch);
  auto rs = static_cast<C>(1.0 / sqrt(total[0] / n + eps));
  Y* yr = y + row * dim;
  for_chunks(chunks, [&](int c, int q) {
    C v[V];
    C w[V];
    xr.get(c, q, v);
    prologue<kGelu, T>(v);
    std::int64_t j = static_cast<std::int64_t>(q) * V;
    load_affine<W, V>(weight, j, w);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      v[e] = (v[e] - m) * rs * w[e];
      if (bias != nullptr) v[e] += static_cast<C>(bias[j + e]);
    }
    store_chunk<V>(yr + j, v);
  });
  if (threadIdx.x == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
}

// Rows [blockIdx.x * block_rows, +block_rows): dx = rstd * (gy - mean(gy) - xhat *
// mean(gy * xhat)) with gy = dy * weight, the two means added over the block in f64 as in
// the forward; and, when partial_w or partial_b is given, this block's sums of dy * xhat and
// dy per column (in C, f32 or f64, over its rows in order), written to row blockIdx.x of
// the partials.
// Each thread owns its columns, so the sums need no atomics: the cached chunks' sums stay
// in registers, wider rows add the rest into the partials in place.
template <class T, class Y, class W, int V, bool kGelu>
__global__ void __launch_bounds__(kMaxRowThreads)
    backward_kernel(const Y* g, const T* x, const W* weight, const acc_t<T>* mean,
                    const acc_t<T>* rstd, T* dx, acc_t<T>* partial_w, acc_t<T>* partial_b,
                    std::int64_t rows, std::int64_t dim, std::int64_t block_rows) {
  using C = acc_t<T>;
  __shared__ double scratch[64];
  int chunks = static_cast<int>(dim / V);
  std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * block_rows;
  std::int64_t end = begin + block_rows < rows ? begin + block_rows : rows;
  bool sums = partial_w != nullptr || partial_b != nullptr;
  C* own_w = partial_w != nullptr ? partial_w + blockIdx.x * dim : nullptr;
  C* own_b = partial_b != nullptr ? partial_b + blockIdx.x * dim : nullptr;
  C acc_w[kCachedChunks][V] = {};
  C acc_b[kCachedChunks][V] = {};
  if (sums) {
    for_chunks(chunks, [&](int c, int q) {
      if (c < kCachedChunks) return;
      for (int e = 0; e < V; ++e) {
        std::int64_t j = static_cast<std::int64_t>(q) * V + e;
        if (own_w != nullptr) own_w[j] = 0;
        if (own_b != nullptr) own_b[j] = 0;
      }
    });
  }
  auto n = static_cast<double>(dim);
  CachedRow<V, T> xr;
  CachedRow<V, Y> gr;
  for (std::int64_t row = begin; row < end; ++row) {
    xr.fill(x + row * dim, chunks);
    gr.fill(g + row * dim, chunks);
    C m = mean[row];
    C rs = rstd[row];
    // The chunk at (c, q): xhat, dy and gy.
    auto load = [&](int c, int q, C(&xhat)[V], C(&dy)[V], C(&gy)[V]) {
      C w[V];
      xr.get(c, q, xhat);
      prologue<kGelu, T>(xhat);
      gr.get(c, q, dy);
      load_affine<W, V>(weight, static_cast<std::int64_t>(q) * V, w);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        xhat[e] = (xhat[e] - m) * rs;
        gy[e] = dy[e] * w[e];
      }
    };
    if (dx != nullptr) {
      C sum_gy = 0;
      C sum_gy_xhat = 0;
      for_chunks(chunks, [&](int c, int q) {
        C xhat[V];
        C dy[V];
        C gy[V];
        load(c, q, xhat, dy, gy);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          sum_gy += gy[e];
          sum_gy_xhat += gy[e] * xhat[e];
        }
      });
      double total[2] = {static_cast<double>(sum_gy), static_cast<double>(sum_gy_xhat)};
      block_sum(total, scratch);
      auto a = static_cast<C>(total[0] / n);
      auto b = static_cast<C>(total[1] / n);
      T* dxr = dx + row * dim;
      for_chunks(chunks, [&](int c, int q) {
        C xhat[V];
        C dy[V];
        C gy[V];
        load(c, q, xhat, dy, gy);
#pragma unroll
        for (int e = 0; e < V; ++e) gy[e] = rs * (gy[e] - a - xhat[e] * b);
        if constexpr (kGelu) {
          C u[V];
          xr.get(c, q, u);
#pragma unroll
          for (int e = 0; e < V; ++e) gy[e] *= gelu_grad(u[e]);
        }
        store_chunk<V>(dxr + static_cast<std::int64_t>(q) * V, gy);
      });
    }
    if (!sums) continue;
    for_chunks(chunks, [&](int c, int q) {
      C xhat[V];
      C dy[V];
      C gy[V];
      load(c, q, xhat, dy, gy);
      if (c < kCachedChunks) {
        int k = c < kCachedChunks ? c : 0;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          acc_w[k][e] += dy[e] * xhat[e];
          acc_b[k][e] += dy[e];
        }
        return;
      }
      for (int e = 0; e < V; ++e) {
        std::int64_t j = static_cast<std::int64_t>(q) * V + e;
        if (own_w != nullptr) own_w[j] += dy[e] * xhat[e];
        if (own_b != nullptr) own_b[j] += dy[e];
      }
    });
  }
  if (!sums) return;
  for_chunks(chunks, [&](int c, int q) {
    if (c >= kCachedChunks) return;
    int k = c < kCachedChunks ? c : 0;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      std::int64_t j = static_cast<std::int64_t>(q) * V + e;
      if (own_w != nullptr) own_w[j] = acc_w[k][e];
      if (own_b != nullptr) own_b[j] = acc_b[k][e];
    }
  });
}

// Threads per row block for rows of dim elements in chunks of V: one chunk each, in whole
// warps, at most kMaxRowThreads.
unsigned row_threads(std::int64_t dim, int v) {
  std::int64_t chunks = dim / v;
  std::int64_t warps = (chunks + 31) / 32;
  return static_cast<unsigned>(std::min<std::int64_t>(warps * 32, kMaxRowThreads));
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

// out[j] = sum over blocks, in block order within each of kPartialLanes lanes (lane l adds
// blocks l, l + lanes, ...) and then over lanes in order, of partial[blk, j], in f64: a
// fixed order, so the sums repeat exactly run to run. A thread block is kPartialColumns
// columns x kPartialLanes lanes; a warp reads one partial row's consecutive columns.
template <class P, class T>
__global__ void __launch_bounds__(kPartialColumns* kPartialLanes)
    sum_partials_kernel(const P* partial, T* out, std::int64_t blocks, std::int64_t dim) {
  __shared__ double sums[kPartialLanes][kPartialColumns];
  int column = static_cast<int>(threadIdx.x % kPartialColumns);
  int lane = static_cast<int>(threadIdx.x / kPartialColumns);
  std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kPartialColumns + column;
  double total = 0;
  if (j < dim) {
    for (std::int64_t blk = lane; blk < blocks; blk += kPartialLanes) {
      total += partial[blk * dim + j];
    }
  }
  sums[lane][column] = total;
  __syncthreads();
  if (lane != 0 || j >= dim) return;
  total = 0;
  for (int l = 0; l < kPartialLanes; ++l) total += sums[l][column];
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

// Calls f with the element type Y of y and dy, of dtype out: T, or bf16 beside f32 x.
template <class T, class F>
void with_output_type(DType out, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (out == DType::bf16) return f(TypeTag<__nv_bfloat16>{});
  }
  f(TypeTag<T>{});
}

// Calls f with std::bool_constant<gelu>.
template <class F>
void with_gelu(bool gelu, F&& f) {
  if (gelu) return f(std::true_type{});
  f(std::false_type{});
}

}  // namespace

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        bool gelu_first, const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  std::int64_t dim = x.size(-1);
  std::int64_t rows = x.numel() / dim;
  if (rows == 0) return;
  DeviceGuard guard(x.device().index);
  dispatch_device_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    with_affine_type<T>(affine_dtype(x, weight, bias), [&](auto wtag) {
      with_output_type<T>(y.dtype(), [&](auto ytag) {
        using W = typename decltype(wtag)::type;
        using Y = typename decltype(ytag)::type;
        with_chunk_width<T>(dim, {x.raw_data(), y.raw_data()}, [&](auto width) {
          with_gelu(gelu_first, [&](auto gelu) {
            constexpr int kV = decltype(width)::value;
            forward_kernel<T, Y, W, kV, decltype(gelu)::value>
                <<<static_cast<unsigned>(rows), row_threads(dim, kV), 0, stream_for(x.device())>>>(
                    device_ptr<const T>(x), ptr_or_null<W>(weight), ptr_or_null<W>(bias), eps,
                    device_ptr<Y>(y), device_ptr<C>(mean), device_ptr<C>(rstd), dim);
          });
        });
      });
    });
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

void layer_norm_backward(const Tensor& g, const Tensor& x, bool gelu_first, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                         const Tensor& dweight, const Tensor& dbias) {
  std::int64_t dim = x.size(-1);
  std::int64_t rows = x.numel() / dim;
  bool sums = dweight.defined() || dbias.defined();
  if (!dx.defined() && !sums) return;
  DeviceGuard guard(x.device().index);
  cudaStream_t stream = stream_for(x.device());
  DType affine = affine_dtype(x, weight, dweight.defined() ? dweight : dbias);
  // With no rows the sums are 0: one block of no rows writes the zero partials.
  std::int64_t block_rows =
      std::max(kBackwardRows, (rows + kMaxBackwardBlocks - 1) / kMaxBackwardBlocks);
  std::int64_t blocks = std::max<std::int64_t>((rows + block_rows - 1) / block_rows, 1);
  dispatch_device_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    DType partial_dtype = std::is_same_v<C, double> ? DType::f64 : DType::f32;
    Tensor partial_w =
        dweight.defined() ? empty({blocks, dim}, {partial_dtype, x.device()}) : Tensor();
    Tensor partial_b =
        dbias.defined() ? empty({blocks, dim}, {partial_dtype, x.device()}) : Tensor();
    C* pw = partial_w.defined() ? device_ptr<C>(partial_w) : nullptr;
    C* pb = partial_b.defined() ? device_ptr<C>(partial_b) : nullptr;
    with_affine_type<T>(affine, [&](auto wtag) {
      using W = typename decltype(wtag)::type;
      std::initializer_list<const void*> aligned = {g.raw_data(), x.raw_data(),
                                                    dx.defined() ? dx.raw_data() : nullptr};
      with_output_type<T>(g.dtype(), [&](auto ytag) {
        using Y = typename decltype(ytag)::type;
        with_chunk_width<T>(dim, aligned, [&](auto width) {
          with_gelu(gelu_first, [&](auto gelu) {
            constexpr int kV = decltype(width)::value;
            backward_kernel<T, Y, W, kV, decltype(gelu)::value>
                <<<static_cast<unsigned>(blocks), row_threads(dim, kV), 0, stream>>>(
                    device_ptr<const Y>(g), device_ptr<const T>(x), ptr_or_null<W>(weight),
                    device_ptr<const C>(mean), device_ptr<const C>(rstd),
                    dx.defined() ? device_ptr<T>(dx) : nullptr, pw, pb, rows, dim, block_rows);
          });
        });
      });
      LN_CUDA_CHECK(cudaGetLastError());
      auto column_blocks = static_cast<unsigned>((dim + kPartialColumns - 1) / kPartialColumns);
      for (auto [partial, out] : {std::pair{pw, dweight}, std::pair{pb, dbias}}) {
        if (partial == nullptr) continue;
        sum_partials_kernel<C, W><<<column_blocks, kPartialColumns * kPartialLanes, 0, stream>>>(
            partial, device_ptr<W>(out), blocks, dim);
        LN_CUDA_CHECK(cudaGetLastError());
      }
    });
  });
}

}  // namespace longnet::cuda
