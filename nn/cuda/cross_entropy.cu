#include <cstdint>
#include <limits>

#include "nn/cuda/cross_entropy.h"
#include "nn/cuda/launch.cuh"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps, one row each
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kLossThreads = 1024;
constexpr unsigned long long kNoRow = std::numeric_limits<unsigned long long>::max();

__device__ __forceinline__ float exp_of(float v) { return expf(v); }
__device__ __forceinline__ double exp_of(double v) { return exp(v); }

// A 0-d floating value of dtype code (0 f32, 1 f64, 2 bf16) read as double.
__device__ double read_scalar(const void* p, int code) {
  if (code == 1) return *static_cast<const double*>(p);
  if (code == 2) return static_cast<float>(*static_cast<const __nv_bfloat16*>(p));
  return *static_cast<const float*>(p);
}

int scalar_code(DType dtype) { return dtype == DType::f64 ? 1 : dtype == DType::bf16 ? 2 : 0; }

// counts[0] += rows not ignored; counts[1] = min(row with a target out of range).
template <class I>
__global__ void count_kernel(const I* target, std::int64_t rows, std::int64_t classes,
                             std::int64_t ignore_index, unsigned long long* counts) {
  unsigned long long kept = 0;
  for (std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    auto t = static_cast<std::int64_t>(target[r]);
    if (t == ignore_index) continue;
    if (t < 0 || t >= classes) atomicMin(&counts[1], static_cast<unsigned long long>(r));
    ++kept;
  }
  if (kept > 0) atomicAdd(&counts[0], kept);
}

// Where a row of n elements splits for 16-byte accesses: head elements before the first
// 16-byte boundary (or all n), then body vectors of kVec elements, then the rest.
template <class T>
struct RowSplit {
  static constexpr int kVec = 16 / sizeof(T);
  std::int64_t head;
  std::int64_t body;

  __device__ RowSplit(const T* row, std::int64_t n) {
    auto misaligned = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(row) % 16);
    head = misaligned == 0 ? 0 : (16 - misaligned) / static_cast<std::int64_t>(sizeof(T));
    head = head < n ? head : n;
    body = (n - head) / kVec;
  }
};

// Calls f(v, row[v]) for the elements v of a row that lane owns, the aligned middle read 16
// bytes per lane per load (a warp then moves 512 bytes per instruction, not 64 for bf16).
template <class T, class F>
__device__ __forceinline__ void for_lane_elements(const T* row, std::int64_t n, int lane, F&& f) {
  RowSplit<T> split(row, n);
  constexpr int kVec = RowSplit<T>::kVec;
  for (std::int64_t v = lane; v < split.head; v += 32) f(v, row[v]);
  const auto* vectors = reinterpret_cast<const uint4*>(row + split.head);
  for (std::int64_t q = lane; q < split.body; q += 32) {
    uint4 raw = vectors[q];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int u = 0; u < kVec; ++u) f(split.head + q * kVec + u, e[u]);
  }
  for (std::int64_t v = split.head + split.body * kVec + lane; v < n; v += 32) f(v, row[v]);
}

// One warp per row, one pass: each lane keeps its running maximum m and sum s = sum exp(x -
// m) (exp in C, sums in f64), rescaling s when m grows; the lanes then meet at the row
// maximum. Terms of lanes that never rescale are the cpu's exp(x - max) exactly; rescaled
// ones differ by a rounding or two.
template <class T, class I>
__global__ void forward_kernel(const T* x, const I* target, std::int64_t r0, std::int64_t n,
                               std::int64_t classes, std::int64_t ignore_index, acc_t<T>* lse,
                               double* row_loss) {
  using C = acc_t<T>;
  std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  int lane = static_cast<int>(threadIdx.x % 32);
  if (i >= n) return;  // the whole warp leaves together
  std::int64_t r = r0 + i;
  auto t = static_cast<std::int64_t>(target[r]);
  if (t == ignore_index) {
    if (lane == 0) {
      lse[r] = C(0);
      row_loss[r] = 0;
    }
    return;
  }
  const T* xr = x + i * classes;
  const C lowest = -INFINITY;
  C m = lowest;
  double s = 0;
  for_lane_elements(xr, classes, lane, [&](std::int64_t, T raw) {
    auto xv = static_cast<C>(raw);
    if (!(xv <= m)) {  // a larger value, or a NaN, which then poisons s as on the cpu
      s = m == lowest ? 0.0 : s * exp_of(m - xv);
      m = xv;
    }
    if (m != lowest) s += exp_of(xv - m);
  });
  C hi = m;
  for (int o = 16; o > 0; o >>= 1) {
    C other = __shfl_xor_sync(0xffffffffU, hi, o);
    hi = hi < other ? other : hi;
  }
  double total = warp_sum(m == lowest ? 0.0 : (m == hi ? s : s * exp_of(m - hi)));
  if (lane == 0) {
    // total >= 1 for finite logits: the maximum contributes exp(0).
    auto l = static_cast<C>(hi + log(total));
    lse[r] = l;
    row_loss[r] = static_cast<double>(l) - static_cast<C>(xr[t]);
  }
}

// One block; each thread sums a fixed stride of rows, then a fixed tree: the same loss on
// every run.
__global__ void loss_kernel(const double* row_loss, std::int64_t rows, std::int64_t count,
                            void* loss, int loss_code) {
  __shared__ double partial[kLossThreads];
  double total = 0;
  for (std::int64_t r = threadIdx.x; r < rows; r += kLossThreads) total += row_loss[r];
  partial[threadIdx.x] = total;
  __syncthreads();
  for (int half = kLossThreads / 2; half > 0; half >>= 1) {
    if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double value = count > 0 ? partial[0] / static_cast<double>(count) : 0.0;
    if (loss_code == 1) {
      *static_cast<double*>(loss) = value;
    } else {
      *static_cast<float*>(loss) = static_cast<float>(value);
    }
  }
}

// One warp per row: dx = (exp(x - lse) - onehot) * (dloss / count), in C. Where x's and
// dx's rows share their alignment (always for contiguous tensors from the allocator), both
// move 16 bytes per lane per access.
template <class T, class I>
__global__ void backward_kernel(const T* x, const I* target, std::int64_t r0, std::int64_t n,
                                std::int64_t classes, std::int64_t ignore_index,
                                const acc_t<T>* lse, const void* dloss, int dloss_code,
                                std::int64_t count, T* dx) {
  using C = acc_t<T>;
  constexpr int kVec = RowSplit<T>::kVec;
  std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  int lane = static_cast<int>(threadIdx.x % 32);
  if (i >= n) return;
  std::int64_t r = r0 + i;
  auto t = static_cast<std::int64_t>(target[r]);
  double scale = count > 0 ? read_scalar(dloss, dloss_code) / static_cast<double>(count) : 0.0;
  auto s = static_cast<C>(scale);
  bool zero = t == ignore_index || s == C(0);
  const T* xr = x + i * classes;
  T* dr = dx + r * classes;
  C l = zero ? C(0) : lse[r];
  auto grad = [&](std::int64_t v, T raw) {
    if (zero) return static_cast<T>(C(0));
    C p = exp_of(static_cast<C>(raw) - l);
    return static_cast<T>((v == t ? p - C(1) : p) * s);
  };
  RowSplit<T> split(xr, classes);
  if (RowSplit<T>(dr, classes).head != split.head) {
    for (std::int64_t v = lane; v < classes; v += 32) dr[v] = grad(v, xr[v]);
    return;
  }
  for (std::int64_t v = lane; v < split.head; v += 32) dr[v] = grad(v, xr[v]);
  const auto* in = reinterpret_cast<const uint4*>(xr + split.head);
  auto* out = reinterpret_cast<uint4*>(dr + split.head);
  for (std::int64_t q = lane; q < split.body; q += 32) {
    uint4 raw = in[q];
    uint4 result;
    const T* e = reinterpret_cast<const T*>(&raw);
    T* o = reinterpret_cast<T*>(&result);
#pragma unroll
    for (int u = 0; u < kVec; ++u) o[u] = grad(split.head + q * kVec + u, e[u]);
    out[q] = result;
  }
  for (std::int64_t v = split.head + split.body * kVec + lane; v < classes; v += 32) {
    dr[v] = grad(v, xr[v]);
  }
}

// Calls f(TypeTag<I>{}) for the target dtype (i32 or i64).
template <class F>
void dispatch_index(DType dtype, F&& f) {
  if (dtype == DType::i32) {
    f(TypeTag<std::int32_t>{});
  } else {
    f(TypeTag<std::int64_t>{});
  }
}

unsigned row_blocks(std::int64_t n) {
  return static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

std::int64_t cross_entropy_count(const Tensor& targets, std::int64_t classes,
                                 std::int64_t ignore_index) {
  std::int64_t rows = targets.numel();
  if (rows == 0) return 0;
  DeviceGuard guard(targets.device().index);
  cudaStream_t stream = stream_for(targets.device());
  Tensor counts = empty({2}, {DType::i64, targets.device()});
  auto* pc = device_ptr<unsigned long long>(counts);
  LN_CUDA_CHECK(cudaMemsetAsync(pc, 0, sizeof(unsigned long long), stream));
  LN_CUDA_CHECK(cudaMemsetAsync(pc + 1, 0xFF, sizeof(unsigned long long), stream));
  dispatch_index(targets.dtype(), [&](auto tag) {
    using I = typename decltype(tag)::type;
    count_kernel<I><<<grid_for(rows, kThreads), kThreads, 0, stream>>>(
        device_ptr<const I>(targets), rows, classes, ignore_index, pc);
    LN_CUDA_CHECK(cudaGetLastError());
  });
  unsigned long long host[2] = {0, 0};
  LN_CUDA_CHECK(cudaMemcpyAsync(host, pc, sizeof(host), cudaMemcpyDeviceToHost, stream));
  LN_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host[1] != kNoRow) {
    auto row = static_cast<std::int64_t>(host[1]);
    std::int64_t value = 0;
    dispatch_index(targets.dtype(), [&](auto tag) {
      using I = typename decltype(tag)::type;
      I v{};
      LN_CUDA_CHECK(cudaMemcpyAsync(&v, device_ptr<const I>(targets) + row, sizeof(I),
                                    cudaMemcpyDeviceToHost, stream));
      LN_CUDA_CHECK(cudaStreamSynchronize(stream));
      value = v;
    });
    throw Error(cat("cross_entropy: target ", value, " at row ", row, " is outside [0, ", classes,
                    ") and is not ignore_index (", ignore_index, ")"));
  }
  return static_cast<std::int64_t>(host[0]);
}

void cross_entropy_forward(const Tensor& chunk, const Tensor& targets, std::int64_t r0,
                           std::int64_t ignore_index, const Tensor& lse, const Tensor& row_loss) {
  std::int64_t n = chunk.size(0);
  std::int64_t classes = chunk.size(1);
  if (n == 0) return;
  DeviceGuard guard(chunk.device().index);
  dispatch_device_floating(chunk.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(targets.dtype(), [&](auto itag) {
      using I = typename decltype(itag)::type;
      forward_kernel<T, I><<<row_blocks(n), kThreads, 0, stream_for(chunk.device())>>>(
          device_ptr<const T>(chunk), device_ptr<const I>(targets), r0, n, classes, ignore_index,
          device_ptr<acc_t<T>>(lse), device_ptr<double>(row_loss));
      LN_CUDA_CHECK(cudaGetLastError());
    });
  });
}

void cross_entropy_loss(const Tensor& row_loss, std::int64_t count, const Tensor& loss) {
  DeviceGuard guard(loss.device().index);
  loss_kernel<<<1, kLossThreads, 0, stream_for(loss.device())>>>(
      row_loss.numel() > 0 ? device_ptr<const double>(row_loss) : nullptr, row_loss.numel(), count,
      loss.raw_data(), scalar_code(loss.dtype()));
  LN_CUDA_CHECK(cudaGetLastError());
}

void cross_entropy_backward(const Tensor& chunk, const Tensor& targets, std::int64_t r0,
                            std::int64_t ignore_index, const Tensor& lse, const Tensor& dloss,
                            std::int64_t count, const Tensor& dx) {
  std::int64_t n = chunk.size(0);
  std::int64_t classes = chunk.size(1);
  if (n == 0) return;
  DeviceGuard guard(chunk.device().index);
  dispatch_device_floating(chunk.dtype(), "cross_entropy backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(targets.dtype(), [&](auto itag) {
      using I = typename decltype(itag)::type;
      backward_kernel<T, I><<<row_blocks(n), kThreads, 0, stream_for(chunk.device())>>>(
          device_ptr<const T>(chunk), device_ptr<const I>(targets), r0, n, classes, ignore_index,
          device_ptr<const acc_t<T>>(lse), dloss.raw_data(), scalar_code(dloss.dtype()), count,
          device_ptr<T>(dx));
      LN_CUDA_CHECK(cudaGetLastError());
    });
  });
}

}  // namespace longnet::cuda
