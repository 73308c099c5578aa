// What the dilated attention kernels share (attention/cuda/dilated.cu, the general kernels on
// CUDA cores and the host side; attention/cuda/dilated_mma.cu, the tensor-core kernels): the
// problem and launch descriptions, where a block's rows live, and the bf16 tensor-core path's
// entry points.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <limits>

namespace longnet::cuda::detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Where an operand's rows live: element strides of batch, position and head (the last dim
// has stride 1).
struct Operand {
  const void* data;
  std::int64_t sb, sn, sh;
};

struct Problem {
  std::int64_t nq, nk, n;  // n = max(nq, nk): the positions segments are laid over
  std::int64_t heads, d, dv;
  bool causal;
  float scale;       // multiplies q.k
  float scale_log2;  // scale * log2(e): the kernels exponentiate in base 2
};

// One branch applied to heads [head_begin, head_begin + heads).
struct Branch {
  std::int64_t w;  // segment length, at most n
  std::int64_t r;
  std::int64_t segments;
  int tiles;  // compact tiles per segment (the most any offset needs)
  int head_begin;
  int heads;
  int offset;       // the group's offset (grouped mode), or -1: head h uses h mod r (paper)
  float out_scale;  // 1/m in grouped mode
  bool merge;       // fold into the (out, lse) of earlier branches (paper mode after the first)
};

// One launch: branches on consecutive head ranges, blockIdx.y the head. Paper mode launches
// each branch on all heads in turn (each merges into the last); grouped mode runs its groups
// side by side, so a group of few heads does not leave the GPU idle.
constexpr int kMaxBranches = 8;
struct Launch {
  Branch branch[kMaxBranches];  // sorted by head_begin, none empty
  int count;
  int head_begin;
  int heads;
  std::int64_t blocks;  // grid x: the most (segment, tile) pairs any branch has
};

// The branch of head. Constant indices keep the table in parameter space (a dynamic index
// would copy it to local memory).
__device__ __forceinline__ Branch branch_of(const Launch& l, int head) {
  Branch br = l.branch[0];
#pragma unroll
  for (int i = 1; i < kMaxBranches; ++i) {
    if (i < l.count && head >= l.branch[i].head_begin) br = l.branch[i];
  }
  return br;
}

// The rows of one segment a block works on.
struct Segment {
  std::int64_t first;   // position of compact row 0
  std::int64_t nq, nk;  // compact query and key rows
  int tile;
};

__device__ __forceinline__ std::int64_t count_selected(std::int64_t first, std::int64_t end,
                                                       std::int64_t r) {
  return first < end ? (end - first + r - 1) / r : 0;
}

// blockIdx.x enumerates (segment, tile); reverse puts a segment's last tile first, which
// under the causal mask is the heaviest in the forward, so the long blocks start early.
__device__ __forceinline__ Segment locate(const Problem& p, const Branch& br, int head,
                                          bool reverse) {
  std::int64_t seg = blockIdx.x / br.tiles;
  int tile = static_cast<int>(blockIdx.x % br.tiles);
  std::int64_t t0 = seg * br.w;
  std::int64_t j = br.offset >= 0 ? br.offset : head % br.r;
  std::int64_t end = t0 + br.w;
  Segment s;
  s.first = t0 + j;
  s.nq = count_selected(s.first, end < p.nq ? end : p.nq, br.r);
  s.nk = count_selected(s.first, end < p.nk ? end : p.nk, br.r);
  s.tile = reverse ? br.tiles - 1 - tile : tile;
  return s;
}

// Paper mode's merge of the running output (normalised, log-denominator lse_old) with a
// branch's normalised output (lse_new): each is weighted by its share of the union's
// denominator, whose log is lse. Without merge the branch stands alone.
struct MergeWeights {
  float w_old, w_new, lse;
};
__device__ __forceinline__ MergeWeights merge_weights(bool merge, float lse_old, float lse_new) {
  if (!merge) return {0.f, 1.f, lse_new};
  const float top = fmaxf(lse_old, lse_new);
  float w_old = lse_old == -kInf ? 0.f : expf(lse_old - top);
  float w_new = expf(lse_new - top);
  const float sum = w_old + w_new;
  const float norm = 1.f / sum;
  return {w_old * norm, w_new * norm, top + logf(sum)};
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// ---- the tensor-core path (attention/cuda/dilated_mma.cu) ----

// Compact rows of a warpgroup's (a block's, with mma.sync) tile in the tensor-core kernels:
// the forward's query tile and the backward's key tile.
constexpr int kMmaQueryTile = 64;
constexpr int kMmaKeyTile = 64;

// Whether the tensor-core kernels of p run on wgmma (else mma.sync): wgmma_device() and a
// head dim they cover, in a build with sm_90a code.
bool mma_wgmma(const Problem& p);

// Compact query rows per block of the tensor-core forward (the plan's tiles count these):
// kMmaQueryTile, or three times that with the wgmma kernel's three warpgroups.
int mma_query_tile(const Problem& p);

// Compact key rows per block of the tensor-core backward (the plan's tiles count these):
// kMmaKeyTile, or twice that with the wgmma kernels' two warpgroups.
int mma_key_tile(const Problem& p);

// Whether the tensor-core kernels take a problem: bf16, D == Dv in {32, 64, 128}, and every
// operand's rows 16-byte aligned (aligned base, strides multiples of 8 elements), which the
// 16-byte asynchronous copies need.
bool mma_takes(const Problem& p, bool bf16, std::initializer_list<Operand> operands);

// Whether the current device runs the wgmma kernels (sm_90a) for the head dims they cover:
// compute capability 9.0 and LONGNET_NO_WGMMA unset.
bool wgmma_device();

// One launch of the forward: out is f32 when the branches merge into it, else bf16. The
// launches of one call go on the stream back to back: each may start before the one before it
// ends, and waits for it before it touches what they share (out and lse here, dk and dv in
// the backward).
void mma_forward(const Problem& p, const Launch& l, dim3 grid, Operand q, Operand k, Operand v,
                 void* out, bool out_f32, float* lse, cudaStream_t stream);

// One launch of the backward. dq (f32) accumulates by atomics; dk and dv are f32 and
// accumulate (+=) when grads_f32, else bf16 and written (each key of each head is in one
// block of the whole backward). dp is rowsum(dout * out) per (batch, head, query).
void mma_backward(const Problem& p, const Launch& l, dim3 grid, Operand q, Operand k, Operand v,
                  Operand dout, const float* lse, const float* dp, float* dq, void* dk, void* dv,
                  bool grads_f32, cudaStream_t stream);

}  // namespace longnet::cuda::detail
