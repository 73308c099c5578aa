// Matrix products through cuBLAS. cuBLAS is column-major; a row-major C = A B is the
// column-major C^T = B^T A^T, so B goes first and a row-major operand is passed untransposed
// (a column-major operand, i.e. a transposed view, gets CUBLAS_OP_T). Batch dims become
// strided-batched calls; a weight shared by the whole batch folds the batch into M (one
// large GEMM, as a linear layer on [batch, seq, features] wants). The linear layer's
// products with a bias epilogue go through cuBLASLt, the same way round.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <map>
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
constexpr std::size_t kMaxPlans = 256;
// The bias epilogues read the bias in 16-byte accesses; a less aligned bias (a view into
// another tensor) takes the unfused path.
constexpr std::uint32_t kBiasAlignment = 16;

// A cuBLASLt product ready to run: its descriptors and the algorithm the heuristic chose
// for them, if it found one. The bias pointer is set on op before each call.
struct LtPlan {
  bool found = false;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr;
  cublasLtMatrixLayout_t b = nullptr;
  cublasLtMatrixLayout_t d = nullptr;
  cublasLtMatmulAlgo_t algo{};

  // The descriptors are host objects, read when a call is queued: destroying them never
  // touches queued work.
  void destroy() const {
    for (cublasLtMatrixLayout_t layout : {a, b, d}) {
      if (layout != nullptr) cublasLtMatrixLayoutDestroy(layout);
    }
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

// What a plan depends on: the problem, and the alignments (bytes) of the A, B, D and bias
// pointers, since the heuristic only offers kernels that can read operands so aligned.
struct LtKey {
  cublasLtEpilogue_t epilogue;
  DType dtype;  // of every operand, the bias too
  std::int64_t m, n, k;
  bool trans_a, trans_b;
  std::array<std::uint32_t, 4> alignments = {};
  auto operator<=>(const LtKey&) const = default;
};

struct Blas {
  cublasHandle_t handle = nullptr;
  cublasLtHandle_t lt = nullptr;
  // Shared by both handles: all their work is queued on the device's one stream.
  void* workspace = nullptr;
  // A linear layer's few shapes each get a plan once (found or not); the heuristic costs
  // more than a small product. Row counts that keep changing (generation adds a token per
  // call) would add plans forever: past kMaxPlans the cache starts over.
  std::map<LtKey, LtPlan> plans;
  // Queueing a call, or finding a plan, setting its bias pointer and queueing the call,
  // happen one thread at a time.
  std::mutex mutex;
};

// The handles of device, created on first use and never destroyed (destroying them during
// static destruction can run after the CUDA context is gone); so are the plans.
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
    b->workspace = allocate(kWorkspaceBytes, device);
    LN_CUBLAS_CHECK(cublasSetWorkspace(b->handle, b->workspace, kWorkspaceBytes));
    LN_CUBLAS_CHECK(cublasLtCreate(&b->lt));
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

namespace {

cudaDataType lt_type(DType dtype) { return dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// The largest power of two up to 256 that divides ptr's address.
std::uint32_t alignment(const void* ptr) {
  auto address = reinterpret_cast<std::uintptr_t>(ptr);
  std::uint32_t bytes = 256;
  while (address % bytes != 0) bytes /= 2;
  return bytes;
}

template <class T>
void set(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  LN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attribute, &value, sizeof(value)));
}

// A column-major layout of rows x cols, leading dimension rows.
cublasLtMatrixLayout_t layout(DType dtype, std::int64_t rows, std::int64_t cols) {
  cublasLtMatrixLayout_t desc = nullptr;
  LN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc, lt_type(dtype),
                                             static_cast<std::uint64_t>(rows),
                                             static_cast<std::uint64_t>(cols), rows));
  return desc;
}

// The plan for key, made with the heuristic's first choice; bias has key's alignment.
// cuBLASLt answers NOT_SUPPORTED, or no algorithm, where it has no kernel for the case.
LtPlan make_plan(cublasLtHandle_t lt, const LtKey& key, const void* bias) {
  LtPlan plan;
  LN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, key.epilogue);
  set(plan.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(lt_type(key.dtype)));
  set(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  plan.a = key.trans_a ? layout(key.dtype, key.k, key.m) : layout(key.dtype, key.m, key.k);
  plan.b = key.trans_b ? layout(key.dtype, key.n, key.k) : layout(key.dtype, key.k, key.n);
  plan.d = layout(key.dtype, key.m, key.n);

  cublasLtMatmulPreference_t preference = nullptr;
  LN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  auto prefer = [&](cublasLtMatmulPreferenceAttributes_t attribute, const auto& value) {
    LN_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value)));
  };
  prefer(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kWorkspaceBytes);
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.alignments[0]);
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.alignments[1]);
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.alignments[2]);
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.alignments[2]);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(lt, plan.op, plan.a, plan.b, plan.d,
                                                         plan.d, preference, 1, &result, &found);
  LN_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || found == 0) return plan;
  LN_CUBLAS_CHECK(status);
  plan.found = true;
  plan.algo = result.algo;
  return plan;
}

// Column-major D (m x n, leading dimension m) = op(A) (m x k) op(B) (k x n) with an
// epilogue on bias; A is stored k x m when trans_a (else m x k) and B n x k when trans_b
// (else k x n), each with its stored rows as leading dimension.
// Returns false, queueing nothing, where cuBLASLt has no kernel for the case.
bool run_lt(int device, LtKey key, const void* a, const void* b, void* d, void* bias) {
  key.alignments = {alignment(a), alignment(b), alignment(d), alignment(bias)};
  if (key.alignments[3] < kBiasAlignment) return false;
  DeviceGuard guard(device);
  Blas& handles = blas(device);
  std::lock_guard<std::mutex> lock(handles.mutex);
  auto it = handles.plans.find(key);
  if (it == handles.plans.end()) {
    if (handles.plans.size() >= kMaxPlans) {
      for (const auto& [unused, plan] : handles.plans) plan.destroy();
      handles.plans.clear();
    }
    it = handles.plans.emplace(key, make_plan(handles.lt, key, bias)).first;
  }
  const LtPlan& plan = it->second;
  if (!plan.found) return false;
  set(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  const float one = 1.0F;
  const float zero = 0.0F;
  LN_CUBLAS_CHECK(cublasLtMatmul(handles.lt, plan.op, &one, a, plan.a, b, plan.b, &zero, d, plan.d,
                                 d, plan.d, &plan.algo, handles.workspace, kWorkspaceBytes,
                                 current_stream(device)));
  return true;
}

}  // namespace

bool matmul_bias(const Tensor& a, const Tensor& w, const Tensor& bias, const Tensor& out) {
  // Column-major out^T (n x rows) = w (n x k, stored k x n: transposed) a^T (k x rows); the
  // bias runs along out^T's rows, which is what CUBLASLT_EPILOGUE_BIAS adds.
  LtKey key{.epilogue = CUBLASLT_EPILOGUE_BIAS,
            .dtype = out.dtype(),
            .m = w.size(0),
            .n = a.size(0),
            .k = a.size(1),
            .trans_a = true,
            .trans_b = false};
  return run_lt(out.device().index, key, w.raw_data(), a.raw_data(), out.raw_data(),
                bias.raw_data());
}

bool matmul_bias_grad(const Tensor& g, const Tensor& a, const Tensor& dw, const Tensor& dbias) {
  // Column-major dw^T (k x n) = a^T (k x rows) g (rows x n, stored n x rows: transposed).
  // g is operand B and the sum runs over the product's k (the rows), so
  // CUBLASLT_EPILOGUE_BGRADB writes dbias (n) = g summed over rows.
  LtKey key{.epilogue = CUBLASLT_EPILOGUE_BGRADB,
            .dtype = dw.dtype(),
            .m = a.size(1),
            .n = g.size(1),
            .k = a.size(0),
            .trans_a = false,
            .trans_b = true};
  return run_lt(dw.device().index, key, a.raw_data(), g.raw_data(), dw.raw_data(),
                dbias.raw_data());
}

}  // namespace longnet::cuda
