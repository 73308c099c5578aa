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

// A row is one warp's: lane l holds chunks l, l + 32, ... of V elements (V > 1: one 16-byte
// access each, so a warp moves 512 contiguous bytes), the first K of them kept in registers
// between the passes over the row; wider rows re-read the rest. Sums over a row are warp
// shuffles (no barriers), and a thread block of kRowWarps warps has that many rows in
// flight, so an SM keeps enough loads outstanding to run at memory speed (one 384-thread
// block per 3072-wide row left most of the memory bandwidth unused).
constexpr int kRowWarps = 4;
constexpr int kRowThreads = 32 * kRowWarps;
// Chunks per lane kept in registers: K = kFewChunks for rows of up to 128 chunks (768
// bf16 elements), kManyChunks (3072 bf16, 1536 f32) otherwise.
constexpr int kFewChunks = 4;
constexpr int kManyChunks = 12;
// The backward's column walk: at most kMaxColumnRowBlocks blocks of consecutive rows, at
// least kColumnRows rows each (so the weight and bias partials stay at most 2048 x D floats
// each, 24 MiB for 3072 columns, whatever the row count); kColumnUnroll rows' loads in flight
// at once.
constexpr std::int64_t kColumnRows = 32;
constexpr std::int64_t kMaxColumnRowBlocks = 2048;
constexpr int kColumnUnroll = 4;
constexpr int kPartialColumns = 32;
constexpr int kPartialLanes = 32;
// The one-pass backward takes rows of at most kFusedElements elements a lane (768 wide: the
// model's LayerNorms but the FFN's GELU one), without the GELU prologue.
constexpr int kFusedElements = 24;

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

// The norm's input from loaded x: x itself, or with kGelu gelu(x) rounded to T, the value
// the unfused gelu op would have stored.
template <bool kGelu, class T, int V, class C>
__device__ __forceinline__ void prologue(C (&v)[V]) {
  if constexpr (kGelu) {
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = static_cast<C>(static_cast<T>(gelu(v[e])));
  }
}

// One row of `chunks` V-element chunks as seen by one lane: its first K chunks (q = lane +
// 32 c) in registers. With kGelu the cached chunks hold the prologue's values, and get()
// applies it to the chunks read again.
template <int V, class T, int K, bool kGelu>
struct WarpRow {
  const T* row;
  Chunk<V, T> cache[K];

  __device__ __forceinline__ void fill(const T* r, int chunks, int lane) {
    row = r;
#pragma unroll
    for (int c = 0; c < K; ++c) {
      int q = 32 * c + lane;
      if (q < chunks) cache[c] = load_chunk<V>(r + static_cast<std::int64_t>(q) * V);
    }
    if constexpr (kGelu) {
#pragma unroll
      for (int c = 0; c < K; ++c) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          cache[c].v[e] = static_cast<T>(gelu(static_cast<acc_t<T>>(cache[c].v[e])));
        }
      }
    }
  }

  // Chunk q, this lane's c-th, as C values.
  template <class C>
  __device__ __forceinline__ void get(int c, int q, C (&out)[V]) const {
    if (c < K) {
      const Chunk<V, T>& v = cache[c < K ? c : 0];
#pragma unroll
      for (int e = 0; e < V; ++e) out[e] = static_cast<C>(v.v[e]);
      return;
    }
    Chunk<V, T> v = load_chunk<V>(row + static_cast<std::int64_t>(q) * V);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = static_cast<C>(v.v[e]);
    prologue<kGelu, T>(out);
  }
};

// Calls f(c, q) for this lane's chunks q of a row of `chunks`, c counting them; c is a
// constant below K (once inlined), so cached chunks come from registers.
template <int K, class F>
__device__ __forceinline__ void for_lane_chunks(int chunks, int lane, F&& f) {
#pragma unroll
  for (int c = 0; c < K; ++c) {
    int q = 32 * c + lane;
    if (q < chunks) f(c, q);
  }
  for (int q = 32 * K + lane; q < chunks; q += 32) f(K, q);
}

// The V affine parameters from column j, or `absent` without them: 16-byte loads where a
// chunk of V is whole 16-byte pieces (with_chunk_width then found the parameters aligned
// too), else one element at a time.
template <class W, int V, class C>
__device__ __forceinline__ void load_affine(const W* p, std::int64_t j, C (&out)[V], C absent) {
  constexpr int kPiece = 16 / static_cast<int>(sizeof(W));
  if (p == nullptr) {
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = absent;
  } else if constexpr (V % kPiece == 0) {
#pragma unroll
    for (int k = 0; k < V; k += kPiece) {
      const Chunk<kPiece, W> c = load_chunk<kPiece>(p + j + k);
#pragma unroll
      for (int e = 0; e < kPiece; ++e) out[k + e] = static_cast<C>(c.v[e]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = static_cast<C>(p[j + e]);
  }
}

// One warp per row. The statistics follow the cpu's two passes (the mean, then the squares
// around it, which do not cancel the way E[x^2] - E[x]^2 does): each lane sums its few
// elements in C, the lanes' sums are added in f64 and rounded once to C.
template <class T, class Y, class W, int V, bool kGelu, int K>
__global__ void __launch_bounds__(kRowThreads)
    forward_kernel(const T* x, const W* weight, const W* bias, double eps, Y* y, acc_t<T>* mean,
                   acc_t<T>* rstd, std::int64_t rows, std::int64_t dim) {
  using C = acc_t<T>;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  const int chunks = static_cast<int>(dim / V);
  WarpRow<V, T, K, kGelu> xr;
  xr.fill(x + row * dim, chunks, lane);
  const auto n = static_cast<double>(dim);
  C sum = 0;
  for_lane_chunks<K>(chunks, lane, [&](int c, int q) {
    C v[V];
    xr.get(c, q, v);
#pragma unroll
    for (int e = 0; e < V; ++e) sum += v[e];
  });
  const auto m = static_cast<C>(warp_sum(static_cast<double>(sum)) / n);
  C squares = 0;
  for_lane_chunks<K>(chunks, lane, [&](int c, int q) {
    C v[V];
    xr.get(c, q, v);
#pragma unroll
    for (int e = 0; e < V; ++e) squares += (v[e] - m) * (v[e] - m);
  });
  const auto rs = static_cast<C>(1.0 / sqrt(warp_sum(static_cast<double>(squares)) / n + eps));
  Y* yr = y + row * dim;
  for_lane_chunks<K>(chunks, lane, [&](int c, int q) {
    C v[V];
    C w[V];
    C b[V];
    xr.get(c, q, v);
    const std::int64_t j = static_cast<std::int64_t>(q) * V;
    load_affine<W, V>(weight, j, w, C(1));
    load_affine<W, V>(bias, j, b, C(0));
#pragma unroll
    for (int e = 0; e < V; ++e) {
      v[e] = (v[e] - m) * rs * w[e];
      if (bias != nullptr) v[e] += b[e];
    }
    store_chunk<V>(yr + j, v);
  });
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
}

// The backward in two kernels, each at memory speed: row_terms_kernel takes the two means
// that dx needs from each row (one warp per row, one pass: nothing to keep in registers),
// then columns_kernel walks the rows by columns, writing dx and adding the weight and bias
// sums. Both read x and dy; a single kernel that kept whole rows in registers ran at a
// quarter of memory speed on the FFN's 3072-wide rows (too few warps an SM, and the GELU's
// arithmetic not hidden).

// terms[2 row] = mean(gy), terms[2 row + 1] = mean(gy * xhat), gy = dy * weight, each
// lane's elements summed in C and the lanes' sums added in f64 (rounded once to C).
template <class T, class Y, class W, int V, bool kGelu>
__global__ void __launch_bounds__(kRowThreads)
    row_terms_kernel(const Y* g, const T* x, const W* weight, const acc_t<T>* mean,
                     const acc_t<T>* rstd, acc_t<T>* terms, std::int64_t rows, std::int64_t dim) {
  using C = acc_t<T>;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  const int chunks = static_cast<int>(dim / V);
  const C m = mean[row];
  const C rs = rstd[row];
  const T* xr = x + row * dim;
  const Y* gr = g + row * dim;
  C sum_gy = 0;
  C sum_gy_xhat = 0;
  for (int q = lane; q < chunks; q += 32) {
    const std::int64_t j = static_cast<std::int64_t>(q) * V;
    const Chunk<V, T> xc = load_chunk<V>(xr + j);
    const Chunk<V, Y> gc = load_chunk<V>(gr + j);
    C v[V];
    C w[V];
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = static_cast<C>(xc.v[e]);
    prologue<kGelu, T>(v);
    load_affine<W, V>(weight, j, w, C(1));
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const C gy = static_cast<C>(gc.v[e]) * w[e];
      sum_gy += gy;
      sum_gy_xhat += gy * ((v[e] - m) * rs);
    }
  }
  const auto n = static_cast<double>(dim);
  const double a = warp_sum(static_cast<double>(sum_gy)) / n;
  const double b = warp_sum(static_cast<double>(sum_gy_xhat)) / n;
  if (lane == 0) {
    terms[2 * row] = static_cast<C>(a);
    terms[2 * row + 1] = static_cast<C>(b);
  }
}

// Rows [blockIdx.y * block_rows, + block_rows), one chunk of V columns a thread
// (consecutive lanes, consecutive chunks: a warp reads 32 chunks of a row at once), the
// loads of kColumnUnroll rows in flight. Writes dx = rstd * (gy - a - xhat * b) (with kGelu
// times gelu'(x)) where dx is given, and where the partials are given, the sums of dy * xhat
// and dy over the block's rows in row order (in C) to row blockIdx.y of them.
template <class T, class Y, class W, int V, bool kGelu>
__global__ void __launch_bounds__(kRowThreads)
    columns_kernel(const Y* g, const T* x, const W* weight, const acc_t<T>* mean,
                   const acc_t<T>* rstd, const acc_t<T>* terms, T* dx, acc_t<T>* partial_w,
                   acc_t<T>* partial_b, std::int64_t rows, std::int64_t dim,
                   std::int64_t block_rows) {
  using C = acc_t<T>;
  const std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * kRowThreads + threadIdx.x;
  if (q >= dim / V) return;
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.y) * block_rows;
  const std::int64_t end = begin + block_rows < rows ? begin + block_rows : rows;
  const std::int64_t j = q * V;
  C w[V];
  load_affine<W, V>(weight, j, w, C(1));
  C sum_w[V] = {};
  C sum_b[V] = {};
  for (std::int64_t row = begin; row < end; row += kColumnUnroll) {
    Chunk<V, T> xs[kColumnUnroll];
    Chunk<V, Y> gs[kColumnUnroll];
#pragma unroll
    for (int u = 0; u < kColumnUnroll; ++u) {
      if (row + u < end) {
        xs[u] = load_chunk<V>(x + (row + u) * dim + j);
        gs[u] = load_chunk<V>(g + (row + u) * dim + j);
      }
    }
#pragma unroll
    for (int u = 0; u < kColumnUnroll; ++u) {
      const std::int64_t r = row + u;
      if (r >= end) break;
      const C m = mean[r];
      const C rs = rstd[r];
      C v[V];
      C dy[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        v[e] = static_cast<C>(xs[u].v[e]);
        dy[e] = static_cast<C>(gs[u].v[e]);
      }
      C xhat[V];
#pragma unroll
      for (int e = 0; e < V; ++e) xhat[e] = v[e];
      prologue<kGelu, T>(xhat);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        xhat[e] = (xhat[e] - m) * rs;
        sum_w[e] += dy[e] * xhat[e];
        sum_b[e] += dy[e];
      }
      if (dx == nullptr) continue;
      const C a = terms[2 * r];
      const C b = terms[2 * r + 1];
      C out[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        out[e] = rs * (dy[e] * w[e] - a - xhat[e] * b);
        if constexpr (kGelu) out[e] *= gelu_grad(v[e]);
      }
      store_chunk<V>(dx + r * dim + j, out);
    }
  }
  const std::int64_t at = static_cast<std::int64_t>(blockIdx.y) * dim + j;
#pragma unroll
  for (int e = 0; e < V; ++e) {
    if (partial_w != nullptr) partial_w[at + e] = sum_w[e];
    if (partial_b != nullptr) partial_b[at + e] = sum_b[e];
  }
}

// The backward in one pass for narrow rows (a lane's share of a row in registers, no GELU):
// each warp walks one of columns_kernel's blocks of rows in order, keeping its lanes' weight
// and bias sums for their columns, and per row takes the two means as row_terms_kernel does
// (the lanes' sums in the same order, added in f64 and rounded to C), then writes dx as
// columns_kernel does: the same arithmetic in the same order, with x and dy read once instead
// of twice. 165 registers (f32 rows of 768), 168 (bf16); keeping the next row's chunks loaded
// in flight took 211-234.
template <class T, class Y, class W, int V>
__global__ void __launch_bounds__(kRowThreads)
    fused_backward_kernel(const Y* g, const T* x, const W* weight, const acc_t<T>* mean,
                          const acc_t<T>* rstd, T* dx, acc_t<T>* partial_w, acc_t<T>* partial_b,
                          std::int64_t rows, std::int64_t dim, std::int64_t block_rows,
                          std::int64_t blocks) {
  using C = acc_t<T>;
  constexpr int K = kFusedElements / V;  // chunks a lane
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t block = static_cast<std::int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (block >= blocks) return;  // whole warps leave together
  const std::int64_t begin = block * block_rows;
  const std::int64_t end = begin + block_rows < rows ? begin + block_rows : rows;
  const int chunks = static_cast<int>(dim / V);
  C w[K][V];
  C sum_w[K][V] = {};
  C sum_b[K][V] = {};
#pragma unroll
  for (int c = 0; c < K; ++c) {
    if (32 * c + lane < chunks) load_affine<W, V>(weight, (32 * c + lane) * V, w[c], C(1));
  }
  const auto n = static_cast<double>(dim);
  for (std::int64_t row = begin; row < end; ++row) {
    Chunk<V, T> xs[K];
    Chunk<V, Y> gs[K];
#pragma unroll
    for (int c = 0; c < K; ++c) {
      const int q = 32 * c + lane;
      if (q < chunks) {
        xs[c] = load_chunk<V>(x + row * dim + q * V);
        gs[c] = load_chunk<V>(g + row * dim + q * V);
      }
    }
    const C m = mean[row];
    const C rs = rstd[row];
    C sum_gy = 0;
    C sum_gy_xhat = 0;
#pragma unroll
    for (int c = 0; c < K; ++c) {
      if (32 * c + lane >= chunks) continue;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const C gy = static_cast<C>(gs[c].v[e]) * w[c][e];
        sum_gy += gy;
        sum_gy_xhat += gy * ((static_cast<C>(xs[c].v[e]) - m) * rs);
      }
    }
    const auto a = static_cast<C>(warp_sum(static_cast<double>(sum_gy)) / n);
    const auto b = static_cast<C>(warp_sum(static_cast<double>(sum_gy_xhat)) / n);
#pragma unroll
    for (int c = 0; c < K; ++c) {
      const int q = 32 * c + lane;
      if (q >= chunks) continue;
      C out[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const auto dy = static_cast<C>(gs[c].v[e]);
        const C xhat = (static_cast<C>(xs[c].v[e]) - m) * rs;
        sum_w[c][e] += dy * xhat;
        sum_b[c][e] += dy;
        out[e] = rs * (dy * w[c][e] - a - xhat * b);
      }
      if (dx != nullptr) store_chunk<V>(dx + row * dim + q * V, out);
    }
  }
#pragma unroll
  for (int c = 0; c < K; ++c) {
    const int q = 32 * c + lane;
    if (q >= chunks) continue;
    const std::int64_t at = block * dim + q * V;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if (partial_w != nullptr) partial_w[at + e] = sum_w[c][e];
      if (partial_b != nullptr) partial_b[at + e] = sum_b[c][e];
    }
  }
}

// Calls f with the chunks per lane kept in registers for rows of dim elements in chunks of
// V.
template <class F>
void with_cached_chunks(std::int64_t dim, int v, F&& f) {
  if (dim / v <= 32 * kFewChunks) return f(std::integral_constant<int, kFewChunks>{});
  f(std::integral_constant<int, kManyChunks>{});
}

unsigned row_blocks(std::int64_t rows) {
  return static_cast<unsigned>((rows + kRowWarps - 1) / kRowWarps);
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

const void* raw_or_null(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

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
    with_affine_type<T>(layer_norm_affine_dtype(x, weight, bias), [&](auto wtag) {
      with_output_type<T>(y.dtype(), [&](auto ytag) {
        using W = typename decltype(wtag)::type;
        using Y = typename decltype(ytag)::type;
        // The affine parameters are read in chunks too.
        std::initializer_list<const void*> aligned = {x.raw_data(), y.raw_data(),
                                                      raw_or_null(weight), raw_or_null(bias)};
        with_chunk_width<T>(dim, aligned, [&](auto width) {
          constexpr int kV = decltype(width)::value;
          with_cached_chunks(dim, kV, [&](auto cached) {
            with_gelu(gelu_first, [&](auto gelu) {
              forward_kernel<T, Y, W, kV, decltype(gelu)::value, decltype(cached)::value>
                  <<<row_blocks(rows), kRowThreads, 0, stream_for(x.device())>>>(
                      device_ptr<const T>(x), ptr_or_null<W>(weight), ptr_or_null<W>(bias), eps,
                      device_ptr<Y>(y), device_ptr<C>(mean), device_ptr<C>(rstd), rows, dim);
            });
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
  DType affine = layer_norm_affine_dtype(x, weight, dweight.defined() ? dweight : dbias);
  // With no rows the sums are 0: one block of no rows writes the zero partials.
  std::int64_t block_rows =
      std::max(kColumnRows, (rows + kMaxColumnRowBlocks - 1) / kMaxColumnRowBlocks);
  std::int64_t blocks = std::max<std::int64_t>((rows + block_rows - 1) / block_rows, 1);
  dispatch_device_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    DType acc_dtype = std::is_same_v<C, double> ? DType::f64 : DType::f32;
    Tensor partial_w = dweight.defined() ? empty({blocks, dim}, {acc_dtype, x.device()}) : Tensor();
    Tensor partial_b = dbias.defined() ? empty({blocks, dim}, {acc_dtype, x.device()}) : Tensor();
    // One pass where a lane's share of a row fits its registers (f32 statistics).
    const bool fused = sizeof(C) == 4 && !gelu_first && dim <= 32 * kFusedElements;
    Tensor terms = dx.defined() && !fused ? empty({rows, 2}, {acc_dtype, x.device()}) : Tensor();
    C* pw = partial_w.defined() ? device_ptr<C>(partial_w) : nullptr;
    C* pb = partial_b.defined() ? device_ptr<C>(partial_b) : nullptr;
    with_affine_type<T>(affine, [&](auto wtag) {
      using W = typename decltype(wtag)::type;
      std::initializer_list<const void*> aligned = {g.raw_data(), x.raw_data(), raw_or_null(dx),
                                                    raw_or_null(weight)};
      with_output_type<T>(g.dtype(), [&](auto ytag) {
        using Y = typename decltype(ytag)::type;
        with_chunk_width<T>(dim, aligned, [&](auto width) {
          constexpr int kV = decltype(width)::value;
          if constexpr (sizeof(C) == 4) {
            if (fused) {
              fused_backward_kernel<T, Y, W, kV><<<row_blocks(blocks), kRowThreads, 0, stream>>>(
                  device_ptr<const Y>(g), device_ptr<const T>(x), ptr_or_null<W>(weight),
                  device_ptr<const C>(mean), device_ptr<const C>(rstd),
                  dx.defined() ? device_ptr<T>(dx) : nullptr, pw, pb, rows, dim, block_rows,
                  blocks);
              LN_CUDA_CHECK(cudaGetLastError());
              return;
            }
          }
          with_gelu(gelu_first, [&](auto gelu) {
            constexpr bool kGelu = decltype(gelu)::value;
            if (dx.defined() && rows > 0) {
              row_terms_kernel<T, Y, W, kV, kGelu><<<row_blocks(rows), kRowThreads, 0, stream>>>(
                  device_ptr<const Y>(g), device_ptr<const T>(x), ptr_or_null<W>(weight),
                  device_ptr<const C>(mean), device_ptr<const C>(rstd), device_ptr<C>(terms), rows,
                  dim);
              LN_CUDA_CHECK(cudaGetLastError());
            }
            std::int64_t chunks = dim / kV;
            dim3 grid(static_cast<unsigned>((chunks + kRowThreads - 1) / kRowThreads),
                      static_cast<unsigned>(blocks));
            columns_kernel<T, Y, W, kV, kGelu><<<grid, kRowThreads, 0, stream>>>(
                device_ptr<const Y>(g), device_ptr<const T>(x), ptr_or_null<W>(weight),
                device_ptr<const C>(mean), device_ptr<const C>(rstd),
                dx.defined() ? device_ptr<const C>(terms) : nullptr,
                dx.defined() ? device_ptr<T>(dx) : nullptr, pw, pb, rows, dim, block_rows);
            LN_CUDA_CHECK(cudaGetLastError());
          });
        });
      });
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
