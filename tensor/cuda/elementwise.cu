// Elementwise kernels: every UnaryOp and BinaryOp of tensor/elementwise.h, and where. The
// arithmetic is the CPU's (tensor/elementwise.cpp) in the same compute types (bf16 in f32),
// so results agree to rounding. Each op has a flat kernel for contiguous operands of one
// shape and a strided one for views and broadcasting.
#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "tensor/cuda/check.h"
#include "tensor/cuda/convert.h"
#include "tensor/cuda/elementwise.h"
#include "tensor/cuda/gelu.cuh"
#include "tensor/cuda/stream.h"
#include "tensor/cuda/strided.cuh"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;

// ---- arithmetic (the CPU's apply(), in device code) ----------------------------------------

template <class C>
__device__ __forceinline__ C apply(UnaryOp op, C x) {
  switch (op) {
    case UnaryOp::neg:
      return -x;
    case UnaryOp::abs:
      return x < C(0) ? -x : x;
    case UnaryOp::sign:
      return static_cast<C>((C(0) < x) - (x < C(0)));
    case UnaryOp::square:
      return x * x;
    case UnaryOp::relu:
      return x < C(0) ? C(0) : x;  // NaN passes through
    default:
      break;
  }
  if constexpr (std::is_floating_point_v<C>) {
    switch (op) {
      case UnaryOp::exp:
        return std::exp(x);
      case UnaryOp::log:
        return std::log(x);
      case UnaryOp::sqrt:
        return std::sqrt(x);
      case UnaryOp::rsqrt:
        return C(1) / std::sqrt(x);
      case UnaryOp::reciprocal:
        return C(1) / x;
      case UnaryOp::tanh:
        return std::tanh(x);
      case UnaryOp::sigmoid: {
        // Split by sign so exp never overflows.
        if (x >= C(0)) return C(1) / (C(1) + std::exp(-x));
        C e = std::exp(x);
        return e / (C(1) + e);
      }
      case UnaryOp::gelu:
        return gelu(x);
      case UnaryOp::gelu_grad:
        return gelu_grad(x);
      default:
        break;
    }
  }
  return x;
}

template <class C>
__device__ __forceinline__ C apply(BinaryOp op, C a, C b) {
  switch (op) {
    case BinaryOp::add:
      return a + b;
    case BinaryOp::sub:
      return a - b;
    case BinaryOp::mul:
      return a * b;
    case BinaryOp::maximum:
      if constexpr (std::is_floating_point_v<C>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return a < b ? b : a;
    case BinaryOp::minimum:
      if constexpr (std::is_floating_point_v<C>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return b < a ? b : a;
    case BinaryOp::eq:
      return static_cast<C>(a == b);
    case BinaryOp::lt:
      return static_cast<C>(a < b);
    case BinaryOp::le:
      return static_cast<C>(a <= b);
    case BinaryOp::gt:
      return static_cast<C>(a > b);
    case BinaryOp::ge:
      return static_cast<C>(a >= b);
    case BinaryOp::div:
      return a / b;
    case BinaryOp::pow:
      if constexpr (std::is_floating_point_v<C>) return std::pow(a, b);
      break;
  }
  return a;
}

// ---- kernels -------------------------------------------------------------------------------
// Grid-stride loops; the op is a template parameter so the switch in apply() folds away.
// out may alias an input: each thread reads its element before writing it.

__device__ __forceinline__ std::int64_t first_index() {
  return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

// Flat kernels move 16 bytes per load and store (4 f32, 8 bf16): the wide accesses keep
// more bytes in flight per thread, which 2-byte types need to approach full bandwidth.
// Operands are 16-byte aligned (the launcher checks); a scalar loop takes the tail.
constexpr int kVecBytes = 16;

template <class T>
struct alignas(kVecBytes) Vec {
  static constexpr int kSize = kVecBytes / sizeof(T);
  T v[kSize];
};

template <class T, UnaryOp Op>
__global__ void unary_flat(const T* x, T* out, std::int64_t n) {
  constexpr int kSize = Vec<T>::kSize;
  std::int64_t vectors = n / kSize;
  for (std::int64_t i = first_index(); i < vectors; i += grid_stride()) {
    Vec<T> in = reinterpret_cast<const Vec<T>*>(x)[i];
    Vec<T> result;
#pragma unroll
    for (int j = 0; j < kSize; ++j)
      result.v[j] = store_compute<T>(apply(Op, load_compute(in.v[j])));
    reinterpret_cast<Vec<T>*>(out)[i] = result;
  }
  for (std::int64_t i = vectors * kSize + first_index(); i < n; i += grid_stride()) {
    out[i] = store_compute<T>(apply(Op, load_compute(x[i])));
  }
}

template <class T, UnaryOp Op>
__global__ void unary_strided(const T* x, T* out, StridedIndexer<2> layout, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
    std::int64_t at[2];
    layout.offsets(i, at);
    out[at[0]] = store_compute<T>(apply(Op, load_compute(x[at[1]])));
  }
}

template <class T, BinaryOp Op>
__global__ void binary_flat(const T* a, const T* b, T* out, std::int64_t n) {
  constexpr int kSize = Vec<T>::kSize;
  std::int64_t vectors = n / kSize;
  for (std::int64_t i = first_index(); i < vectors; i += grid_stride()) {
    Vec<T> x = reinterpret_cast<const Vec<T>*>(a)[i];
    Vec<T> y = reinterpret_cast<const Vec<T>*>(b)[i];
    Vec<T> result;
#pragma unroll
    for (int j = 0; j < kSize; ++j) {
      result.v[j] = store_compute<T>(apply(Op, load_compute(x.v[j]), load_compute(y.v[j])));
    }
    reinterpret_cast<Vec<T>*>(out)[i] = result;
  }
  for (std::int64_t i = vectors * kSize + first_index(); i < n; i += grid_stride()) {
    out[i] = store_compute<T>(apply(Op, load_compute(a[i]), load_compute(b[i])));
  }
}

// Broadcasting along rows (a bias added to every row, say): out's rows are contiguous and
// a multiple of the vector size long, and along a row each operand either runs (stride 1,
// loaded as vectors) or stays (stride 0, loaded once and repeated). A thread takes one
// vector of outputs, so the index arithmetic is paid once per vector.
template <class T, BinaryOp Op>
__global__ void binary_rows(const T* a, const T* b, T* out, StridedIndexer<3> layout,
                            std::int64_t n, bool a_runs, bool b_runs) {
  constexpr int kSize = Vec<T>::kSize;
  for (std::int64_t i = first_index(); i < n / kSize; i += grid_stride()) {
    std::int64_t at[3];
    layout.offsets(i * kSize, at);
    Vec<T> x;
    Vec<T> y;
    if (a_runs) {
      x = *reinterpret_cast<const Vec<T>*>(a + at[1]);
    } else {
#pragma unroll
      for (int j = 0; j < kSize; ++j) x.v[j] = a[at[1]];
    }
    if (b_runs) {
      y = *reinterpret_cast<const Vec<T>*>(b + at[2]);
    } else {
#pragma unroll
      for (int j = 0; j < kSize; ++j) y.v[j] = b[at[2]];
    }
    Vec<T> result;
#pragma unroll
    for (int j = 0; j < kSize; ++j) {
      result.v[j] = store_compute<T>(apply(Op, load_compute(x.v[j]), load_compute(y.v[j])));
    }
    *reinterpret_cast<Vec<T>*>(out + at[0]) = result;
  }
}

template <class T, BinaryOp Op>
__global__ void binary_strided(const T* a, const T* b, T* out, StridedIndexer<3> layout,
                               std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
    std::int64_t at[3];
    layout.offsets(i, at);
    out[at[0]] = store_compute<T>(apply(Op, load_compute(a[at[1]]), load_compute(b[at[2]])));
  }
}

template <class K, class T>
__global__ void where_strided(const K* cond, const T* a, const T* b, T* out,
                              StridedIndexer<4> layout, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
    std::int64_t at[4];
    layout.offsets(i, at);
    bool take_a = load_compute(cond[at[1]]) != compute_t<K>(0);
    out[at[0]] = take_a ? a[at[2]] : b[at[3]];
  }
}

// out = x + u for f32 x and out and bf16 u, 8 elements (two 16-byte loads of x, one of u) a
// step; the bf16 -> f32 conversion is exact, so the sums are those of a cast and an add.
__global__ void add_bf16_to_f32(const float* x, const bf16* u, float* out, std::int64_t n) {
  constexpr int kStep = 8;
  std::int64_t steps = n / kStep;
  for (std::int64_t i = first_index(); i < steps; i += grid_stride()) {
    const float4 x0 = reinterpret_cast<const float4*>(x)[2 * i];
    const float4 x1 = reinterpret_cast<const float4*>(x)[2 * i + 1];
    const uint4 packed = reinterpret_cast<const uint4*>(u)[i];
    const bf16* v = reinterpret_cast<const bf16*>(&packed);
    reinterpret_cast<float4*>(out)[2 * i] =
        make_float4(x0.x + bf16_to_float(v[0]), x0.y + bf16_to_float(v[1]),
                    x0.z + bf16_to_float(v[2]), x0.w + bf16_to_float(v[3]));
    reinterpret_cast<float4*>(out)[2 * i + 1] =
        make_float4(x1.x + bf16_to_float(v[4]), x1.y + bf16_to_float(v[5]),
                    x1.z + bf16_to_float(v[6]), x1.w + bf16_to_float(v[7]));
  }
  for (std::int64_t i = steps * kStep + first_index(); i < n; i += grid_stride()) {
    out[i] = x[i] + bf16_to_float(u[i]);
  }
}

// ---- launchers -----------------------------------------------------------------------------

bool aligned(const Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.raw_data()) % kVecBytes == 0;
}

// Whether binary_rows can take layout: the innermost dim is a multiple of the vector size,
// out (operand 0) runs along it, every operand runs or stays, and an operand that runs
// starts every row on a vector boundary.
template <class T>
bool rows_vectorise(const StridedIndexer<3>& layout, const std::array<const Tensor*, 3>& operands) {
  constexpr int kSize = Vec<T>::kSize;
  int inner = layout.ndim - 1;
  if (inner < 0 || layout.sizes[inner] % kSize != 0 || layout.strides[0][inner] != 1) return false;
  for (int k = 0; k < 3; ++k) {
    std::int64_t step = layout.strides[k][inner];
    if (step == 0) continue;
    if (step != 1 || !aligned(*operands[k])) return false;
    for (int d = 0; d < inner; ++d) {
      if (layout.strides[k][d] % kSize != 0) return false;
    }
  }
  return true;
}

// Ops that take only floating dtypes are never instantiated for integers (the callers
// validate dtypes first).
template <class T, UnaryOp Op>
void launch_unary(const Tensor& x, const Tensor& out) {
  if constexpr (std::is_integral_v<T> && Op > UnaryOp::relu) {
    throw Error(cat(name(Op), ": needs a floating dtype, got ", describe(x)));
  } else {
    std::int64_t n = out.numel();
    cudaStream_t stream = current_stream(out.device().index);
    if (x.is_contiguous() && out.is_contiguous() && aligned(x) && aligned(out)) {
      unary_flat<T, Op><<<grid_for(n / Vec<T>::kSize + 1, kThreads), kThreads, 0, stream>>>(
          x.data<T>(), out.data<T>(), n);
    } else {
      auto layout = make_indexer<2>(out.shape(), {out.strides(), x.strides()}, name(Op));
      unary_strided<T, Op>
          <<<grid_for(n, kThreads), kThreads, 0, stream>>>(x.data<T>(), out.data<T>(), layout, n);
    }
    LN_CUDA_CHECK(cudaGetLastError());
  }
}

template <class T, BinaryOp Op>
void launch_binary(const Tensor& a, const Tensor& b, const Tensor& out) {
  if constexpr (std::is_integral_v<T> && Op >= BinaryOp::div) {
    throw Error(cat(name(Op), ": needs a floating dtype, got ", describe(a)));
  } else {
    std::int64_t n = out.numel();
    cudaStream_t stream = current_stream(out.device().index);
    bool flat = a.shape() == out.shape() && b.shape() == out.shape() && a.is_contiguous() &&
                b.is_contiguous() && out.is_contiguous() && aligned(a) && aligned(b) &&
                aligned(out);
    if (flat) {
      binary_flat<T, Op><<<grid_for(n / Vec<T>::kSize + 1, kThreads), kThreads, 0, stream>>>(
          a.data<T>(), b.data<T>(), out.data<T>(), n);
    } else {
      auto layout = make_indexer<3>(out.shape(),
                                    {out.strides(), cpu::broadcast_strides(a, out.shape()),
                                     cpu::broadcast_strides(b, out.shape())},
                                    name(Op));
      if (rows_vectorise<T>(layout, {&out, &a, &b})) {
        int inner = layout.ndim - 1;
        binary_rows<T, Op><<<grid_for(n / Vec<T>::kSize, kThreads), kThreads, 0, stream>>>(
            a.data<T>(), b.data<T>(), out.data<T>(), layout, n, layout.strides[1][inner] == 1,
            layout.strides[2][inner] == 1);
      } else {
        binary_strided<T, Op><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            a.data<T>(), b.data<T>(), out.data<T>(), layout, n);
      }
    }
    LN_CUDA_CHECK(cudaGetLastError());
  }
}

template <class T, std::size_t... I>
void run_unary(UnaryOp op, const Tensor& x, const Tensor& out, std::index_sequence<I...>) {
  ((op == static_cast<UnaryOp>(I) ? launch_unary<T, static_cast<UnaryOp>(I)>(x, out) : void()),
   ...);
}

template <class T, std::size_t... I>
void run_binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                std::index_sequence<I...>) {
  ((op == static_cast<BinaryOp>(I) ? launch_binary<T, static_cast<BinaryOp>(I)>(a, b, out)
                                   : void()),
   ...);
}

constexpr std::size_t kUnaryOps = static_cast<std::size_t>(UnaryOp::gelu_grad) + 1;
constexpr std::size_t kBinaryOps = static_cast<std::size_t>(BinaryOp::pow) + 1;

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard guard(out.device().index);
  dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    run_unary<T>(op, x, out, std::make_index_sequence<kUnaryOps>{});
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard guard(out.device().index);
  dispatch(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    run_binary<T>(op, a, b, out, std::make_index_sequence<kBinaryOps>{});
  });
}

bool add_converted(const Tensor& x, const Tensor& u, const Tensor& out) {
  bool fused = x.dtype() == DType::f32 && u.dtype() == DType::bf16 && out.dtype() == DType::f32;
  for (const Tensor* t : {&x, &u, &out}) fused = fused && t->is_contiguous() && aligned(*t);
  if (!fused) return false;
  std::int64_t n = out.numel();
  if (n == 0) return true;
  DeviceGuard guard(out.device().index);
  add_bf16_to_f32<<<grid_for(n / 8 + 1, kThreads), kThreads, 0,
                    current_stream(out.device().index)>>>(x.data<float>(), u.data<bf16>(),
                                                          out.data<float>(), n);
  LN_CUDA_CHECK(cudaGetLastError());
  return true;
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  std::int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device().index);
  const Shape& shape = out.shape();
  auto layout =
      make_indexer<4>(shape,
                      {out.strides(), cpu::broadcast_strides(cond, shape),
                       cpu::broadcast_strides(a, shape), cpu::broadcast_strides(b, shape)},
                      "where");
  cudaStream_t stream = current_stream(out.device().index);
  dispatch(cond.dtype(), [&](auto ctag) {
    using K = typename decltype(ctag)::type;
    dispatch(a.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      where_strided<K, T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          cond.data<K>(), a.data<T>(), b.data<T>(), out.data<T>(), layout, n);
    });
  });
  LN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace longnet::cuda
