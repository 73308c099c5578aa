// Flash-attention style dilated attention: the host side (plan, scratch, dispatch) and the
// general kernels on CUDA cores (f32 arithmetic for f32 and bf16 inputs, any head dims up to
// 128, any row alignment). bf16 problems that the tensor-core kernels take (mma_takes in
// attention/cuda/dilated_kernels.cuh) go to attention/cuda/dilated_mma.cu instead; the rest
// run here. A block of 256 threads owns one 64-row tile of compact rows of one (batch, head,
// segment) for one branch; the forward walks the segment's key tiles with an online softmax,
// the backward walks query tiles for one key tile. Thread (ty, tx) of the 16 x 16 grid
// holds scores [ty + 16 i][tx + 16 j] for i, j < 4, so a row's 16 owners share a half-warp
// and reduce by shuffles.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "attention/cuda/dilated.h"
#include "attention/cuda/dilated_kernels.cuh"
#include "tensor/cuda/check.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

using namespace detail;

namespace {

constexpr int kTile = 64;            // compact rows per query tile and per key tile
constexpr int kThreads = 256;        // 16 x 16
constexpr int kPad = 4;              // floats of padding per shared row: keeps float4 alignment and
                                     // puts the 8 rows a quarter-warp reads in distinct bank groups
constexpr int kPRow = kTile + kPad;  // row length of the shared probability tiles
// Head dims are padded to kD; a thread owns kD / 16 output columns in chunks of kV
// consecutive floats: columns c * 16 * kV + tx * kV + e.
constexpr int vec_width(int kd) { return kd >= 64 ? 4 : 2; }

template <int kV>
__device__ __forceinline__ void load_vec(const float* p, float* x) {
  if constexpr (kV == 4) {
    float4 t = *reinterpret_cast<const float4*>(p);
    x[0] = t.x;
    x[1] = t.y;
    x[2] = t.z;
    x[3] = t.w;
  } else {
    float2 t = *reinterpret_cast<const float2*>(p);
    x[0] = t.x;
    x[1] = t.y;
  }
}

// Copies `rows` compact rows (the first at position `pos`, then every r) of one head into a
// shared tile of kTile rows of kD + kPad floats; rows and columns beyond the data are 0.
// Consecutive threads read consecutive columns, so each row is one coalesced read.
template <class T, int kD>
__device__ void load_rows(float* tile, const Operand& op, std::int64_t batch, int head,
                          std::int64_t pos, std::int64_t r, std::int64_t rows, std::int64_t dim) {
  const T* base = static_cast<const T*>(op.data) + batch * op.sb + pos * op.sn + head * op.sh;
  const std::int64_t stride = r * op.sn;
  for (int idx = threadIdx.x; idx < kTile * kD; idx += kThreads) {
    int row = idx / kD;
    int col = idx % kD;
    float x = 0;
    if (row < rows && col < dim) x = to_float(base[row * stride + col]);
    tile[row * (kD + kPad) + col] = x;
  }
}

// s[i][j] = a[ty + 16 i] . b[tx + 16 j] over shared tiles. The a rows are one address per
// half-warp (broadcast); the padding puts the b rows a quarter-warp reads in distinct banks.
template <int kD>
__device__ __forceinline__ void tile_scores(const float* a, const float* b, int ty, int tx,
                                            float (&s)[4][4]) {
  constexpr int kRow = kD + kPad;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) s[i][j] = 0;
  }
#pragma unroll 4
  for (int c = 0; c < kD; c += 4) {
    float4 x[4];
    float4 y[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      x[i] = *reinterpret_cast<const float4*>(a + (ty + 16 * i) * kRow + c);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      y[j] = *reinterpret_cast<const float4*>(b + (tx + 16 * j) * kRow + c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = fmaf(x[i].x, y[j].x, s[i][j]);
        s[i][j] = fmaf(x[i].y, y[j].y, s[i][j]);
        s[i][j] = fmaf(x[i].z, y[j].z, s[i][j]);
        s[i][j] = fmaf(x[i].w, y[j].w, s[i][j]);
      }
    }
  }
}

// Sum or max over the 16 lanes that share a score row.
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// Forward of one branch for one query tile. O is the type out is kept in: T when this
// launch writes final values, f32 when the branches merge into it.
template <class T, class O, int kD>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Operand q, Operand k, Operand v, O* out, float* lse, Problem p, Launch launch) {
  constexpr int kRow = kD + kPad;
  constexpr int kV = vec_width(kD);
  constexpr int kCols = kD / 16;
  extern __shared__ float4 shared[];
  float* qs = reinterpret_cast<float*>(shared);
  float* ks = qs + kTile * kRow;
  float* vs = ks + kTile * kRow;
  float* ps = vs + kTile * kRow;

  const int head = launch.head_begin + static_cast<int>(blockIdx.y);
  const Branch br = branch_of(launch, head);
  if (blockIdx.x >= br.segments * br.tiles) return;
  const std::int64_t batch = blockIdx.z;
  const Segment s = locate(p, br, head, /*reverse=*/true);
  const std::int64_t a0 = static_cast<std::int64_t>(s.tile) * kTile;
  if (a0 >= s.nq || s.nk == 0) return;
  const int tx = static_cast<int>(threadIdx.x % 16);
  const int ty = static_cast<int>(threadIdx.x / 16);

  load_rows<T, kD>(qs, q, batch, head, s.first + a0 * br.r, br.r,
                   std::min<std::int64_t>(kTile, s.nq - a0), p.d);
  float m[4];  // running row max (base 2), the same in all 16 owners of the row
  float l[4];  // this thread's part of the running row sum
  float o[4][kCols] = {};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -kInf;
    l[i] = 0;
  }

  // Under the causal mask compact query row a sees compact keys 0..a of its segment.
  const std::int64_t key_end = p.causal ? std::min<std::int64_t>(s.nk, a0 + kTile) : s.nk;
  for (std::int64_t k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // the previous tile's readers are done
    std::int64_t rows = std::min<std::int64_t>(kTile, s.nk - k0);
    load_rows<T, kD>(ks, k, batch, head, s.first + k0 * br.r, br.r, rows, p.d);
    load_rows<T, kD>(vs, v, batch, head, s.first + k0 * br.r, br.r, rows, p.dv);
    __syncthreads();
    float sc[4][4];
    tile_scores<kD>(qs, ks, ty, tx, sc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const std::int64_t row = a0 + ty + 16 * i;
      float top = -kInf;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const std::int64_t key = k0 + tx + 16 * j;
        bool seen = key < s.nk && (!p.causal || key <= row);
        sc[i][j] = seen ? sc[i][j] * p.scale_log2 : -kInf;
        top = fmaxf(top, sc[i][j]);
      }
      const float m_new = fmaxf(m[i], row_max(top));
      // A row that has seen no key yet keeps exp2(-inf - 0) = 0 everywhere instead of NaN.
      const float base = m_new == -kInf ? 0.f : m_new;
      const float alpha = exp2f(m[i] - base);
      float sum = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        sc[i][j] = exp2f(sc[i][j] - base);
        sum += sc[i][j];
        ps[(ty + 16 * i) * kPRow + tx + 16 * j] = sc[i][j];
      }
      l[i] = l[i] * alpha + sum;
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[i][c] *= alpha;
    }
    __syncthreads();
    // o += P V: P rows broadcast per half-warp, V columns one float4 (or float2) per lane.
#pragma unroll 2
    for (int kk = 0; kk < kTile; kk += 4) {
      float4 pr[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        pr[i] = *reinterpret_cast<const float4*>(ps + (ty + 16 * i) * kPRow + kk);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float vv[kCols];
#pragma unroll
        for (int c = 0; c < kCols / kV; ++c) {
          load_vec<kV>(vs + (kk + u) * kRow + c * 16 * kV + tx * kV, vv + c * kV);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float pu = reinterpret_cast<const float*>(&pr[i])[u];
#pragma unroll
          for (int c = 0; c < kCols; ++c) o[i][c] = fmaf(pu, vv[c], o[i][c]);
        }
      }
    }
  }

  // Reductions first, for all rows at once: every lane of the warp must reach each shuffle.
  float total[4];
  float lse_old[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    total[i] = row_sum(l[i]);
    // Merging: the row's first lane reads the earlier lse and shares it, so no lane reads it
    // after that lane has overwritten it.
    const std::int64_t row = a0 + ty + 16 * i;
    const std::int64_t lse_index = (batch * p.heads + head) * p.nq + s.first + row * br.r;
    lse_old[i] = br.merge && row < s.nq && tx == 0 ? lse[lse_index] : -kInf;
    lse_old[i] = __shfl_sync(0xffffffffu, lse_old[i], 0, 16);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t row = a0 + ty + 16 * i;
    if (row >= s.nq) continue;
    const std::int64_t pos = s.first + row * br.r;
    const float lse_new = (m[i] + log2f(total[i])) * kLn2;
    const auto [w_old, w_new, lse_out] = merge_weights(br.merge, lse_old[i], lse_new);
    const float gain = w_new * br.out_scale / total[i];
    O* dst = out + ((batch * p.nq + pos) * p.heads + head) * p.dv;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int col = (c / kV) * 16 * kV + tx * kV + c % kV;
      if (col >= p.dv) continue;
      float x = o[i][c] * gain;
      if (br.merge) x += to_float(dst[col]) * w_old;
      dst[col] = from_float<O>(x);
    }
    if (tx == 0) lse[(batch * p.heads + head) * p.nq + pos] = lse_out;
  }
}

// Backward of one branch for one key tile: dk and dv of the tile's keys in registers over
// all query tiles that see them, dq added atomically (f32) per query tile. P is recomputed
// from the saved lse; dS = P (dO' . v - Dp) with dO' = out_scale dO.
template <class T, int kD>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Operand q, Operand k, Operand v, Operand dout, const float* lse,
                    const float* dp, float* dq, float* dk, float* dv, Problem p, Launch launch,
                    bool vector_atomics) {
  constexpr int kRow = kD + kPad;
  constexpr int kV = vec_width(kD);
  constexpr int kCols = kD / 16;
  extern __shared__ float4 shared[];
  float* ks = reinterpret_cast<float*>(shared);
  float* vs = ks + kTile * kRow;
  float* qs = vs + kTile * kRow;
  float* dos = qs + kTile * kRow;
  float* ps = dos + kTile * kRow;   // P [query][key]
  float* dss = ps + kTile * kPRow;  // dS [query][key]
  float* lse_s = dss + kTile * kPRow;
  float* dp_s = lse_s + kTile;

  const int head = launch.head_begin + static_cast<int>(blockIdx.y);
  const Branch br = branch_of(launch, head);
  if (blockIdx.x >= br.segments * br.tiles) return;
  const std::int64_t batch = blockIdx.z;
  const Segment s = locate(p, br, head, /*reverse=*/false);
  const std::int64_t k0 = static_cast<std::int64_t>(s.tile) * kTile;
  if (k0 >= s.nk || s.nq == 0) return;
  const int tx = static_cast<int>(threadIdx.x % 16);
  const int ty = static_cast<int>(threadIdx.x / 16);

  const std::int64_t key_rows = std::min<std::int64_t>(kTile, s.nk - k0);
  load_rows<T, kD>(ks, k, batch, head, s.first + k0 * br.r, br.r, key_rows, p.d);
  load_rows<T, kD>(vs, v, batch, head, s.first + k0 * br.r, br.r, key_rows, p.dv);
  // Keys 4 ty + i of the tile, columns as in the forward's output.
  float dk_acc[4][kCols] = {};
  float dv_acc[4][kCols] = {};
  const float* lse_h = lse + (batch * p.heads + head) * p.nq;
  const float* dp_h = dp + (batch * p.heads + head) * p.nq;

  // Query tiles before the key tile see none of its keys under the causal mask.
  for (std::int64_t a0 = p.causal ? k0 : 0; a0 < s.nq; a0 += kTile) {
    __syncthreads();  // the previous tile's readers are done
    const int rows = static_cast<int>(std::min<std::int64_t>(kTile, s.nq - a0));
    load_rows<T, kD>(qs, q, batch, head, s.first + a0 * br.r, br.r, rows, p.d);
    load_rows<T, kD>(dos, dout, batch, head, s.first + a0 * br.r, br.r, rows, p.dv);
    for (int t = threadIdx.x; t < kTile; t += kThreads) {
      const std::int64_t pos = s.first + (a0 + t) * br.r;
      lse_s[t] = t < rows ? lse_h[pos] * kLog2e : 0.f;
      dp_s[t] = t < rows ? dp_h[pos] : 0.f;
    }
    __syncthreads();
    float sc[4][4];
    float dpv[4][4];
    tile_scores<kD>(qs, ks, ty, tx, sc);
    tile_scores<kD>(dos, vs, ty, tx, dpv);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int qi = ty + 16 * i;
      const std::int64_t row = a0 + qi;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const std::int64_t key = k0 + tx + 16 * j;
        const bool seen = row < s.nq && key < s.nk && (!p.causal || key <= row);
        const float pv = seen ? exp2f(sc[i][j] * p.scale_log2 - lse_s[qi]) : 0.f;
        ps[qi * kPRow + tx + 16 * j] = pv;
        dss[qi * kPRow + tx + 16 * j] = pv * (dpv[i][j] * br.out_scale - dp_s[qi]);
      }
    }
    __syncthreads();
    // dv += P^T dO, dk += dS^T q: four consecutive keys per thread, read as one float4.
    for (int row = 0; row < rows; ++row) {
      const float4 pk = *reinterpret_cast<const float4*>(ps + row * kPRow + 4 * ty);
      const float4 sk = *reinterpret_cast<const float4*>(dss + row * kPRow + 4 * ty);
      float dov[kCols];
      float qv[kCols];
#pragma unroll
      for (int c = 0; c < kCols / kV; ++c) {
        load_vec<kV>(dos + row * kRow + c * 16 * kV + tx * kV, dov + c * kV);
        load_vec<kV>(qs + row * kRow + c * 16 * kV + tx * kV, qv + c * kV);
      }
      const float pa[4] = {pk.x, pk.y, pk.z, pk.w};
      const float sa[4] = {sk.x, sk.y, sk.z, sk.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          dv_acc[i][c] = fmaf(pa[i], dov[c], dv_acc[i][c]);
          dk_acc[i][c] = fmaf(sa[i], qv[c], dk_acc[i][c]);
        }
      }
    }
    // dq += dS k for query rows 4 ty + i.
    float dq_acc[4][kCols] = {};
#pragma unroll 2
    for (int key = 0; key < kTile; key += 4) {
      float4 sr[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        sr[i] = *reinterpret_cast<const float4*>(dss + (4 * ty + i) * kPRow + key);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float kv[kCols];
#pragma unroll
        for (int c = 0; c < kCols / kV; ++c) {
          load_vec<kV>(ks + (key + u) * kRow + c * 16 * kV + tx * kV, kv + c * kV);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float su = reinterpret_cast<const float*>(&sr[i])[u];
#pragma unroll
          for (int c = 0; c < kCols; ++c) dq_acc[i][c] = fmaf(su, kv[c], dq_acc[i][c]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const std::int64_t row = a0 + 4 * ty + i;
      if (row >= s.nq) continue;
      float* dst = dq + ((batch * p.nq + s.first + row * br.r) * p.heads + head) * p.d;
#pragma unroll
      for (int c = 0; c < kCols; c += kV) {
        const int col = (c / kV) * 16 * kV + tx * kV;
        if (col >= p.d) continue;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if constexpr (kV == 4) {
          if (vector_atomics) {
            atomicAdd(reinterpret_cast<float4*>(dst + col),
                      make_float4(dq_acc[i][c] * p.scale, dq_acc[i][c + 1] * p.scale,
                                  dq_acc[i][c + 2] * p.scale, dq_acc[i][c + 3] * p.scale));
            continue;
          }
        }
#endif
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          if (col + e < p.d) atomicAdd(dst + col + e, dq_acc[i][c + e] * p.scale);
        }
      }
    }
  }

  // Within one launch a key belongs to one block, and launches run in order on one stream:
  // a plain read-modify-write accumulates the branches.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t key = k0 + 4 * ty + i;
    if (key >= s.nk) continue;
    const std::int64_t pos = s.first + key * br.r;
    float* dk_row = dk + ((batch * p.nk + pos) * p.heads + head) * p.d;
    float* dv_row = dv + ((batch * p.nk + pos) * p.heads + head) * p.dv;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int col = (c / kV) * 16 * kV + tx * kV + c % kV;
      if (col < p.d) dk_row[col] += dk_acc[i][c] * p.scale;
      if (col < p.dv) dv_row[col] += dv_acc[i][c] * br.out_scale;
    }
  }
}

// Whether the branch br of head selects position pos (of the queries when `queries`, else of
// the keys): a compact row of its segment at the head's offset, and for queries one in a
// segment that has keys at that offset. narrow: positions and lengths fit 32 bits, whose
// divisions are cheaper.
__device__ __forceinline__ bool selects(const Problem& p, const Branch& br, int head,
                                        std::int64_t pos, bool queries, bool narrow) {
  const std::int64_t j = br.offset >= 0 ? br.offset : head % br.r;
  const std::int64_t in_segment =  // pos - t0
      narrow ? static_cast<std::uint32_t>(pos) % static_cast<std::uint32_t>(br.w) : pos % br.w;
  const std::int64_t after = in_segment - j;  // past the segment's first selected row
  return after >= 0 &&
         (narrow ? static_cast<std::uint32_t>(after) % static_cast<std::uint32_t>(br.r)
                 : after % br.r) == 0 &&
         (!queries || pos - in_segment + j < p.nk);
}

// The query rows a Dp launch takes, branch by branch of its launch: a head of branch i has
// rows[i] slots, ceil(w / r) a segment (with an offset, the last of a segment may fall past
// its end, and then is skipped), and its heads' slots start at start[i] within a batch row of
// per_batch slots.
struct DpRows {
  std::int64_t rows[kMaxBranches];
  std::int64_t per_segment[kMaxBranches];
  std::int64_t start[kMaxBranches];
  std::int64_t per_batch;
};

DpRows dp_rows(const Launch& l) {
  DpRows rows{};
  for (int i = 0; i < l.count; ++i) {
    const Branch& br = l.branch[i];
    rows.per_segment[i] = (br.w + br.r - 1) / br.r;
    rows.rows[i] = br.segments * rows.per_segment[i];
    rows.start[i] = rows.per_batch;
    rows.per_batch += br.heads * rows.rows[i];
  }
  return rows;
}

// a / b, in 32 bits where both fit (narrow): those divisions are much cheaper.
__device__ __forceinline__ std::int64_t quotient(std::int64_t a, std::int64_t b, bool narrow) {
  return narrow ? static_cast<std::uint32_t>(a) / static_cast<std::uint32_t>(b) : a / b;
}

// Dp[b, h, n] = sum_c dout[b, n, h, c] out[b, n, h, c] at the query rows that the branches of
// launch l select (a launch of one branch of rate 1 over every head and row takes them all;
// the other rows of Dp are left alone). Only those rows are walked, a grid-stride loop of
// kDpLanes threads a row, each taking chunks of V elements (V = 8, one 16-byte load, where
// the rows are aligned), summed by a fixed butterfly. Consecutive row groups take a head's
// consecutive rows, each reading its rows' whole cache lines.
constexpr int kDpLanes = 8;

template <class T, int V>
__global__ void dp_kernel(Operand out, Operand dout, float* dp, Problem p, Launch l, DpRows rows,
                          std::int64_t batch) {
  const std::int64_t total = batch * rows.per_batch;
  const bool narrow = total <= std::numeric_limits<std::uint32_t>::max() &&
                      p.n <= std::numeric_limits<std::uint32_t>::max();
  const int lane = static_cast<int>(threadIdx.x % kDpLanes);
  // A row's lanes loop together; the warp's other groups may have left.
  const unsigned group = 0xffu << (threadIdx.x % 32 / kDpLanes * kDpLanes);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x / kDpLanes;
  for (std::int64_t i =
           (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / kDpLanes;
       i < total; i += stride) {
    const std::int64_t b = quotient(i, rows.per_batch, narrow);
    std::int64_t slot = i - b * rows.per_batch;
    Branch br = l.branch[0];
    std::int64_t per_head = rows.rows[0];
    std::int64_t per_segment = rows.per_segment[0];
    std::int64_t start = 0;
#pragma unroll
    for (int c = 1; c < kMaxBranches; ++c) {  // constant indices: the tables stay parameters
      if (c < l.count && slot >= rows.start[c]) {
        br = l.branch[c];
        per_head = rows.rows[c];
        per_segment = rows.per_segment[c];
        start = rows.start[c];
      }
    }
    slot -= start;
    const std::int64_t in_branch = quotient(slot, per_head, narrow);
    const std::int64_t k = slot - in_branch * per_head;
    const auto h = static_cast<int>(br.head_begin + in_branch);
    const std::int64_t seg = quotient(k, per_segment, narrow);
    const std::int64_t j = br.offset >= 0 ? br.offset : h % br.r;
    const std::int64_t in_segment = j + (k - seg * per_segment) * br.r;
    const std::int64_t n = seg * br.w + in_segment;
    // Selected: inside its segment and the sequence, in a segment with keys at this offset.
    const bool selected = in_segment < br.w && n < p.nq && seg * br.w + j < p.nk;
    float sum = 0;
    if (selected) {
      const T* o = static_cast<const T*>(out.data) + b * out.sb + n * out.sn + h * out.sh;
      const T* g = static_cast<const T*>(dout.data) + b * dout.sb + n * dout.sn + h * dout.sh;
      for (std::int64_t c = lane * V; c < p.dv; c += kDpLanes * V) {
        struct alignas(sizeof(T) * V) Chunk {
          T v[V];
        };
        const Chunk oc = *reinterpret_cast<const Chunk*>(o + c);
        const Chunk gc = *reinterpret_cast<const Chunk*>(g + c);
#pragma unroll
        for (int e = 0; e < V; ++e) sum += to_float(oc.v[e]) * to_float(gc.v[e]);
      }
    }
#pragma unroll
    for (int off = kDpLanes / 2; off > 0; off /= 2) sum += __shfl_xor_sync(group, sum, off);
    if (selected && lane == 0) dp[(b * p.heads + h) * p.nq + n] = sum;
  }
}

template <class T>
__global__ void fill_kernel(T* dst, T value, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = value;
  }
}

// dst = src rounded to T, V elements a step (V = 8: 32-byte loads, 16-byte bf16 stores).
template <class T, int V>
__global__ void convert_kernel(T* dst, const float* src, std::int64_t n) {
  struct alignas(sizeof(float) * V) In {
    float v[V];
  };
  struct alignas(sizeof(T) * V) Out {
    T v[V];
  };
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n / V;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const In x = reinterpret_cast<const In*>(src)[i];
    Out y;
#pragma unroll
    for (int e = 0; e < V; ++e) y.v[e] = from_float<T>(x.v[e]);
    reinterpret_cast<Out*>(dst)[i] = y;
  }
}

// Zeros in the rows (contiguous (B, n, H, D) of T, 16-byte aligned, `chunks` 16-byte chunks a
// row, at most 32) of the heads of launch l that its branches select (selected) or do not
// select (!selected: the rows the tensor-core kernels of a first branch leave alone, and then
// -inf in lse (B, H, n) there too, when given). A lane per row of the launch's heads, in
// memory order, decides; the warp then stores its 32 rows' zeros together, 32 / chunks rows a
// store (consecutive 16-byte chunks). 32-bit index arithmetic where the sizes allow.
template <class T>
__global__ void zero_rows_kernel(T* rows, float* lse, Problem p, Launch l, std::int64_t batch,
                                 std::int64_t n, int chunks, bool queries, bool selected) {
  const std::int64_t count = batch * n * l.heads;
  const bool narrow = count <= std::numeric_limits<std::uint32_t>::max();
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
  for (std::int64_t w = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
       w * 32 < count; w += warps) {
    // Lane's row i = (b n + pos) heads + h.
    const std::int64_t i = w * 32 + lane;
    bool gap = false;
    uint4* row = nullptr;
    if (i < count) {
      std::int64_t h;
      std::int64_t pos;
      std::int64_t b;
      if (narrow) {
        const auto i32 = static_cast<std::uint32_t>(i);
        const auto heads = static_cast<std::uint32_t>(l.heads);
        const auto n32 = static_cast<std::uint32_t>(n);
        h = i32 % heads;
        pos = i32 / heads % n32;
        b = i32 / heads / n32;
      } else {
        h = i % l.heads;
        pos = i / l.heads % n;
        b = i / l.heads / n;
      }
      const int head = l.head_begin + static_cast<int>(h);
      gap = selects(p, branch_of(l, head), head, pos, queries, narrow) == selected;
      row = reinterpret_cast<uint4*>(rows + ((b * n + pos) * p.heads + head) * p.d);
      if (gap && lse != nullptr) lse[(b * p.heads + head) * n + pos] = -kInf;
    }
    const unsigned gaps = __ballot_sync(0xffffffffu, gap);
    const int per_store = 32 / chunks;
    for (int first = 0; first < 32; first += per_store) {
      const int k = first + lane / chunks;  // the row this lane stores a chunk of
      uint4* target = reinterpret_cast<uint4*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<std::uintptr_t>(row), k));
      if (gaps >> k & 1u) target[lane % chunks] = uint4{};
    }
  }
}

// dq (contiguous (B, Nq, H, D) of T, rows of 16-byte multiples) from its f32 accumulator for
// the heads of launch l, where each head has one branch: the rows that branch selects
// rounded, zeros in the others (the accumulator is not read there, nor need it be zeroed).
// A lane per row decides, as in zero_rows_kernel; then D / 8 lanes take a row, 8 elements
// each (two 16-byte loads, one 16-byte store).
template <class T>
__global__ void finish_dq_kernel(T* dq, const float* acc, Problem p, Launch l, std::int64_t batch) {
  const std::int64_t count = batch * p.nq * l.heads;
  const bool narrow = p.n <= std::numeric_limits<std::uint32_t>::max();
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int lanes_per_row = static_cast<int>(p.d / 8);
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
  for (std::int64_t w = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
       w * 32 < count; w += warps) {
    const std::int64_t i = w * 32 + lane;  // lane's row: (b Nq + pos) heads + h
    bool picked = false;
    std::int64_t at = 0;  // the row's first element
    if (i < count) {
      const std::int64_t h = i % l.heads;
      const std::int64_t pos = i / l.heads % p.nq;
      const std::int64_t b = i / l.heads / p.nq;
      const int head = l.head_begin + static_cast<int>(h);
      picked = selects(p, branch_of(l, head), head, pos, /*queries=*/true, narrow);
      at = ((b * p.nq + pos) * p.heads + head) * p.d;
    }
    const unsigned rows = __ballot_sync(0xffffffffu, i < count);
    const unsigned picks = __ballot_sync(0xffffffffu, picked);
    for (int first = 0; first < 32; first += 32 / lanes_per_row) {
      const int k = first + lane / lanes_per_row;  // the row this lane takes 8 elements of
      const std::int64_t row = __shfl_sync(0xffffffffu, at, k);
      if (!(rows >> k & 1u)) continue;
      const std::int64_t e = row + 8 * (lane % lanes_per_row);
      struct alignas(sizeof(T) * 8) Out {
        T v[8];
      };
      Out y;
      if (picks >> k & 1u) {
        const float4 x0 = *reinterpret_cast<const float4*>(acc + e);
        const float4 x1 = *reinterpret_cast<const float4*>(acc + e + 4);
        const float x[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int c = 0; c < 8; ++c) y.v[c] = from_float<T>(x[c]);
      } else {
#pragma unroll
        for (int c = 0; c < 8; ++c) y.v[c] = from_float<T>(0.f);
      }
      *reinterpret_cast<Out*>(dq + e) = y;
    }
  }
}

// ---- launchers ----

// Blocks of kThreads for a grid-stride loop over n threads' work: at most as many as the
// device holds at once, so none waits for a place and none is launched for little work.
template <class Kernel>
unsigned resident_grid(Kernel kernel, std::int64_t n) {
  int device = 0;
  int sms = 0;
  int per_sm = 0;
  LN_CUDA_CHECK(cudaGetDevice(&device));
  LN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  LN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  return std::min(grid_for(n, kThreads), static_cast<unsigned>(std::max(sms * per_sm, 1)));
}

template <class T>
void fill_value(T* dst, T value, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, value, n);
  LN_CUDA_CHECK(cudaGetLastError());
}

// All bits 0 is 0 in f32 and bf16 alike.
void zero(const Tensor& t, cudaStream_t stream) {
  LN_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.numel() * element_size(t.dtype()), stream));
}

template <class T>
void convert(const Tensor& dst, const Tensor& src, cudaStream_t stream) {
  std::int64_t n = dst.numel();
  if (n == 0) return;
  auto* to = static_cast<T*>(dst.raw_data());
  const auto* from = static_cast<const float*>(src.raw_data());
  constexpr int kWide = 8;
  if (n % kWide == 0 && reinterpret_cast<std::uintptr_t>(to) % (sizeof(T) * kWide) == 0 &&
      reinterpret_cast<std::uintptr_t>(from) % (sizeof(float) * kWide) == 0) {
    convert_kernel<T, kWide><<<grid_for(n / kWide), kThreads, 0, stream>>>(to, from, n);
  } else {
    convert_kernel<T, 1><<<grid_for(n), kThreads, 0, stream>>>(to, from, n);
  }
  LN_CUDA_CHECK(cudaGetLastError());
}

// A dim of size 1 is never stepped along, and views give it any stride (reshape gives 1):
// it reads as 0, so it cannot turn an aligned layout away from the tensor-core kernels.
Operand operand(const Tensor& t) {
  auto stride = [&](std::int64_t d) { return t.size(d) == 1 ? 0 : t.stride(d); };
  return {t.raw_data(), stride(0), stride(1), stride(2)};
}

Problem problem(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  Problem p;
  p.nq = q.size(1);
  p.nk = k.size(1);
  p.n = std::max(p.nq, p.nk);
  p.heads = q.size(2);
  p.d = q.size(3);
  p.dv = v.size(3);
  p.causal = causal;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  return p;
}

// The launches of a configuration, mirroring the CPU's plan (attention/dilated.cpp):
// paper mode runs every branch on all heads, grouped mode each group's branch on its heads.
// A block takes `tile` compact rows of a segment.
// out_scale multiplies every branch's output scale (a caller's scaled output, backward only).
std::vector<Launch> plan(const DilatedAttentionConfig& c, const Problem& p, int tile,
                         double out_scale = 1) {
  auto m = static_cast<std::int64_t>(c.segment_lengths.size());
  std::vector<Launch> launches;
  auto add = [&](std::int64_t b, std::int64_t head_begin, std::int64_t heads, int offset,
                 double branch_scale, bool merge, bool new_launch) {
    Branch br;
    br.w = std::min(c.segment_lengths[b], p.n);  // a longer segment is one segment
    br.r = c.dilation_rates[b];
    br.segments = (p.n + br.w - 1) / br.w;
    std::int64_t rows = (br.w + br.r - 1) / br.r;
    br.tiles = static_cast<int>((rows + tile - 1) / tile);
    br.head_begin = static_cast<int>(head_begin);
    br.heads = static_cast<int>(heads);
    br.offset = offset;
    br.out_scale = static_cast<float>(branch_scale * out_scale);
    br.merge = merge;
    LN_CHECK(br.segments * br.tiles < (std::int64_t{1} << 31),
             "dilated attention on cuda: ", br.segments * br.tiles,
             " tiles in one launch exceed the grid; use longer segments or a shorter sequence");
    if (new_launch || launches.empty() || launches.back().count == kMaxBranches) {
      Launch l{};
      l.head_begin = br.head_begin;
      launches.push_back(l);
    }
    Launch& l = launches.back();
    l.branch[l.count++] = br;
    l.heads = br.head_begin + br.heads - l.head_begin;
    l.blocks = std::max(l.blocks, br.segments * br.tiles);
  };
  if (c.mode == DilatedMode::paper) {
    for (std::int64_t b = 0; b < m; ++b) add(b, 0, p.heads, -1, 1, b > 0, true);
    return launches;
  }
  std::int64_t head = 0;
  for (std::int64_t g = 0; g < m; ++g) {
    std::int64_t size = p.heads / m + (g < p.heads % m ? 1 : 0);
    if (size > 0) {
      add(g, head, size, static_cast<int>(g % c.dilation_rates[g]), 1.0 / static_cast<double>(m),
          false, false);
    }
    head += size;
  }
  return launches;
}

// The tensor-core kernels write the outputs' rows in 16-byte chunks (rows of D = 32, 64 or
// 128 elements, contiguous: aligned where the base is).
bool chunks_aligned(std::initializer_list<const Tensor*> outputs) {
  return std::all_of(outputs.begin(), outputs.end(), [](const Tensor* t) {
    return reinterpret_cast<std::uintptr_t>(t->raw_data()) % 16 == 0;
  });
}

// Whether any (query, key) pair exists: else the kernels have nothing to do and the outputs
// are their empty values only.
bool has_pairs(const Problem& p, std::int64_t batch) {
  return p.nq > 0 && p.nk > 0 && batch > 0 && p.heads > 0;
}

dim3 grid_of(const Launch& l, std::int64_t batch) {
  LN_CHECK(batch <= 65535 && l.heads <= 65535, "dilated attention on cuda: batch ", batch,
           " and heads ", l.heads, " must each be at most 65535 (grid limits); split the batch");
  return dim3(static_cast<unsigned>(l.blocks), static_cast<unsigned>(l.heads),
              static_cast<unsigned>(batch));
}

constexpr std::size_t forward_shared_bytes(int kd) {
  return sizeof(float) * (3 * kTile * (kd + kPad) + kTile * kPRow);
}
constexpr std::size_t backward_shared_bytes(int kd) {
  return sizeof(float) * (4 * kTile * (kd + kPad) + 2 * kTile * kPRow + 2 * kTile);
}

template <class K>
void launch(K kernel, dim3 grid, std::size_t shared, cudaStream_t stream, auto... args) {
  // Above 48 KiB a kernel must opt in to its dynamic shared memory, per device.
  LN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(shared)));
  kernel<<<grid, kThreads, shared, stream>>>(args...);
  LN_CUDA_CHECK(cudaGetLastError());
}

// Calls f with the head dim tile (32, 64 or 128) that holds both head dims.
template <class F>
void with_head_tile(std::int64_t d, F f) {
  if (d <= 32) return f(std::integral_constant<int, 32>{});
  if (d <= 64) return f(std::integral_constant<int, 64>{});
  return f(std::integral_constant<int, 128>{});
}

// Calls f with the device element type of dtype (f32 or bf16).
template <class F>
void with_element(DType dtype, F f) {
  if (dtype == DType::bf16) return f(__nv_bfloat16{});
  LN_CHECK(dtype == DType::f32, "dilated attention on cuda takes f32 or bf16, got ", name(dtype));
  return f(float{});
}

// Zeros in the rows (f32 or bf16, 16-byte aligned) of launch l's heads that its branches
// select (selected) or do not; -inf in lse there too when given (queries, !selected).
void zero_rows(const Launch& l, const Problem& p, std::int64_t batch, const Tensor& rows,
               float* lse, bool queries, bool selected, cudaStream_t stream) {
  const std::int64_t n = queries ? p.nq : p.nk;
  with_element(rows.dtype(), [&](auto element) {
    using T = decltype(element);
    const auto chunks = static_cast<int>(p.d * static_cast<std::int64_t>(sizeof(T)) / 16);
    zero_rows_kernel<T><<<grid_for(batch * n * l.heads), kThreads, 0, stream>>>(
        static_cast<T*>(rows.raw_data()), lse, p, l, batch, n, chunks, queries, selected);
  });
  LN_CUDA_CHECK(cudaGetLastError());
}

// Writes what the tensor-core kernels leave of out and lse (forward: lse given, queries) or of
// dk and dv (backward): the rows (f32 or bf16) of the launches that start heads where their
// branches skip positions (a rate above 1, or queries past the keys).
void write_unselected(const std::vector<Launch>& launches, const Problem& p, std::int64_t batch,
                      const Tensor& rows, float* lse, cudaStream_t stream) {
  const bool queries = lse != nullptr;
  for (const Launch& l : launches) {
    const bool skips = std::any_of(l.branch, l.branch + l.count, [&](const Branch& b) {
      return !b.merge && (b.r > 1 || (queries && p.nk < p.nq));
    });
    if (skips) zero_rows(l, p, batch, rows, lse, queries, /*selected=*/false, stream);
  }
}

}  // namespace

bool dilated_attention_on_tensor_cores(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& dout) {
  const Problem p = problem(q, k, v, false, 1.0);
  bool bf16 = q.dtype() == DType::bf16;
  if (!dout.defined()) return mma_takes(p, bf16, {operand(q), operand(k), operand(v)});
  return mma_takes(p, bf16, {operand(q), operand(k), operand(v), operand(dout)});
}

const char* dilated_attention_kernels(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (!dilated_attention_on_tensor_cores(q, k, v)) return "cuda cores";
  DeviceGuard guard(q.device().index);
  return mma_wgmma(problem(q, k, v, false, 1.0)) ? "wgmma" : "mma.sync";
}

void dilated_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                               const DilatedAttentionConfig& config, double scale,
                               const Tensor& out, const Tensor& lse) {
  DeviceGuard guard(q.device().index);
  cudaStream_t stream = current_stream(q.device().index);
  const Problem p = problem(q, k, v, config.causal, scale);
  const std::int64_t batch = q.size(0);
  const bool mma = dilated_attention_on_tensor_cores(q, k, v) && chunks_aligned({&out});
  const std::vector<Launch> launches = plan(config, p, mma ? mma_query_tile(p) : kTile);
  const bool merged = launches.size() > 1 && config.mode == DilatedMode::paper;
  with_element(q.dtype(), [&](auto element) {
    using T = decltype(element);
    // Merging branches needs f32 partial outputs: out itself when it is f32, else a scratch.
    Tensor acc =
        merged && out.dtype() != DType::f32 ? empty(out.shape(), {DType::f32, out.device()}) : out;
    // Positions no branch selects keep out = 0 and lse = -inf: written first for the kernels
    // on CUDA cores, alongside the tensor-core kernels' rows for those (write_unselected).
    const bool work = has_pairs(p, batch);
    float* lse_data = static_cast<float*>(lse.raw_data());
    if (!mma || !work) {
      zero(acc, stream);
      fill_value(lse_data, -kInf, lse.numel(), stream);
    }
    if (work && mma) {
      write_unselected(launches, p, batch, acc, lse_data, stream);
      for (const Launch& l : launches) {
        mma_forward(p, l, grid_of(l, batch), operand(q), operand(k), operand(v), acc.raw_data(),
                    acc.dtype() == DType::f32, lse_data, stream);
      }
    } else if (work) {
      with_head_tile(std::max(p.d, p.dv), [&](auto tile) {
        constexpr int kD = decltype(tile)::value;
        for (const Launch& l : launches) {
          if (acc.dtype() == DType::f32) {
            launch(forward_kernel<T, float, kD>, grid_of(l, batch), forward_shared_bytes(kD),
                   stream, operand(q), operand(k), operand(v), static_cast<float*>(acc.raw_data()),
                   static_cast<float*>(lse.raw_data()), p, l);
          } else {
            launch(forward_kernel<T, T, kD>, grid_of(l, batch), forward_shared_bytes(kD), stream,
                   operand(q), operand(k), operand(v), static_cast<T*>(acc.raw_data()),
                   static_cast<float*>(lse.raw_data()), p, l);
          }
        }
      });
    }
    if (acc.raw_data() != out.raw_data()) convert<T>(out, acc, stream);
  });
}

void dilated_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const Tensor& lse, const Tensor& dout,
                                const DilatedAttentionConfig& config, double scale,
                                double out_scale, const Tensor& dq, const Tensor& dk,
                                const Tensor& dv) {
  DeviceGuard guard(q.device().index);
  cudaStream_t stream = current_stream(q.device().index);
  const Problem p = problem(q, k, v, config.causal, scale);
  const std::int64_t batch = q.size(0);
  const bool mma =
      dilated_attention_on_tensor_cores(q, k, v, dout) && chunks_aligned({&dq, &dk, &dv});
  const std::vector<Launch> launches = plan(config, p, mma ? mma_key_tile(p) : kTile, out_scale);
  with_element(q.dtype(), [&](auto element) {
    using T = decltype(element);
    // Gradients accumulate in f32: the outputs themselves when they are f32, else scratch.
    // The tensor-core kernels write dk and dv in place when each key of each head is in one
    // block of the whole backward (grouped mode, or one branch).
    const bool direct = dq.dtype() == DType::f32;
    const bool keys_once = mma && (config.mode == DilatedMode::grouped || launches.size() == 1);
    // dq takes atomic additions. dk and dv: zeros first for the kernels on CUDA cores, and
    // alongside the tensor-core kernels' keys where those skip positions (write_unselected).
    const bool work = has_pairs(p, batch);
    auto accumulator = [&](const Tensor& t, bool in_place, bool zeroed) {
      Tensor a = in_place ? t : empty(t.shape(), {DType::f32, t.device()});
      if (zeroed) zero(a, stream);
      return a;
    };
    // Where each head has one branch, the passes over dq (zeros first, rounding last) take only
    // the rows it selects (grouped mode at 1M: 46% of them); the rest of dq gets zeros.
    const bool rows_once = keys_once && !direct && work;
    Tensor dq_acc = accumulator(dq, direct, !rows_once);
    if (rows_once) {
      for (const Launch& l : launches) {
        zero_rows(l, p, batch, dq_acc, nullptr, /*queries=*/true, /*selected=*/true, stream);
      }
    }
    Tensor dk_acc = accumulator(dk, direct || keys_once, !mma || !work);
    Tensor dv_acc = accumulator(dv, direct || keys_once, !mma || !work);
    if (work && mma) {
      write_unselected(launches, p, batch, dk_acc, nullptr, stream);
      write_unselected(launches, p, batch, dv_acc, nullptr, stream);
    }
    if (work) {
      // Dp of the rows the branches select where each head has one (the backward reads no
      // other), else of all: one branch of rate 1 over every head.
      Tensor dp = empty({batch, p.heads, p.nq}, {DType::f32, q.device()});
      Launch every{};
      every.count = 1;
      every.heads = static_cast<int>(p.heads);
      every.branch[0] = Branch{.w = p.n,
                               .r = 1,
                               .segments = 1,
                               .tiles = 1,
                               .head_begin = 0,
                               .heads = every.heads,
                               .offset = 0,
                               .out_scale = 1.f,
                               .merge = false};
      const std::vector<Launch> dp_launches = rows_once ? launches : std::vector<Launch>{every};
      // 16-byte chunks where every row of both starts 16-byte aligned.
      constexpr int kWide = 16 / sizeof(T);
      const Operand o = operand(out);
      const Operand g = operand(dout);
      bool wide = p.dv % kWide == 0;
      for (const Operand& x : {o, g}) {
        wide = wide && reinterpret_cast<std::uintptr_t>(x.data) % 16 == 0 && x.sb % kWide == 0 &&
               x.sn % kWide == 0 && x.sh % kWide == 0;
      }
      float* dp_data = static_cast<float*>(dp.raw_data());
      for (const Launch& l : dp_launches) {
        const DpRows rows = dp_rows(l);
        auto run = [&](auto kernel) {
          kernel<<<resident_grid(kernel, batch * rows.per_batch * kDpLanes), kThreads, 0, stream>>>(
              o, g, dp_data, p, l, rows, batch);
          LN_CUDA_CHECK(cudaGetLastError());
        };
        if (wide) {
          run(dp_kernel<T, kWide>);
        } else {
          run(dp_kernel<T, 1>);
        }
      }
      if (mma) {
        for (const Launch& l : launches) {
          mma_backward(p, l, grid_of(l, batch), operand(q), operand(k), operand(v), operand(dout),
                       static_cast<const float*>(lse.raw_data()),
                       static_cast<const float*>(dp.raw_data()),
                       static_cast<float*>(dq_acc.raw_data()), dk_acc.raw_data(), dv_acc.raw_data(),
                       dk_acc.dtype() == DType::f32, stream);
        }
      } else {
        // float4 atomics need 16-byte aligned rows.
        bool vector_atomics =
            p.d % 4 == 0 && reinterpret_cast<std::uintptr_t>(dq_acc.raw_data()) % 16 == 0;
        with_head_tile(std::max(p.d, p.dv), [&](auto tile) {
          constexpr int kD = decltype(tile)::value;
          for (const Launch& l : launches) {
            launch(backward_kernel<T, kD>, grid_of(l, batch), backward_shared_bytes(kD), stream,
                   operand(q), operand(k), operand(v), operand(dout),
                   static_cast<const float*>(lse.raw_data()),
                   static_cast<const float*>(dp.raw_data()), static_cast<float*>(dq_acc.raw_data()),
                   static_cast<float*>(dk_acc.raw_data()), static_cast<float*>(dv_acc.raw_data()),
                   p, l, vector_atomics);
          }
        });
      }
    }
    if (rows_once) {
      for (const Launch& l : launches) {
        finish_dq_kernel<T><<<grid_for(batch * p.nq * l.heads), kThreads, 0, stream>>>(
            static_cast<T*>(dq.raw_data()), static_cast<const float*>(dq_acc.raw_data()), p, l,
            batch);
        LN_CUDA_CHECK(cudaGetLastError());
      }
    } else if (!direct) {
      convert<T>(dq, dq_acc, stream);
    }
    if (dk_acc.raw_data() != dk.raw_data()) {
      convert<T>(dk, dk_acc, stream);
      convert<T>(dv, dv_acc, stream);
    }
  });
}

}  // namespace longnet::cuda
