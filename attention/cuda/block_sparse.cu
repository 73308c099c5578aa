// Block-sparse attention on tensor cores: the kernels and their host side (the plan is in
// attention/cuda/block_sparse.h). The keys of a query block's kept key blocks, concatenated in
// list order, are its "compact" keys 0, 1, ...: compact key c is position
// list[c / bs] * bs + c % bs, so a 64-key step may span several blocks (block_size < 64) and
// every row reaches shared memory by its own 16-byte cp.async. A block keeps a window of
// kWindow list entries in shared memory, reloaded when the steps run past it. The backward
// walks the transposed list's query blocks the same way, 64 (D = 128: 32) compact queries a step.
//
// Lists are sorted, and under the causal mask hold no block after the query block (forward)
// or before the key block (transposed): so in the forward only the last listed block can hold
// masked keys (the diagonal block, or the short last block of the sequence), and in the
// backward the diagonal comes first, where the queries before the key tile are skipped.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/cuda/block_sparse.h"
#include "attention/cuda/mma.cuh"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/stream.h"

namespace longnet::cuda {

namespace {

using namespace tensor_core;

constexpr int kTile = 16 * kWarps;  // query rows of a forward block (and keys of its steps),
                                    // keys of a backward block
constexpr int kWindow = 128;        // list entries a block holds in shared memory at a time
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kSelectThreads = 256;  // content_adaptive's selection and the list kernels

// Query rows per step of the backward: fewer for D = 128 keeps dk and dv (2 x 64 f32 per
// thread) and the score tiles within the register file.
constexpr int backward_rows(int kd) { return kd == 128 ? 32 : 64; }

// Where an operand's rows live: element strides of batch, position and head (the last dim
// has stride 1).
struct Rows {
  const bf16* data;
  std::int64_t sb, sn, sh;
};

// Lists of blocks per group (batch * heads + head) and block: the entries
// blocks[group * blocks_stride + offsets[o] .. group * blocks_stride + offsets[o + 1]) with
// o = group * offsets_stride + block, sorted. A stride of 0 shares offsets or entries across
// groups.
struct Lists {
  const int* offsets;
  const int* blocks;
  std::int64_t offsets_stride;
  std::int64_t blocks_stride;
};

struct Dims {
  int nq, nk;  // positions; nq + bs and nk + bs fit in an int (checked)
  int heads;
  int bs;     // block_size
  int tiles;  // 64-row tiles per block
  bool causal;
  float scale;       // multiplies q.k
  float scale_log2;  // scale * log2(e): the kernels exponentiate in base 2
};

struct Span {
  const int* blocks;
  int count;
};

__device__ __forceinline__ Span list_of(const Lists& l, std::int64_t group, int block) {
  const int* off = l.offsets + group * l.offsets_stride + block;
  return {l.blocks + group * l.blocks_stride + off[0], off[1] - off[0]};
}

// Entries w0.. of a list into the shared window (plain loads; the caller synchronises).
__device__ __forceinline__ void load_window(int* window, const Span& list, int w0) {
  for (int i = static_cast<int>(threadIdx.x); i < kWindow; i += kThreads) {
    window[i] = w0 + i < list.count ? list.blocks[w0 + i] : 0;
  }
}

// Makes the window hold the entries of compact rows [c, end) (at most 65 entries), reloading
// it from c's entry when they run past it. Every thread calls it with the same values, after
// every thread is done reading the window.
__device__ __forceinline__ void slide_window(int* window, int& w0, const Span& list, int bs, int c,
                                             int end) {
  if ((end - 1) / bs < w0 + kWindow) return;
  w0 = c / bs;
  load_window(window, list, w0);
  __syncthreads();
}

// Starts copying compact rows c0 .. c0 + kRows - 1 of a list (row c at position
// window[c / bs - w0] * bs + c % bs) of two operands of one (batch, head), a (row stride sa)
// and b (sb), into shared tiles of kRows rows of kD + kPad bf16s; rows from end on are zeros.
template <int kRows, int kD>
__device__ __forceinline__ void load_gathered(bf16* ta, bf16* tb, const bf16* a, std::int64_t sa,
                                              const bf16* b, std::int64_t sb, const int* window,
                                              int w0, int bs, int c0, int end) {
  constexpr int kChunks = kD / 8;
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < kRows * kChunks; i += kThreads) {
    const int row = i / kChunks;
    const int col = 8 * (i % kChunks);
    const int c = c0 + row;
    const bool valid = c < end;
    std::int64_t pos = 0;
    if (valid) {
      const int e = c / bs;
      pos = static_cast<std::int64_t>(window[e - w0]) * bs + (c - e * bs);
    }
    copy16(ta + row * (kD + kPad) + col, a + pos * sa + col, valid);
    copy16(tb + row * (kD + kPad) + col, b + pos * sb + col, valid);
  }
}

// Starts copying `rows` consecutive rows (stride sn) into a shared tile of kRows rows; the
// rest are zeros.
template <int kRows, int kD>
__device__ __forceinline__ void load_rows(bf16* tile, const bf16* x, std::int64_t sn, int rows) {
  constexpr int kChunks = kD / 8;
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < kRows * kChunks; i += kThreads) {
    const int row = i / kChunks;
    const int col = 8 * (i % kChunks);
    const bool valid = row < rows;
    copy16(tile + row * (kD + kPad) + col, x + (valid ? row * sn : 0) + col, valid);
  }
}

template <int kD>
constexpr std::size_t forward_shared_bytes() {
  return sizeof(bf16) * 5 * kTile * (kD + kPad) + sizeof(int) * kWindow;
}

// Forward of one 64-row query tile of one query block: 4 warps of 16 rows walk the compact
// keys of the block's list 64 at a time (two stages) with an online softmax.
template <int kD>
__global__ void __launch_bounds__(kThreads, kD == 128 ? 2 : 3)
    forward_kernel(Rows q, Rows k, Rows v, bf16* out, float* lse, Lists lists, Dims p) {
  constexpr int kRow = kD + kPad;
  extern __shared__ uint4 shared[];
  bf16* qs = reinterpret_cast<bf16*>(shared);
  bf16* ks = qs + kTile * kRow;      // two stages
  bf16* vs = ks + 2 * kTile * kRow;  // two stages
  int* window = reinterpret_cast<int*>(vs + 2 * kTile * kRow);

  // The last query blocks first: under the causal mask they tend to keep the most keys.
  const int x = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int qb = x / p.tiles;
  const int head = static_cast<int>(blockIdx.y);
  const std::int64_t batch = blockIdx.z;
  const std::int64_t group = batch * p.heads + head;
  const int row0 = qb * p.bs + (x % p.tiles) * kTile;  // position of the tile's first query
  const int rows = min(kTile, min((qb + 1) * p.bs, p.nq) - row0);
  if (rows <= 0) return;
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4;
  const int t = lane % 4;
  const std::int64_t row_stride = static_cast<std::int64_t>(p.heads) * kD;
  bf16* out_rows = out + ((batch * p.nq + row0) * p.heads + head) * kD;
  float* lse_rows = lse + group * p.nq + row0;
  const Span list = list_of(lists, group, qb);
  if (list.count == 0) {
    // A block that keeps no key: its queries get 0 and lse = -inf.
    for (int i = static_cast<int>(threadIdx.x); i < rows * kD / 2; i += kThreads) {
      *reinterpret_cast<__nv_bfloat162*>(out_rows + (i / (kD / 2)) * row_stride +
                                         2 * (i % (kD / 2))) = __floats2bfloat162_rn(0.f, 0.f);
    }
    for (int i = static_cast<int>(threadIdx.x); i < rows; i += kThreads) lse_rows[i] = -kInf;
    return;
  }

  // Only the last listed block has masked keys: compact key c >= last_start is position
  // c + shift. Under the causal mask the keys of the diagonal block after the tile's last query
  // are never seen, so the walk ends before them.
  const int last_kb = list.blocks[list.count - 1];
  const int last_start = (list.count - 1) * p.bs;
  const int shift = last_kb * p.bs - last_start;
  const bool diagonal = p.causal && last_kb == qb;
  int last_len = min(p.bs, p.nk - last_kb * p.bs);
  if (diagonal) last_len = min(last_len, row0 + rows - qb * p.bs);
  const int key_end = last_start + last_len;
  const int steps = (key_end + kTile - 1) / kTile;

  const bf16* k_head = k.data + batch * k.sb + head * k.sh;
  const bf16* v_head = v.data + batch * v.sb + head * v.sh;
  int w0 = 0;
  load_window(window, list, 0);
  __syncthreads();
  load_rows<kTile, kD>(qs, q.data + batch * q.sb + row0 * q.sn + head * q.sh, q.sn, rows);
  load_gathered<kTile, kD>(ks, vs, k_head, k.sn, v_head, v.sn, window, w0, p.bs, 0, key_end);
  commit_copies();

  const int warp_row = row0 + 16 * warp;  // this warp's rows: warp_row + g (+ 8)
  const bool idle = 16 * warp >= rows;
  std::uint32_t qf[kD / 16][4];
  float o[kD / 8][4] = {};
  float m[2] = {-kInf, -kInf};  // running max of the raw scores of rows g and g + 8
  float l[2] = {0, 0};          // this lane's part of their running sums
  for (int step = 0; step < steps; ++step) {
    wait_copies();
    // Tile `step` is in; every warp is done with tile step - 1, whose stage the next load takes.
    __syncthreads();
    const int k0 = step * kTile;
    if (step + 1 < steps) {
      const int next = (step + 1) % 2;
      slide_window(window, w0, list, p.bs, k0 + kTile, min(k0 + 2 * kTile, key_end));
      load_gathered<kTile, kD>(ks + next * kTile * kRow, vs + next * kTile * kRow, k_head, k.sn,
                               v_head, v.sn, window, w0, p.bs, k0 + kTile, key_end);
      commit_copies();
    }
    if (step == 0) {
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        load_matrices(qf[kk], a_address(qs, kRow, 16 * warp, 16 * kk, lane));
      }
    }
    // Warps past the tile's rows, and (causal) warps whose rows all precede the step's keys.
    if (idle || (diagonal && k0 >= last_start && k0 + shift > warp_row + 15)) continue;
    const bf16* kt = ks + (step % 2) * kTile * kRow;
    const bf16* vt = vs + (step % 2) * kTile * kRow;

    float sc[kTile / 8][4] = {};
    add_scores<kTile, kD>(sc, qf, kt, lane);
    const bool edge = k0 + kTile > last_start;
    online_softmax<kTile, kD>(sc, m, l, o, p.scale_log2, edge, [=](float& s, int j, int e) {
      const int c = k0 + 8 * j + 2 * t + e % 2;
      const int row = warp_row + g + 8 * (e / 2);
      if (c >= key_end || (diagonal && c >= last_start && c + shift > row)) s = -kInf;
    });
    add_pv<kTile, kD>(o, sc, vt, lane);
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int r = 16 * warp + g + 8 * i;
    if (r >= rows) continue;
    // Every row of a block with keys sees at least the first key of its first block; the test
    // only keeps a row that saw none at 0 and -inf.
    const bool seen = l[i] > 0.f;
    const float gain = seen ? 1.f / l[i] : 0.f;
    bf16* dst = out_rows + r * row_stride + 2 * t;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      *reinterpret_cast<__nv_bfloat162*>(dst + 8 * j) =
          __floats2bfloat162_rn(o[j][2 * i] * gain, o[j][2 * i + 1] * gain);
    }
    if (t == 0) lse_rows[r] = seen ? (m[i] * p.scale_log2 + log2f(l[i])) * kLn2 : -kInf;
  }
}

template <int kD>
constexpr std::size_t backward_shared_bytes() {
  constexpr int kRows = backward_rows(kD);
  return sizeof(bf16) * ((2 * kTile + 4 * kRows) * (kD + kPad) + kTile * (kRows + kPad)) +
         sizeof(float) * 4 * kRows + sizeof(int) * (2 * kRows + kWindow);
}

// Backward of one 64-key tile of one key block: dk and dv of the tile's keys in registers over
// the compact queries of the transposed list (the query blocks that keep this key block), kRows
// a step, two stages; dq added atomically per step. P is recomputed from the saved lse;
// dS = P (dO . v - Dp).
template <int kD>
__global__ void __launch_bounds__(kThreads, kD == 128 ? 1 : 3)
    backward_kernel(Rows q, Rows k, Rows v, Rows dout, const float* lse, const float* dp, float* dq,
                    bf16* dk, bf16* dv, Lists lists, Dims p) {
  constexpr int kRow = kD + kPad;
  constexpr int kRows = backward_rows(kD);
  extern __shared__ uint4 shared[];
  bf16* ks = reinterpret_cast<bf16*>(shared);
  bf16* vs = ks + kTile * kRow;
  bf16* qs = vs + kTile * kRow;                                            // two stages
  bf16* dos = qs + 2 * kRows * kRow;                                       // two stages
  bf16* ds_t = dos + 2 * kRows * kRow;                                     // dS^T [key][query]
  float* lse_s = reinterpret_cast<float*>(ds_t + kTile * (kRows + kPad));  // two stages
  float* dp_s = lse_s + 2 * kRows;                                         // two stages
  int* qpos_s = reinterpret_cast<int*>(dp_s + 2 * kRows);  // two stages: positions, -1 past the end
  int* window = qpos_s + 2 * kRows;

  const int kb = static_cast<int>(blockIdx.x) / p.tiles;
  const int head = static_cast<int>(blockIdx.y);
  const std::int64_t batch = blockIdx.z;
  const std::int64_t group = batch * p.heads + head;
  const int key0 = kb * p.bs + (static_cast<int>(blockIdx.x) % p.tiles) * kTile;
  const int keys = min(kTile, min((kb + 1) * p.bs, p.nk) - key0);
  if (keys <= 0) return;
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4;
  const int t = lane % 4;

  // The compact queries [a_begin, a_end) of the query blocks that keep kb; the diagonal block
  // comes first under the causal mask, and its queries before the key tile see none of it.
  const Span list = list_of(lists, group, kb);
  int a_begin = 0;
  int a_end = 0;
  if (list.count > 0) {
    if (p.causal && list.blocks[0] == kb) a_begin = key0 - kb * p.bs;
    a_end = (list.count - 1) * p.bs + min(p.bs, p.nq - list.blocks[list.count - 1] * p.bs);
  }
  const bf16* q_head = q.data + batch * q.sb + head * q.sh;
  const bf16* do_head = dout.data + batch * dout.sb + head * dout.sh;
  const float* lse_h = lse + group * p.nq;
  const float* dp_h = dp + group * p.nq;
  int w0 = 0;
  auto load_queries = [&](int stage, int a0) {
    load_gathered<kRows, kD>(qs + stage * kRows * kRow, dos + stage * kRows * kRow, q_head, q.sn,
                             do_head, dout.sn, window, w0, p.bs, a0, a_end);
    const int i = static_cast<int>(threadIdx.x) % kRows;
    const int a = a0 + i;
    const bool valid = a < a_end;
    int pos = 0;
    if (valid) {
      const int e = a / p.bs;
      pos = window[e - w0] * p.bs + (a - e * p.bs);
    }
    if (threadIdx.x < kRows) {
      copy4(lse_s + stage * kRows + i, lse_h + pos, valid);
      qpos_s[stage * kRows + i] = valid ? pos : -1;
    } else if (threadIdx.x < 2 * kRows) {
      copy4(dp_s + stage * kRows + i, dp_h + pos, valid);
    }
    commit_copies();
  };
  if (a_begin < a_end) {
    load_rows<kTile, kD>(ks, k.data + batch * k.sb + key0 * k.sn + head * k.sh, k.sn, keys);
    load_rows<kTile, kD>(vs, v.data + batch * v.sb + key0 * v.sn + head * v.sh, v.sn, keys);
    load_window(window, list, w0);
    __syncthreads();
    load_queries(0, a_begin);
  }

  const int warp_key = key0 + 16 * warp;   // this warp's keys: warp_key + g (+ 8)
  const int warp_keys = keys - 16 * warp;  // how many of them exist
  float dk_acc[kD / 8][4] = {};
  float dv_acc[kD / 8][4] = {};
  int stage = 0;
  for (int a0 = a_begin; a0 < a_end; a0 += kRows, stage ^= 1) {
    wait_copies();
    // This tile is in; every warp is done with the last one (its stage, dS^T and the window).
    __syncthreads();
    if (a0 + kRows < a_end) {
      slide_window(window, w0, list, p.bs, a0 + kRows, min(a0 + 2 * kRows, a_end));
      load_queries(stage ^ 1, a0 + kRows);
    }
    const bf16* qt = qs + stage * kRows * kRow;
    const bf16* dot = dos + stage * kRows * kRow;
    const float* lse_t = lse_s + stage * kRows;
    const float* dp_t = dp_s + stage * kRows;
    const int* qpos_t = qpos_s + stage * kRows;

    // Which pairs of the warp's keys and the tile's queries are masked: queries past the end,
    // keys past the block, and (causal) keys after the query.
    bool some_masked = warp_keys < 16;
    bool all_masked = true;
    for (int r = lane; r < kRows; r += 32) {
      const int qp = qpos_t[r];
      some_masked |= qp < 0 || (p.causal && qp < warp_key + 15);
      all_masked &= qp < 0 || (p.causal && qp < warp_key);
    }
    const bool edge = __any_sync(0xffffffffu, some_masked);
    if (warp_keys <= 0 || __all_sync(0xffffffffu, all_masked)) {
      zero_ds_rows<kRows>(ds_t, warp, lane);
    } else {
      float st[kRows / 8][4] = {};
      float dpt[kRows / 8][4] = {};
      add_transposed_scores<kRows, kD>(st, dpt, ks, vs, qt, dot, warp, lane);
      // P^T and dS^T; masked pairs are 0.
      transposed_probabilities<kRows>(
          st, dpt, lse_t, dp_t, p.scale_log2, 1.f, lane, edge, [&](int col, int e) {
            const int qp = qpos_t[col];
            const int key = g + 8 * (e / 2);  // of the warp's 16
            return qp >= 0 && key < warp_keys && (!p.causal || warp_key + key <= qp);
          });
      add_dv_dk<kRows, kD>(dv_acc, dk_acc, st, dpt, ds_t, qt, dot, warp, lane);
    }
    __syncthreads();

    // dQ = dS K: warp w takes 16 query rows and a column range.
    using Split = DqSplit<kRows, kD>;
    float dq_acc[Split::kCols / 8][4] = {};
    add_dq<kRows, kD>(dq_acc, ds_t, ks, warp, lane);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int qp = qpos_t[Split::row0(warp) + g + 8 * i];
      if (qp < 0) continue;
      float* row = dq + ((batch * p.nq + qp) * p.heads + head) * kD + Split::col0(warp) + 2 * t;
#pragma unroll
      for (int j = 0; j < Split::kCols / 8; ++j) {
        const float x0 = dq_acc[j][2 * i] * p.scale;
        const float x1 = dq_acc[j][2 * i + 1] * p.scale;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        atomicAdd(reinterpret_cast<float2*>(row + 8 * j), make_float2(x0, x1));
#else
        atomicAdd(row + 8 * j, x0);
        atomicAdd(row + 8 * j + 1, x1);
#endif
      }
    }
  }

  // Each key belongs to one block: dk and dv are written, 0 for keys no query sees.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = 16 * warp + g + 8 * i;
    if (r >= keys) continue;
    const std::int64_t at = ((batch * p.nk + key0 + r) * p.heads + head) * kD + 2 * t;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      *reinterpret_cast<__nv_bfloat162*>(dk + at + 8 * j) =
          __floats2bfloat162_rn(dk_acc[j][2 * i] * p.scale, dk_acc[j][2 * i + 1] * p.scale);
      *reinterpret_cast<__nv_bfloat162*>(dv + at + 8 * j) =
          __floats2bfloat162_rn(dv_acc[j][2 * i], dv_acc[j][2 * i + 1]);
    }
  }
}

// Dp[b, h, n] = sum_c dout[b, n, h, c] out[b, n, h, c]: one warp per row.
__global__ void dp_kernel(Rows out, Rows dout, float* dp, std::int64_t batch, int nq, int heads,
                          int d) {
  const std::int64_t row = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= batch * nq * heads) return;  // whole warps leave together
  const std::int64_t h = row % heads;
  const std::int64_t n = (row / heads) % nq;
  const std::int64_t b = row / (static_cast<std::int64_t>(heads) * nq);
  const bf16* o = out.data + b * out.sb + n * out.sn + h * out.sh;
  const bf16* g = dout.data + b * dout.sb + n * dout.sn + h * dout.sh;
  float sum = 0;
  for (int c = lane; c < d; c += 32) sum += __bfloat162float(o[c]) * __bfloat162float(g[c]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) dp[(b * heads + h) * nq + n] = sum;
}

// ---- content_adaptive: the selection, and the lists of the backward ----

// The exclusive prefix sum of x over the block's threads (blockDim.x a multiple of 32, at most
// 1024) and their total. Every thread calls it; scratch holds 32 ints.
__device__ int block_exclusive_scan(int x, int* scratch, int& total) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>(threadIdx.x / 32);
  int inclusive = x;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += y;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  int before = 0;
  total = 0;
  for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) {
    if (i < warp) before += scratch[i];
    total += scratch[i];
  }
  __syncthreads();
  return before + inclusive - x;
}

// mean[(group * nblocks + blk) * d + e]: element e of the mean of the rows of block blk of one
// (batch, head), summed in position order as x / count, as the CPU does
// (attention/block_sparse.cpp), so that both rank the blocks alike.
__global__ void pool_kernel(Rows x, float* mean, int n, int heads, int nblocks, int bs, int d,
                            std::int64_t total) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int e = static_cast<int>(i % d);
    const int blk = static_cast<int>(i / d % nblocks);
    const std::int64_t group = i / d / nblocks;
    const bf16* col = x.data + group / heads * x.sb + group % heads * x.sh + e;
    const int lo = blk * bs;
    const int hi = min(lo + bs, n);
    const float count = static_cast<float>(hi - lo);
    float sum = 0;
    for (int pos = lo; pos < hi; ++pos) {
      sum = __fadd_rn(sum, __fdiv_rn(__bfloat162float(col[pos * x.sn]), count));
    }
    mean[i] = sum;
  }
}

// Orders candidates as the CPU sorts (-dot, kb): larger dots first, then lower blocks; -0 and
// 0 tie. Distinct for distinct blocks.
__device__ __forceinline__ std::uint64_t rank_key(float dot, int kb) {
  std::uint32_t u = __float_as_uint(dot == 0.f ? 0.f : dot);
  u = (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;  // increases with dot
  return static_cast<std::uint64_t>(~u) << 32 | static_cast<std::uint32_t>(kb);
}

// One block per (query block, head, batch): the key blocks content_adaptive keeps, ascending,
// into blocks[group * entries + offsets[qb] ..]: the diagonal, and the keep - 1 others (those
// the causal mask allows) with the largest mean-pooled q . k, each dot one fma per term in
// the CPU's order.
// Dynamic shared memory: d + nkb floats.
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const float* q_mean, const float* k_mean, int* blocks, const int* offsets,
                  std::int64_t entries, int nqb, int nkb, int keep, int d, bool causal) {
  extern __shared__ float select_shared[];
  __shared__ int scratch[32];
  float* qm = select_shared;
  float* dots = qm + d;
  const int qb = static_cast<int>(blockIdx.x);
  const std::int64_t group = static_cast<std::int64_t>(blockIdx.z) * gridDim.y + blockIdx.y;
  for (int e = static_cast<int>(threadIdx.x); e < d; e += kSelectThreads) {
    qm[e] = q_mean[(group * nqb + qb) * d + e];
  }
  __syncthreads();
  const int last = causal ? min(qb, nkb - 1) : nkb - 1;
  for (int kb = static_cast<int>(threadIdx.x); kb <= last; kb += kSelectThreads) {
    const float* km = k_mean + (group * nkb + kb) * d;
    float dot = 0;
    for (int e = 0; e < d; ++e) dot = __fmaf_rn(qm[e], km[e], dot);
    dots[kb] = dot;
  }
  __syncthreads();

  const bool diagonal = qb < nkb;
  const int candidates = last + 1 - (diagonal ? 1 : 0);
  const int need = min(keep - (diagonal ? 1 : 0), candidates);
  // The need-th smallest rank key, by bisection: the candidates up to it are kept.
  std::uint64_t threshold = 0;
  if (need == candidates) {
    threshold = ~std::uint64_t{0};
  } else if (need > 0) {
    std::uint64_t lo = 0;
    std::uint64_t hi = ~std::uint64_t{0};
    while (lo < hi) {
      const std::uint64_t mid = lo + (hi - lo) / 2;
      int below = 0;
      for (int kb = static_cast<int>(threadIdx.x); kb <= last; kb += kSelectThreads) {
        below += kb != qb && rank_key(dots[kb], kb) <= mid;
      }
      int count = 0;
      block_exclusive_scan(below, scratch, count);
      if (count >= need) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    threshold = lo;
  }
  int* out = blocks + group * entries + offsets[qb];
  int written = 0;
  for (int base = 0; base <= last; base += kSelectThreads) {
    const int kb = base + static_cast<int>(threadIdx.x);
    const bool kept = kb <= last && (kb == qb || (need > 0 && rank_key(dots[kb], kb) <= threshold));
    int total = 0;
    const int at = block_exclusive_scan(kept ? 1 : 0, scratch, total);
    if (kept) out[written + at] = kb;
    written += total;
  }
}

// For every (group, key block): how many query blocks keep it (kFill false: into
// offsets[kb + 1] of the group's nkb + 1), or which, ascending (kFill true: from the offsets).
template <bool kFill>
__global__ void transpose_kernel(Lists forward, int* offsets, int* blocks, std::int64_t entries,
                                 int nqb, int nkb, bool causal, std::int64_t total) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t group = i / nkb;
    const int kb = static_cast<int>(i % nkb);
    int* off = offsets + group * (nkb + 1);
    int* dst = kFill ? blocks + group * entries + off[kb] : nullptr;
    int n = 0;
    for (int qb = causal ? kb : 0; qb < nqb; ++qb) {
      const Span s = list_of(forward, group, qb);
      const int* at = s.blocks;
      int len = s.count;
      while (len > 0) {  // lower bound of kb
        const int half = len / 2;
        if (at[half] < kb) {
          at += half + 1;
          len -= half + 1;
        } else {
          len = half;
        }
      }
      if (at < s.blocks + s.count && *at == kb) {
        if constexpr (kFill) dst[n] = qb;
        ++n;
      }
    }
    if constexpr (!kFill) off[kb + 1] = n;
  }
}

// Counts -> offsets: one block per group turns offsets[1..nkb] into running sums, offsets[0] 0.
__global__ void __launch_bounds__(kSelectThreads) offsets_kernel(int* offsets, int nkb) {
  __shared__ int scratch[32];
  int* off = offsets + static_cast<std::int64_t>(blockIdx.x) * (nkb + 1);
  int running = 0;
  for (int base = 0; base < nkb; base += kSelectThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    const int x = i < nkb ? off[i + 1] : 0;
    int total = 0;
    const int before = block_exclusive_scan(x, scratch, total);
    if (i < nkb) off[i + 1] = running + before + x;
    running += total;
  }
  if (threadIdx.x == 0) off[0] = 0;
}

// ---- host side ----

std::int64_t blocks_of(std::int64_t n, std::int64_t bs) { return (n + bs - 1) / bs; }

// The device tables of one configuration. Fixed patterns: the lists and their transposes,
// shared by every (batch, head). content_adaptive: the offsets of the lists only (their
// lengths do not depend on the data); the lists are selected per call.
struct Tables {
  Tensor forward_offsets;  // i32, nqb + 1
  Tensor forward_blocks;   // i32, fixed patterns
  Tensor backward_offsets;
  Tensor backward_blocks;
  std::int64_t entries = 0;  // list entries of one (batch, head)
};

Tensor upload(const std::vector<int>& values, Device device) {
  return from_data(values, {static_cast<std::int64_t>(values.size())}, device);
}

Tables build_tables(const BlockSparseConfig& c, std::int64_t nq, std::int64_t nk, Device device) {
  const std::int64_t nqb = blocks_of(nq, c.block_size);
  const std::int64_t nkb = blocks_of(nk, c.block_size);
  std::vector<int> offsets(static_cast<std::size_t>(nqb + 1), 0);
  std::vector<int> blocks;
  std::vector<std::vector<int>> transposed(static_cast<std::size_t>(nkb));
  std::int64_t entries = 0;
  if (c.pattern == BlockPattern::content_adaptive) {
    const std::int64_t keep = kept_key_blocks(c, nk);
    for (std::int64_t qb = 0; qb < nqb; ++qb) {
      const std::int64_t last = c.causal ? std::min(qb, nkb - 1) : nkb - 1;
      entries += std::min(keep, last + 1);
      LN_CHECK(entries <= std::numeric_limits<int>::max(), "block_sparse_attention on cuda: ", nqb,
               " query blocks keeping ", keep, " key blocks each exceed 2^31 list entries; ",
               "use a larger block_size or a lower density");
      offsets[qb + 1] = static_cast<int>(entries);
    }
  } else {
    const auto lists = fixed_block_layout(c, nq, nk);
    for (std::int64_t qb = 0; qb < nqb; ++qb) {
      for (std::int64_t kb : lists[qb]) {
        blocks.push_back(static_cast<int>(kb));
        transposed[kb].push_back(static_cast<int>(qb));
      }
      entries += static_cast<std::int64_t>(lists[qb].size());
      LN_CHECK(entries <= std::numeric_limits<int>::max(), "block_sparse_attention on cuda: the ",
               name(c.pattern),
               " pattern keeps more than 2^31 block pairs; use a larger "
               "block_size or a lower density");
      offsets[qb + 1] = static_cast<int>(entries);
    }
  }
  Tables t;
  t.forward_offsets = upload(offsets, device);
  t.entries = entries;
  if (c.pattern == BlockPattern::content_adaptive) return t;
  std::vector<int> backward_offsets{0};
  std::vector<int> backward_blocks;
  for (const auto& list : transposed) {
    backward_blocks.insert(backward_blocks.end(), list.begin(), list.end());
    backward_offsets.push_back(static_cast<int>(backward_blocks.size()));
  }
  t.forward_blocks = upload(blocks, device);
  t.backward_offsets = upload(backward_offsets, device);
  t.backward_blocks = upload(backward_blocks, device);
  return t;
}

// The tables of a configuration, built on first use and kept for the kCached most recent
// configurations (a training run uses one or two).
Tables tables_for(const BlockSparseConfig& c, std::int64_t nq, std::int64_t nk, Device device) {
  using Key =
      std::tuple<int, int, std::int64_t, std::int64_t, std::int64_t, double, std::int64_t, bool>;
  constexpr std::size_t kCached = 8;
  static std::mutex mutex;
  static std::deque<std::pair<Key, Tables>> cache;  // most recent first
  const Key key{
      device.index, static_cast<int>(c.pattern), nq, nk, c.block_size, c.density, c.global_blocks,
      c.causal};
  std::lock_guard<std::mutex> lock(mutex);
  auto hit =
      std::find_if(cache.begin(), cache.end(), [&](const auto& e) { return e.first == key; });
  if (hit != cache.end()) {
    auto entry = std::move(*hit);
    cache.erase(hit);
    cache.push_front(std::move(entry));
  } else {
    cache.emplace_front(key, build_tables(c, nq, nk, device));
    if (cache.size() > kCached) cache.pop_back();
  }
  return cache.front().second;
}

// A dim of size 1 is never stepped along, and views give it any stride: it reads as 0.
Rows rows_of(const Tensor& t) {
  auto stride = [&](std::int64_t d) { return t.size(d) == 1 ? 0 : t.stride(d); };
  return {static_cast<const bf16*>(t.raw_data()), stride(0), stride(1), stride(2)};
}

// t itself when its rows are 16-byte aligned (base, and strides multiples of 8 elements),
// which the 16-byte copies need; else an aligned copy.
Tensor aligned(const Tensor& t) {
  Rows r = rows_of(t);
  bool ok = reinterpret_cast<std::uintptr_t>(r.data) % 16 == 0 && r.sb % 8 == 0 && r.sn % 8 == 0 &&
            r.sh % 8 == 0;
  return ok ? t : clone(t);
}

Dims dims_of(const Tensor& q, const Tensor& k, const BlockSparseConfig& c, double scale) {
  LN_CHECK(q.size(1) + c.block_size < std::numeric_limits<int>::max() &&
               k.size(1) + c.block_size < std::numeric_limits<int>::max(),
           "block_sparse_attention on cuda: sequence lengths ", q.size(1), " and ", k.size(1),
           " with block_size ", c.block_size, " exceed 2^31 positions");
  LN_CHECK(q.size(0) <= 65535 && q.size(2) <= 65535, "block_sparse_attention on cuda: batch ",
           q.size(0), " and heads ", q.size(2),
           " must each be at most 65535 (grid limits); split the batch");
  Dims p;
  p.nq = static_cast<int>(q.size(1));
  p.nk = static_cast<int>(k.size(1));
  p.heads = static_cast<int>(q.size(2));
  p.bs = static_cast<int>(c.block_size);
  p.tiles = static_cast<int>(blocks_of(c.block_size, kTile));
  p.causal = c.causal;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  return p;
}

template <class Kernel>
void prepare(Kernel kernel, std::size_t shared) {
  // 4-warp blocks, several a multiprocessor: the largest carveout, so that shared memory does
  // not cap their number first; above 48 KiB a kernel must opt in to its dynamic shared memory.
  LN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared));
  LN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(shared)));
}

// content_adaptive's lists of one call: blocks[(b * H + h) * entries + offsets[qb] ..].
Tensor select_blocks(const Tensor& q, const Tensor& k, const BlockSparseConfig& c, const Tables& t,
                     cudaStream_t stream) {
  const std::int64_t batch = q.size(0);
  const std::int64_t heads = q.size(2);
  const std::int64_t d = q.size(3);
  const std::int64_t nqb = blocks_of(q.size(1), c.block_size);
  const std::int64_t nkb = blocks_of(k.size(1), c.block_size);
  const Device device = q.device();
  Tensor blocks = empty({batch * heads * t.entries}, {DType::i32, device});
  if (nqb == 0 || batch * heads == 0) return blocks;
  int optin = 0;
  LN_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device.index));
  const std::size_t shared = sizeof(float) * (d + nkb);
  LN_CHECK(shared + 1024 <= static_cast<std::size_t>(optin),
           "block_sparse_attention on cuda: content_adaptive ranks ", nkb,
           " key blocks in shared memory, at most ", (optin - 1024) / 4 - d,
           " fit; use a larger block_size");
  auto pool = [&](const Tensor& x, std::int64_t nblocks) {
    Tensor mean = empty({batch * heads * nblocks * d}, {DType::f32, device});
    const std::int64_t total = mean.numel();
    if (total > 0) {
      pool_kernel<<<grid_for(total), 256, 0, stream>>>(
          rows_of(x), static_cast<float*>(mean.raw_data()), static_cast<int>(x.size(1)),
          static_cast<int>(heads), static_cast<int>(nblocks), static_cast<int>(c.block_size),
          static_cast<int>(d), total);
      LN_CUDA_CHECK(cudaGetLastError());
    }
    return mean;
  };
  Tensor q_mean = pool(q, nqb);
  Tensor k_mean = pool(k, nkb);
  LN_CUDA_CHECK(cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(shared)));
  select_kernel<<<dim3(static_cast<unsigned>(nqb), static_cast<unsigned>(heads),
                       static_cast<unsigned>(batch)),
                  kSelectThreads, shared, stream>>>(
      static_cast<const float*>(q_mean.raw_data()), static_cast<const float*>(k_mean.raw_data()),
      static_cast<int*>(blocks.raw_data()), static_cast<const int*>(t.forward_offsets.raw_data()),
      t.entries, static_cast<int>(nqb), static_cast<int>(nkb),
      static_cast<int>(kept_key_blocks(c, k.size(1))), static_cast<int>(d), c.causal);
  LN_CUDA_CHECK(cudaGetLastError());
  return blocks;
}

}  // namespace

void block_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const BlockSparseConfig& config, double scale,
                                    const Tensor& out, const Tensor& lse) {
  DeviceGuard guard(q.device().index);
  cudaStream_t stream = current_stream(q.device().index);
  const Dims p = dims_of(q, k, config, scale);
  const std::int64_t batch = q.size(0);
  const std::int64_t nqb = blocks_of(p.nq, p.bs);
  if (batch == 0 || p.heads == 0 || p.nq == 0) return;
  const Tables t = tables_for(config, p.nq, p.nk, q.device());
  const bool adaptive = config.pattern == BlockPattern::content_adaptive;
  const Tensor qa = aligned(q);
  const Tensor ka = aligned(k);
  const Tensor va = aligned(v);
  Tensor blocks = adaptive ? select_blocks(qa, ka, config, t, stream) : t.forward_blocks;
  const Lists lists{static_cast<const int*>(t.forward_offsets.raw_data()),
                    static_cast<const int*>(blocks.raw_data()), 0, adaptive ? t.entries : 0};
  const dim3 grid(static_cast<unsigned>(nqb * p.tiles), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(batch));
  with_head_dim(q.size(3), [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    prepare(forward_kernel<kD>, forward_shared_bytes<kD>());
    forward_kernel<kD><<<grid, kThreads, forward_shared_bytes<kD>(), stream>>>(
        rows_of(qa), rows_of(ka), rows_of(va), static_cast<bf16*>(out.raw_data()),
        static_cast<float*>(lse.raw_data()), lists, p);
    LN_CUDA_CHECK(cudaGetLastError());
  });
}

void block_sparse_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const BlockSparseConfig& config, double scale,
                                     const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  DeviceGuard guard(q.device().index);
  cudaStream_t stream = current_stream(q.device().index);
  const Dims p = dims_of(q, k, config, scale);
  const std::int64_t batch = q.size(0);
  const Device device = q.device();
  // dq accumulates in f32 by atomics; queries no key block reaches keep 0.
  Tensor dq_acc = zeros(q.shape(), {DType::f32, device});
  const std::int64_t nkb = blocks_of(p.nk, p.bs);
  if (batch > 0 && p.heads > 0 && p.nq > 0 && nkb > 0) {
    const Tables t = tables_for(config, p.nq, p.nk, device);
    const bool adaptive = config.pattern == BlockPattern::content_adaptive;
    const Tensor qa = aligned(q);
    const Tensor ka = aligned(k);
    const Tensor va = aligned(v);
    const Tensor da = aligned(dout);
    Tensor dp = empty({batch, p.heads, p.nq}, {DType::f32, device});
    const std::int64_t rows = batch * p.nq * p.heads;
    dp_kernel<<<static_cast<unsigned>((rows * 32 + 255) / 256), 256, 0, stream>>>(
        rows_of(out), rows_of(dout), static_cast<float*>(dp.raw_data()), batch, p.nq, p.heads,
        static_cast<int>(q.size(3)));
    LN_CUDA_CHECK(cudaGetLastError());

    Lists lists{};
    Tensor offsets;
    Tensor blocks;
    if (!adaptive) {
      lists = {static_cast<const int*>(t.backward_offsets.raw_data()),
               static_cast<const int*>(t.backward_blocks.raw_data()), 0, 0};
    } else {
      // The forward's selection again, transposed: counts, running sums, then the entries.
      const std::int64_t groups = batch * p.heads;
      const std::int64_t nqb = blocks_of(p.nq, p.bs);
      Tensor forward = select_blocks(qa, ka, config, t, stream);
      const Lists forward_lists{static_cast<const int*>(t.forward_offsets.raw_data()),
                                static_cast<const int*>(forward.raw_data()), 0, t.entries};
      offsets = empty({groups * (nkb + 1)}, {DType::i32, device});
      blocks = empty({groups * t.entries}, {DType::i32, device});
      auto* off = static_cast<int*>(offsets.raw_data());
      auto* blk = static_cast<int*>(blocks.raw_data());
      const std::int64_t total = groups * nkb;
      transpose_kernel<false><<<grid_for(total), 256, 0, stream>>>(
          forward_lists, off, blk, t.entries, static_cast<int>(nqb), static_cast<int>(nkb),
          p.causal, total);
      LN_CUDA_CHECK(cudaGetLastError());
      offsets_kernel<<<static_cast<unsigned>(groups), kSelectThreads, 0, stream>>>(
          off, static_cast<int>(nkb));
      LN_CUDA_CHECK(cudaGetLastError());
      transpose_kernel<true><<<grid_for(total), 256, 0, stream>>>(
          forward_lists, off, blk, t.entries, static_cast<int>(nqb), static_cast<int>(nkb),
          p.causal, total);
      LN_CUDA_CHECK(cudaGetLastError());
      lists = {off, blk, nkb + 1, t.entries};
    }
    const dim3 grid(static_cast<unsigned>(nkb * p.tiles), static_cast<unsigned>(p.heads),
                    static_cast<unsigned>(batch));
    with_head_dim(q.size(3), [&](auto dim) {
      constexpr int kD = decltype(dim)::value;
      prepare(backward_kernel<kD>, backward_shared_bytes<kD>());
      backward_kernel<kD><<<grid, kThreads, backward_shared_bytes<kD>(), stream>>>(
          rows_of(qa), rows_of(ka), rows_of(va), rows_of(da),
          static_cast<const float*>(lse.raw_data()), static_cast<const float*>(dp.raw_data()),
          static_cast<float*>(dq_acc.raw_data()), static_cast<bf16*>(dk.raw_data()),
          static_cast<bf16*>(dv.raw_data()), lists, p);
      LN_CUDA_CHECK(cudaGetLastError());
    });
  } else {
    fill_(dk, 0.0);
    fill_(dv, 0.0);
  }
  copy_(dq, dq_acc);
}

}  // namespace longnet::cuda
