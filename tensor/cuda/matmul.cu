// Matrix products through cuBLAS. cuBLAS is column-major; a row-major C = A B is the
// column-major C^T = B^T A^T, so B goes first and a row-major operand is passed untransposed
// (a column-major operand, i.e. a transposed view, gets CUBLAS_OP_T). Batch dims become
// strided-batched calls; a weight shared by the whole batch folds the batch into M (one
// large GEMM, as a linear layer on [batch, seq, features] wants).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <memory>
#include <mutex>

#include "tensor/cpu/loop.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/matmul.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

namespace {

constexpr int kMaxDevices = 64;
// cuBLAS's recommended workspace on Hopper; given once per device, kept for the process.
constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

struct Blas {
  cublasHandle_t handle = nullptr;
  // One thread at a time queues calls on the handle.
  std::mutex mutex;
};

// The handle of device, created on first use and never destroyed (destroying it during
// static destruction can run after the CUDA context is gone).
Blas& blas(int device) {
  static std::array<std::unique_ptr<Blas>, kMaxDevices> handles;
  static std::mutex mutex;
  LN_CHECK(device >= 0 && device < kMaxDevices, "matmul: cuda:", device, " is out of range");
  std::lock_guard<std::mutex> lock(mutex);
  if (!handles[device]) {
    auto b = std::make_unique<Blas>();
    LN_CUBLAS_CHECK(cublasCreate(&b->handle));
    // Default math: no TF32 for f32 inputs (CUBLAS_COMPUTE_32F below also forbids it).
    LN_CUBLAS_CHECK(cublasSetMathMode(b->handle, CUBLAS_DEFAULT_MATH));
    // The device's one stream, set once: cublasSetStream also puts cuBLAS back on its
    // default workspace pool, so the workspace is given after it.
    LN_CUBLAS_CHECK(cublasSetStream(b->handle, current_stream(device)));
    LN_CUBLAS_CHECK(
        cublasSetWorkspace(b->handle, allocate(kWorkspaceBytes, device), kWorkspaceBytes));
    handles[device] = std::move(b);
  }
  return *handles[device];
}

// How cuBLAS reads the last two dims of an operand: whether they are column-major (a
// transposed view) and the leading dimension. Same rules as the CPU's matrix_layout.
struct Matrix {
  bool col_major = false;
  std::int64_t ld = 0;
};

Matrix matrix_of(const Tensor& t) {
  std::int64_t rows = t.size(-2);
  std::int64_t cols = t.size(-1);
  std::int64_t rs = t.stride(-2);
  std::int64_t cs = t.stride(-1);
  // A stride along a dim of size 1 is never used; treat it as the natural one.
  if (cs == 1 || cols == 1) {
    std::int64_t ld = rows == 1 ? std::max<std::int64_t>(cols, 1) : rs;
    if (ld >= std::max<std::int64_t>(cols, 1)) return {false, ld};
  }
  if (rs == 1 || rows == 1) {
    std::int64_t ld = cols == 1 ? std::max<std::int64_t>(rows, 1) : cs;
    if (ld >= std::max<std::int64_t>(rows, 1)) return {true, ld};
  }
  throw Error(cat("matmul: ", describe(t), " with strides ", str(t.strides()),
                  " is neither row- nor column-major in its last two dims; make it contiguous"));
}

int as_int(std::int64_t value, const char* what) {
  LN_CHECK(value <= INT_MAX, "matmul: ", what, " ", value, " exceeds cuBLAS's limit of ", INT_MAX);
  return static_cast<int>(value);
}

// One strided-batched GEMM in row-major terms: count products of (m x k) by (k x n), the
// operands' first elements at a, b, c and the next product's `stride_*` elements on.
struct Gemm {
  const char* a;
  const char* b;
  char* c;
  std::int64_t m, n, k;
  Matrix la, lb;
  std::int64_t stride_a, stride_b, stride_c;
  std::int64_t count;
};

void run(cublasHandle_t handle, DType dtype, const Gemm& g) {
  cudaDataType type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (dtype == DType::bf16) type = CUDA_R_16BF;
  if (dtype == DType::f64) {
    type = CUDA_R_64F;
    compute = CUBLAS_COMPUTE_64F;
  }
  const float one_f = 1.0F;
  const float zero_f = 0.0F;
  const double one_d = 1.0;
  const double zero_d = 0.0;
  const void* alpha = dtype == DType::f64 ? static_cast<const void*>(&one_d) : &one_f;
  const void* beta = dtype == DType::f64 ? static_cast<const void*>(&zero_d) : &zero_f;
  // Column-major C^T (n x m) = op(B) (n x k) * op(A) (k x m).
  LN_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, g.lb.col_major ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.la.col_major ? CUBLAS_OP_T : CUBLAS_OP_N, as_int(g.n, "N"), as_int(g.m, "M"),
      as_int(g.k, "K"), alpha, g.b, type, as_int(g.lb.ld, "leading dimension"), g.stride_b, g.a,
      type, as_int(g.la.ld, "leading dimension"), g.stride_a, beta, g.c, type, as_int(g.n, "N"),
      g.stride_c, as_int(g.count, "batch count"), compute, CUBLAS_GEMM_DEFAULT));
}

// The batch strides of t's leading dims broadcast to batch.
Strides batch_strides(const Tensor& t, const Shape& batch) {
  Tensor lead(t.storage(), Shape(t.shape().begin(), t.shape().end() - 2),
              Strides(t.strides().begin(), t.strides().end() - 2), 0, t.dtype());
  return cpu::broadcast_strides(lead, batch);
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, const Tensor& out) {
  if (out.numel() == 0) return;
  int device = out.device().index;
  DeviceGuard guard(device);
  Shape batch(out.shape().begin(), out.shape().end() - 2);
  std::int64_t m = a.size(-2);
  std::int64_t k = a.size(-1);
  std::int64_t n = b.size(-1);
  auto bytes = static_cast<std::int64_t>(element_size(out.dtype()));
  Gemm g{static_cast<const char*>(a.raw_data()),
         static_cast<const char*>(b.raw_data()),
         static_cast<char*>(out.raw_data()),
         m,
         n,
         k,
         matrix_of(a),
         matrix_of(b),
         0,
         0,
         m * n,
         1};

  // The batch dims, merged where all three operands allow.
  Strides sa = batch_strides(a, batch);
  Strides sb = batch_strides(b, batch);
  Strides so(out.strides().begin(), out.strides().end() - 2);
  cpu::Layout<3> layout = cpu::coalesce<3>(batch, {sa, sb, so});

  bool shared_b = std::all_of(sb.begin(), sb.end(), [](std::int64_t s) { return s == 0; });
  if (shared_b && !g.la.col_major && !layout.shape.empty()) {
    // a's rows continue evenly from one batch element to the next (out's always do): then
    // the batch is just more rows of one product.
    Shape rows = batch;
    rows.push_back(m);
    Strides ra = sa;
    ra.push_back(g.la.ld);
    Strides ro = so;
    ro.push_back(n);
    cpu::Layout<2> merged = cpu::coalesce<2>(rows, {ra, ro});
    if (merged.shape.size() == 1) {
      g.m = numel(batch) * m;
      layout = {};
    }
  }

  // The innermost batch dim is cuBLAS's batch; the others are a loop here.
  std::int64_t outer = 1;
  Shape outer_shape;
  if (!layout.shape.empty()) {
    g.count = layout.shape.back();
    g.stride_a = layout.strides[0].back();
    g.stride_b = layout.strides[1].back();
    g.stride_c = layout.strides[2].back();
    outer_shape.assign(layout.shape.begin(), layout.shape.end() - 1);
    outer = numel(outer_shape);
  }

  Blas& handle = blas(device);
  std::lock_guard<std::mutex> lock(handle.mutex);
  for (std::int64_t i = 0; i < outer; ++i) {
    std::int64_t oa = 0;
    std::int64_t ob = 0;
    std::int64_t oc = 0;
    std::int64_t rest = i;
    for (auto d = static_cast<std::int64_t>(outer_shape.size()) - 1; d >= 0; --d) {
      std::int64_t at = rest % outer_shape[d];
      rest /= outer_shape[d];
      oa += at * layout.strides[0][d];
      ob += at * layout.strides[1][d];
      oc += at * layout.strides[2][d];
    }
    Gemm one = g;
    one.a += oa * bytes;
    one.b += ob * bytes;
    one.c += oc * bytes;
    run(handle.handle, out.dtype(), one);
  }
}

}  // namespace longnet::cuda
