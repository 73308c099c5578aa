// Dilated attention on tensor cores for bf16 inputs with D == Dv in {32, 64, 128}:
// FlashAttention-2 kernels on mma.sync m16n8k16 (bf16 products, f32 accumulation, f32
// softmax statistics). Tiles of compact rows reach shared memory by 16-byte cp.async, two
// stages deep, each row padded by 16 bytes so that the 8 rows one ldmatrix reads fall in
// distinct bank groups. Every warp owns 16 rows of the products it accumulates. The warp-level
// pieces are shared with block-sparse attention (attention/cuda/mma.cuh).
//
// Forward: 4 warps own a 64-row query tile and walk the segment's 64-key tiles with an
// online softmax; P goes from the score accumulators to the A operand of P V in registers.
// Backward: 4 warps own a 64-key tile (16 keys each) and walk the query tiles that see it,
// computing S^T = K Q^T and dP^T = V dO^T so that P^T and dS^T are A operands of
// dV += P^T dO and dK += dS^T Q as they stand; dS^T goes through shared memory for
// dQ = dS K, which is added to an f32 buffer by atomics (the order of those additions, and so
// the last bits of dq, can differ from run to run; dk and dv are deterministic).
// The launches of one call (paper mode's branches) overlap: see let_next_launch_start.
//
// On H100 and H200 (sm_90a, D = 64) the same kernels run their products on wgmma
// (attention/cuda/wgmma.cuh) instead, from swizzled tiles that the tensor cores read from
// shared memory: the forward's block is three warpgroups of 64 query rows that share each
// step's key and value tiles (a third of the L2 reads of one warpgroup a block), each taking
// 64 x 128 scores a step (Q and K both from shared memory, P V with P from registers); the
// backward's block is two warpgroups of 64 keys each, so that each query tile is read and its
// dQ added once per 128 keys (half the L2 traffic of 64-key blocks, which had made the
// backward L2-bound). The mma.sync kernels stay for sm_80, the other head dims and
// LONGNET_NO_WGMMA.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "attention/cuda/dilated_kernels.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/wgmma.cuh"
#include "tensor/cuda/check.h"

namespace longnet::cuda::detail {

namespace {

using namespace tensor_core;

// Keys per step of the forward: mma.sync (each warp's own product tiles) and wgmma (the
// warpgroup's, 64 x 128 scores a step).
constexpr int kForwardKeys = 64;
constexpr int kWgmmaForwardKeys = 128;
template <bool kWgmma>
constexpr int forward_keys = kWgmma ? kWgmmaForwardKeys : kForwardKeys;

// Warpgroups of a forward block with wgmma: each takes 64 query rows (kMmaQueryTile) and all
// three share the key and value tiles, so that the block reads each key and value once for
// 192 queries: a third of the L2 traffic of one warpgroup a block (dense 128K forward: 89.6 ->
// 79.9 ms on H100).
template <bool kWgmma>
constexpr int forward_groups = kWgmma ? 3 : 1;
static_assert(kMmaQueryTile == 16 * kWarps && kMmaKeyTile == 16 * kWarps);

// Query rows per step of the backward: fewer for D = 128 keeps dk and dv (2 x 64 f32 per
// thread) and the score tiles within the register file.
constexpr int backward_rows(int kd) { return kd == 128 ? 32 : 64; }

// Programmatic dependent launch (sm_90): the launches of one call start as soon as every
// block of the launch before has started, so that one branch's last wave overlaps the next
// branch's first. A launch that merges into the branches before it waits for them (all their
// blocks done, their writes visible) before it touches the outputs it shares with them; the
// first launch waits at its start, as if launched in plain stream order.
__device__ __forceinline__ void let_next_launch_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// A barrier among the 4 warps of warpgroup `group` (0 or 1) of a block; __syncthreads has
// barrier 0, so the groups take 1 and 2 (constant ids: ptxas then reserves only those).
__device__ __forceinline__ void sync_group(int group) {
  if (group == 0) {
    asm volatile("bar.sync 1, 128;\n" ::: "memory");
  } else {
    asm volatile("bar.sync 2, 128;\n" ::: "memory");
  }
}

// Starts copying compact rows of one head into a shared tile of kRows rows: tile rows first ..
// rows - 1 from the compact rows at positions pos, pos + r, ...; rows of kD + kPad bf16s for
// mma.sync, or (kSwizzled, kD = 64) the swizzled 128-byte rows that wgmma reads. The other
// rows are zeros, so that no garbage (NaN) reaches a product.
template <int kRows, int kD, bool kSwizzled = false, int kBlockThreads = kThreads>
__device__ __forceinline__ void load_tile(bf16* tile, const Operand& op, std::int64_t batch,
                                          int head, std::int64_t pos, std::int64_t r,
                                          std::int64_t rows, int first = 0) {
  static_assert(!kSwizzled || kD == 64);
  constexpr int kChunks = kD / 8;
  const bf16* base = static_cast<const bf16*>(op.data) + batch * op.sb + pos * op.sn + head * op.sh;
  const std::int64_t stride = r * op.sn;
#pragma unroll
  for (int i = threadIdx.x; i < kRows * kChunks; i += kBlockThreads) {
    const int row = i / kChunks;
    const int c = i % kChunks;
    const bool valid = row < rows && (first == 0 || row >= first);  // the test folds for 0
    const int at = kSwizzled ? wgmma::swizzled(row, 8 * c) / 2 : row * (kD + kPad) + 8 * c;
    copy16(tile + at, valid ? base + (row - first) * stride + 8 * c : base, valid);
  }
}

// Shared memory of a block: the query tile and two stages of key and value tiles, as rows of
// kD + kPad bf16s for mma.sync or swizzled 128-byte rows for wgmma (then aligned to the
// swizzle's period by the kernel, hence the slack).
template <int kD, bool kWgmma>
constexpr std::size_t forward_shared_bytes() {
  if constexpr (kWgmma) {
    return static_cast<std::size_t>(kMmaQueryTile * forward_groups<true> + 4 * kWgmmaForwardKeys) *
               wgmma::kRowBytes +
           wgmma::kAlignment;
  }
  return sizeof(bf16) * (kMmaQueryTile + 4 * kForwardKeys) * (kD + kPad);
}

// The start of dynamic shared memory, rounded up to the wgmma swizzle's period.
__device__ __forceinline__ bf16* swizzle_aligned(void* shared) {
  const std::uint32_t at = shared_address(shared);
  const std::uint32_t skip = (wgmma::kAlignment - at % wgmma::kAlignment) % wgmma::kAlignment;
  return reinterpret_cast<bf16*>(static_cast<unsigned char*>(shared) + skip);
}

// Whether this compilation pass has wgmma: a kernel instantiated for it elsewhere stops.
__device__ __forceinline__ void require_wgmma() {
#ifndef LONGNET_WGMMA
  __trap();
#endif
}

// The end of a forward block for one warp's 16 rows: their sums completed across the lanes
// that share a row, outputs normalised (and, merging, combined with the earlier branches' by
// their lse) and stored with their lse.
template <class O, int kD>
__device__ __forceinline__ void store_forward_rows(const float (&o)[kD / 8][4], const float (&m)[2],
                                                   float (&l)[2], O* out, float* lse,
                                                   const Problem& p, const Branch& br,
                                                   const Segment& s, std::int64_t batch, int head,
                                                   std::int64_t warp_row, int g, int t) {
  if (br.merge) wait_for_previous_launch();
  // Merging: every lane of a row reads the earlier lse before the row's first lane writes it.
  float lse_old[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const std::int64_t row = warp_row + g + 8 * i;
    const std::int64_t lse_index = (batch * p.heads + head) * p.nq + s.first + row * br.r;
    lse_old[i] = br.merge && row >= 0 && row < s.nq ? lse[lse_index] : -kInf;
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const std::int64_t row = warp_row + g + 8 * i;
    if (row < 0 || row >= s.nq) continue;
    const std::int64_t pos = s.first + row * br.r;
    const float lse_new = (m[i] * p.scale_log2 + log2f(l[i])) * kLn2;
    const auto [w_old, w_new, lse_out] = merge_weights(br.merge, lse_old[i], lse_new);
    const float gain = w_new * br.out_scale / l[i];
    O* dst = out + ((batch * p.nq + pos) * p.heads + head) * kD + 2 * t;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      float x0 = o[j][2 * i] * gain;
      float x1 = o[j][2 * i + 1] * gain;
      if constexpr (std::is_same_v<O, float>) {
        float2* d2 = reinterpret_cast<float2*>(dst + 8 * j);
        if (br.merge) {
          const float2 old = *d2;
          x0 += old.x * w_old;
          x1 += old.y * w_old;
        }
        *d2 = make_float2(x0, x1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(dst + 8 * j) = __floats2bfloat162_rn(x0, x1);
      }
    }
    if (t == 0) lse[(batch * p.heads + head) * p.nq + pos] = lse_out;
  }
}

// Forward of one branch for one query tile. O is the type out is kept in: bf16 when this
// launch writes final values, f32 when the branches merge into it. kWgmma (sm_90a, D = 64):
// three warpgroups of 64 rows (forward_groups), their products by wgmma from swizzled tiles;
// else 4 warps of 16 rows, each warp's products by mma.sync. A segment's tiles are counted
// from its end (tile 0 holds its last rows): the short tile, if any, is the first, which under
// the causal mask sees the fewest keys, and its rows before the segment are masked.
// mma.sync: 163 registers for D = 64 (3 blocks a multiprocessor), 220 for D = 128 (2);
// wgmma: 168 with 16 bytes spilled (one block of 12 warps a multiprocessor).
template <class O, int kD, bool kWgmma>
__global__ void __launch_bounds__(kThreads* forward_groups<kWgmma>,
                                  kWgmma ? 1 : (kD == 128 ? 2 : 3))
    forward_kernel(Operand q, Operand k, Operand v, O* out, float* lse, Problem p, Launch launch) {
  static_assert(!kWgmma || kD == 64);
  if constexpr (kWgmma) require_wgmma();
  constexpr int kGroups = forward_groups<kWgmma>;
  constexpr int kBlockThreads = kThreads * kGroups;
  constexpr int kRow = kWgmma ? kD : kD + kPad;  // bf16s a tile row takes
  constexpr int kRows = kMmaQueryTile * kGroups;
  constexpr int kKeys = forward_keys<kWgmma>;
  extern __shared__ uint4 shared[];
  bf16* qs = kWgmma ? swizzle_aligned(shared) : reinterpret_cast<bf16*>(shared);
  bf16* ks = qs + kRows * kRow;      // two stages
  bf16* vs = ks + 2 * kKeys * kRow;  // two stages

  const int head = launch.head_begin + static_cast<int>(blockIdx.y);
  const Branch br = branch_of(launch, head);
  if (blockIdx.x >= br.segments * br.tiles) return;
  const std::int64_t batch = blockIdx.z;
  const Segment s = locate(p, br, head, /*reverse=*/false);
  // The tile's first row; rows before 0 are not the segment's.
  const std::int64_t a0 = s.nq - static_cast<std::int64_t>(s.tile + 1) * kRows;
  if (a0 + kRows <= 0 || s.nk == 0) return;
  if (!br.merge) wait_for_previous_launch();
  let_next_launch_start();
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4;
  const int t = lane % 4;
  const std::int64_t warp_row = a0 + 16 * warp;  // this warp's rows: warp_row + g (+ 8)
  // The last row of this thread's warpgroup (wgmma) or warp (mma.sync): a step whose keys all
  // come after it (causal), or any step when it is before the segment, leaves its rows alone.
  const std::int64_t last_row =
      kWgmma ? a0 + kMmaQueryTile * (warp / kWarps + 1) - 1 : warp_row + 15;

  // Under the causal mask compact query row a sees compact keys 0..a of its segment.
  const std::int64_t key_end = p.causal ? std::min<std::int64_t>(s.nk, a0 + kRows) : s.nk;
  const int steps = static_cast<int>((key_end + kKeys - 1) / kKeys);
  const int first = static_cast<int>(std::max<std::int64_t>(-a0, 0));  // tile row of row 0
  load_tile<kRows, kD, kWgmma, kBlockThreads>(qs, q, batch, head, s.first + (a0 + first) * br.r,
                                              br.r, s.nq - a0, first);
  load_tile<kKeys, kD, kWgmma, kBlockThreads>(ks, k, batch, head, s.first, br.r, s.nk);
  load_tile<kKeys, kD, kWgmma, kBlockThreads>(vs, v, batch, head, s.first, br.r, s.nk);
  commit_copies();

  std::uint32_t qf[kD / 16][4];
  float o[kD / 8][4] = {};
  float m[2] = {-kInf, -kInf};  // running max of the raw scores of rows g and g + 8
  float l[2] = {0, 0};          // this lane's part of their running sums
  for (int step = 0; step < steps; ++step) {
    wait_copies();
    if constexpr (kWgmma) wgmma::fence_shared_for_tensor_cores();
    // Tile `step` is in; every warp is done with tile step - 1, whose stage the next load takes.
    __syncthreads();
    const std::int64_t k0 = static_cast<std::int64_t>(step) * kKeys;
    if (step + 1 < steps) {
      const int next = (step + 1) % 2;
      load_tile<kKeys, kD, kWgmma, kBlockThreads>(ks + next * kKeys * kRow, k, batch, head,
                                                  s.first + (k0 + kKeys) * br.r, br.r,
                                                  s.nk - k0 - kKeys);
      load_tile<kKeys, kD, kWgmma, kBlockThreads>(vs + next * kKeys * kRow, v, batch, head,
                                                  s.first + (k0 + kKeys) * br.r, br.r,
                                                  s.nk - k0 - kKeys);
      commit_copies();
    }
    if (!kWgmma && step == 0) {
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        load_matrices(qf[kk], a_address(qs, kRow, 16 * warp, 16 * kk, lane));
      }
    }
    // Under the causal mask the diagonal's last key tiles may lie after all of a warpgroup's
    // (warp's) rows; a warpgroup's wgmma needs all its warps, and the masks below cover the
    // rows of a warp within it.
    if (last_row < 0 || (p.causal && k0 > last_row)) continue;
    const bf16* kt = ks + (step % 2) * kKeys * kRow;
    const bf16* vt = vs + (step % 2) * kKeys * kRow;

    float sc[kKeys / 8][4] = {};
    if constexpr (kWgmma) {
      // This warpgroup's 64 rows of the query tile.
      const bf16* group_qs = qs + kMmaQueryTile * (warp / kWarps) * kRow;
      wgmma::fence_operands(sc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        wgmma::mma<0, 0>(sc, wgmma::descriptor(group_qs + 16 * kk),
                         wgmma::descriptor(kt + 16 * kk));
      }
      wgmma::commit_and_wait();
      wgmma::fence_operands(sc);
    } else {
      add_scores<kKeys, kD>(sc, qf, kt, lane);
    }
    // Keys past the segment's end or (causal) after the row are masked; only tiles at the
    // edges have any.
    const bool edge = k0 + kKeys > s.nk || (p.causal && k0 + kKeys - 1 > warp_row);
    // In the tile's own indices (int, clamped where every pair is decided alike): key column c
    // exists below key_end and (causal) is after row g + 8 i when c > last_seen + 8 i.
    const int key_end = static_cast<int>(std::min<std::int64_t>(s.nk - k0, kKeys));
    const int last_seen =
        p.causal ? static_cast<int>(std::clamp<std::int64_t>(warp_row - k0, -16, kKeys)) + g
                 : kKeys;
    online_softmax<kKeys, kD>(sc, m, l, o, p.scale_log2, edge, [=](float& x, int j, int e) {
      const int c = 8 * j + 2 * t + e % 2;
      if (c >= key_end || c > last_seen + 8 * (e / 2)) x = -kInf;
    });
    if constexpr (kWgmma) {
      // P as A fragments, all packed before the fence: a register written between two
      // wgmmas of a batch makes ptxas fence each of them again (C7519).
      std::uint32_t pa[kKeys / 16][4];
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) wgmma::pack_a(pa[kk], sc, 16 * kk);
      wgmma::fence_operands(o);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        wgmma::mma</*kTransposeB=*/1>(o, pa[kk], wgmma::descriptor(vt + 16 * kk * kRow));
      }
      wgmma::commit_and_wait();
      wgmma::fence_operands(o);
    } else {
      add_pv<kKeys, kD>(o, sc, vt, lane);
    }
  }

  store_forward_rows<O, kD>(o, m, l, out, lse, p, br, s, batch, head, warp_row, g, t);
}

// Warpgroups of a backward block with wgmma: each takes 64 keys (kMmaKeyTile), so that a
// block reads each query tile and adds its dQ once for 128 keys, half the L2 traffic of one.
template <bool kWgmma>
constexpr int backward_groups = kWgmma ? 2 : 1;

// Shared memory of a backward block: key and value tiles, two stages of query and
// output-gradient tiles, dS^T, and two stages of lse and Dp (as forward_shared_bytes).
template <int kD, bool kWgmma>
constexpr std::size_t backward_shared_bytes() {
  constexpr int kKeys = kMmaKeyTile * backward_groups<kWgmma>;
  constexpr int kRows = backward_rows(kD);
  constexpr std::size_t stats = sizeof(float) * 4 * kRows;
  if constexpr (kWgmma) {
    // With wgmma also the second warpgroup's dQ, for the first to add.
    return static_cast<std::size_t>(3 * kKeys + 4 * kRows) * wgmma::kRowBytes +
           sizeof(float) * kRows * kD + stats + wgmma::kAlignment;
  }
  return sizeof(bf16) * ((2 * kKeys + 4 * kRows) * (kD + kPad) + kKeys * (kRows + kPad)) + stats;
}

// P^T and dS^T of this warp's 16 keys (from warp_key) against a tile of kRows queries from
// a0: pairs past the ends or (causal) with the key after the query are 0; only tiles at an
// edge have any.
template <int kRows>
__device__ __forceinline__ void segment_probabilities(float (&st)[kRows / 8][4],
                                                      float (&dpt)[kRows / 8][4],
                                                      const float* lse_t, const float* dp_t,
                                                      std::int64_t a0, std::int64_t warp_key,
                                                      const Segment& s, const Problem& p,
                                                      const Branch& br, int lane) {
  const bool edge = a0 + kRows > s.nq || warp_key + 16 > s.nk || (p.causal && warp_key + 15 > a0);
  // In the tile's own indices (int, clamped where every pair is decided alike): query column
  // col exists below query_end, key g + 8 i of the warp below key_end, and (causal) sees that
  // key from column first_seen + 8 i on.
  const int g = lane / 4;
  const int query_end = static_cast<int>(std::min<std::int64_t>(s.nq - a0, kRows));
  const int key_end = static_cast<int>(std::clamp<std::int64_t>(s.nk - warp_key, 0, 16));
  const int first_seen =
      p.causal ? static_cast<int>(std::clamp<std::int64_t>(warp_key - a0, -16, kRows)) + g : -16;
  transposed_probabilities<kRows>(
      st, dpt, lse_t, dp_t, p.scale_log2, br.out_scale, lane, edge, [=](int col, int e) {
        const int i = 8 * (e / 2);
        return col < query_end && g + i < key_end && col >= first_seen + i;
      });
}

// Backward of one branch for one key tile: dk and dv of the tile's keys in registers over all
// query tiles that see them, dq added atomically per query tile. P is recomputed from the
// saved lse; dS = P (dO' . v - Dp) with dO' = out_scale dO. G is the type of dk and dv:
// f32 is written by a first branch and accumulated by a merging one, bf16 is written.
// kWgmma as in the forward, with two warpgroups of 64 keys each (backward_groups): every
// product by a warpgroup from swizzled tiles, dS^T through a swizzled tile for dQ, whose two
// halves (over each group's keys) the first group adds before its atomics.
// mma.sync: 168 registers for D = 64 (3 blocks a multiprocessor), 247 for D = 128 (1);
// wgmma: 204 registers, one block of 8 warps a multiprocessor.
template <class G, int kD, bool kWgmma>
__global__ void __launch_bounds__(kThreads* backward_groups<kWgmma>, kD == 128 || kWgmma ? 1 : 3)
    backward_kernel(Operand q, Operand k, Operand v, Operand dout, const float* lse,
                    const float* dp, float* dq, G* dk, G* dv, Problem p, Launch launch) {
  static_assert(!kWgmma || (kD == 64 && backward_rows(kD) == 64));
  if constexpr (kWgmma) require_wgmma();
  constexpr int kGroups = backward_groups<kWgmma>;
  constexpr int kBlockThreads = kThreads * kGroups;
  constexpr int kRow = kWgmma ? kD : kD + kPad;  // bf16s a tile row takes
  constexpr int kKeys = kMmaKeyTile * kGroups;
  constexpr int kRows = backward_rows(kD);
  constexpr int kSRow = kWgmma ? kRows : kRows + kPad;
  extern __shared__ uint4 shared[];
  bf16* ks = kWgmma ? swizzle_aligned(shared) : reinterpret_cast<bf16*>(shared);
  bf16* vs = ks + kKeys * kRow;
  bf16* qs = vs + kKeys * kRow;                                    // two stages
  bf16* dos = qs + 2 * kRows * kRow;                               // two stages
  bf16* dst_s = dos + 2 * kRows * kRow;                            // dS^T [key][query]
  float* lse_s = reinterpret_cast<float*>(dst_s + kKeys * kSRow);  // two stages
  float* dp_s = lse_s + 2 * kRows;                                 // two stages
  float* dq_s = dp_s + 2 * kRows;  // wgmma: the second group's dQ, [element][thread]

  const int head = launch.head_begin + static_cast<int>(blockIdx.y);
  const Branch br = branch_of(launch, head);
  if (blockIdx.x >= br.segments * br.tiles) return;
  const std::int64_t batch = blockIdx.z;
  const Segment s = locate(p, br, head, /*reverse=*/false);
  const std::int64_t k0 = static_cast<std::int64_t>(s.tile) * kKeys;
  // Query tiles before the key tile see none of its keys under the causal mask. Keys no query
  // sees get dk = dv = 0: written by the first branch, kept by later ones.
  const std::int64_t a_begin = p.causal ? k0 / kRows * kRows : 0;
  const bool seen = a_begin < s.nq;
  if (k0 >= s.nk || (br.merge && !seen)) return;
  // dq takes atomic additions at any time; dk and dv are read and written at the end.
  if (!br.merge) wait_for_previous_launch();
  let_next_launch_start();
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4;
  const int t = lane % 4;
  const int group = warp / kWarps;               // the warpgroup, with its 64 keys
  const std::int64_t warp_key = k0 + 16 * warp;  // this warp's keys: warp_key + g (+ 8)
  const bf16* group_ks = ks + kMmaKeyTile * group * kRow;
  const bf16* group_vs = vs + kMmaKeyTile * group * kRow;
  const float* lse_h = lse + (batch * p.heads + head) * p.nq;
  const float* dp_h = dp + (batch * p.heads + head) * p.nq;

  auto load_queries = [&](int stage, std::int64_t a0) {
    const std::int64_t pos = s.first + a0 * br.r;
    load_tile<kRows, kD, kWgmma, kBlockThreads>(qs + stage * kRows * kRow, q, batch, head, pos,
                                                br.r, s.nq - a0);
    load_tile<kRows, kD, kWgmma, kBlockThreads>(dos + stage * kRows * kRow, dout, batch, head, pos,
                                                br.r, s.nq - a0);
    const int i = static_cast<int>(threadIdx.x % kRows);
    const bool valid = a0 + i < s.nq;
    const std::int64_t at = valid ? pos + i * br.r : pos;
    if (threadIdx.x < kRows) {
      copy4(lse_s + stage * kRows + i, lse_h + at, valid);
    } else if (threadIdx.x < 2 * kRows) {
      copy4(dp_s + stage * kRows + i, dp_h + at, valid);
    }
    commit_copies();
  };
  if (seen) {
    load_tile<kKeys, kD, kWgmma, kBlockThreads>(ks, k, batch, head, s.first + k0 * br.r, br.r,
                                                s.nk - k0);
    load_tile<kKeys, kD, kWgmma, kBlockThreads>(vs, v, batch, head, s.first + k0 * br.r, br.r,
                                                s.nk - k0);
    load_queries(0, a_begin);
  }

  float dk_acc[kD / 8][4] = {};
  float dv_acc[kD / 8][4] = {};
  int stage = 0;
  for (std::int64_t a0 = a_begin; a0 < s.nq; a0 += kRows, stage ^= 1) {
    wait_copies();
    if constexpr (kWgmma) wgmma::fence_shared_for_tensor_cores();
    // This tile is in; every warp is done with the last one (its stage and dS^T).
    __syncthreads();
    if (a0 + kRows < s.nq) load_queries(stage ^ 1, a0 + kRows);
    const bf16* qt = qs + stage * kRows * kRow;
    const bf16* dot = dos + stage * kRows * kRow;
    const float* lse_t = lse_s + stage * kRows;
    const float* dp_t = dp_s + stage * kRows;

    // dQ = dS K: warp w takes 16 query rows and a column range (with wgmma: all columns, the
    // first group's warps adding).
    using Split = DqSplit<kRows, kD>;
    constexpr int kCols = Split::kCols;
    const int row0 = Split::row0(warp % kWarps);
    const int col0 = Split::col0(warp % kWarps);
    float dq_acc[kCols / 8][4];  // zeroed where its products start
    if constexpr (kWgmma) {
      // S^T = K Q^T and dP^T = V dO^T: the key and value tiles are A, K-major like the query
      // and output-gradient tiles as B.
      float st[kRows / 8][4] = {};
      float dpt[kRows / 8][4] = {};
      wgmma::fence_operands(st);
      wgmma::fence_operands(dpt);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        wgmma::mma<0, 0>(st, wgmma::descriptor(group_ks + 16 * kk),
                         wgmma::descriptor(qt + 16 * kk));
      }
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        wgmma::mma<0, 0>(dpt, wgmma::descriptor(group_vs + 16 * kk),
                         wgmma::descriptor(dot + 16 * kk));
      }
      wgmma::commit_and_wait();
      wgmma::fence_operands(st);
      wgmma::fence_operands(dpt);
      segment_probabilities<kRows>(st, dpt, lse_t, dp_t, a0, warp_key, s, p, br, lane);
      // dV += P^T dO and dK += dS^T Q, the query and output-gradient tiles MN-major as B; dS^T
      // to its swizzled tile, rows the keys. P^T and dS^T as A fragments, all packed before
      // the fence (as in the forward).
      std::uint32_t pa[kRows / 16][4];
      std::uint32_t sa[kRows / 16][4];
      unsigned char* ds_bytes = reinterpret_cast<unsigned char*>(dst_s);
#pragma unroll
      for (int kk = 0; kk < kRows / 16; ++kk) {
        wgmma::pack_a(pa[kk], st, 16 * kk);
        wgmma::pack_a(sa[kk], dpt, 16 * kk);
      }
      wgmma::fence_operands(dk_acc);
      wgmma::fence_operands(dv_acc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kRows / 16; ++kk) {
        wgmma::mma<1>(dv_acc, pa[kk], wgmma::descriptor(dot + 16 * kk * kRow));
        wgmma::mma<1>(dk_acc, sa[kk], wgmma::descriptor(qt + 16 * kk * kRow));
      }
#pragma unroll
      for (int kk = 0; kk < kRows / 16; ++kk) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = 16 * warp + g + 8 * (i % 2);
          const int query = 16 * kk + 2 * t + 8 * (i / 2);
          *reinterpret_cast<std::uint32_t*>(ds_bytes + wgmma::swizzled(key, query)) = sa[kk][i];
        }
      }
      wgmma::fence_shared_for_tensor_cores();
      // Each group's dQ reads only its own keys' rows of dS^T.
      sync_group(group);
      // dQ = dS K over the group's keys: dS^T is A M-major, the key tile B MN-major.
      zero(dq_acc);
      wgmma::fence_operands(dq_acc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kMmaKeyTile / 16; ++kk) {
        const int key0 = kMmaKeyTile * group + 16 * kk;
        wgmma::mma<1, 1>(dq_acc, wgmma::descriptor(dst_s + key0 * kSRow),
                         wgmma::descriptor(ks + key0 * kRow));
      }
      wgmma::commit_and_wait();
      wgmma::fence_operands(dq_acc);
      wgmma::fence_operands(dk_acc);
      wgmma::fence_operands(dv_acc);
      // The second group hands its dQ to the first, which adds it (the next tile's first
      // barrier keeps dq_s until then).
      const int slot = static_cast<int>(threadIdx.x) % kThreads;
      if (group == 1) {
#pragma unroll
        for (int j = 0; j < kCols / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) dq_s[(4 * j + e) * kThreads + slot] = dq_acc[j][e];
        }
      }
      __syncthreads();
      if (group == 1) continue;
#pragma unroll
      for (int j = 0; j < kCols / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dq_acc[j][e] += dq_s[(4 * j + e) * kThreads + slot];
      }
    } else {
      if (p.causal && warp_key > a0 + kRows - 1) {
        // All of this warp's keys lie after the tile's queries: its rows of dS^T are 0.
        zero_ds_rows<kRows>(dst_s, warp, lane);
      } else {
        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
        float st[kRows / 8][4] = {};
        float dpt[kRows / 8][4] = {};
        add_transposed_scores<kRows, kD>(st, dpt, ks, vs, qt, dot, warp, lane);
        segment_probabilities<kRows>(st, dpt, lse_t, dp_t, a0, warp_key, s, p, br, lane);
        // dV += P^T dO and dK += dS^T Q; dS^T to shared memory for dQ.
        add_dv_dk<kRows, kD>(dv_acc, dk_acc, st, dpt, dst_s, qt, dot, warp, lane);
      }
      __syncthreads();
      zero(dq_acc);
      add_dq<kRows, kD>(dq_acc, dst_s, ks, warp, lane);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const std::int64_t query = a0 + row0 + g + 8 * i;
      if (query >= s.nq) continue;
      float* row =
          dq + ((batch * p.nq + s.first + query * br.r) * p.heads + head) * kD + col0 + 2 * t;
#pragma unroll
      for (int j = 0; j < kCols / 8; ++j) {
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

  // Within one launch a key belongs to one block, and launches run in order on one stream:
  // a plain read-modify-write accumulates a merging branch into the ones before it.
  if (br.merge) wait_for_previous_launch();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const std::int64_t key = warp_key + g + 8 * i;
    if (key >= s.nk) continue;
    const std::int64_t at = ((batch * p.nk + s.first + key * br.r) * p.heads + head) * kD + 2 * t;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      const float k0v = dk_acc[j][2 * i] * p.scale;
      const float k1v = dk_acc[j][2 * i + 1] * p.scale;
      const float v0 = dv_acc[j][2 * i] * br.out_scale;
      const float v1 = dv_acc[j][2 * i + 1] * br.out_scale;
      if constexpr (std::is_same_v<G, float>) {
        float2* dk2 = reinterpret_cast<float2*>(dk + at + 8 * j);
        float2* dv2 = reinterpret_cast<float2*>(dv + at + 8 * j);
        const float2 ko = br.merge ? *dk2 : make_float2(0.f, 0.f);
        const float2 vo = br.merge ? *dv2 : make_float2(0.f, 0.f);
        *dk2 = make_float2(ko.x + k0v, ko.y + k1v);
        *dv2 = make_float2(vo.x + v0, vo.y + v1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(dk + at + 8 * j) = __floats2bfloat162_rn(k0v, k1v);
        *reinterpret_cast<__nv_bfloat162*>(dv + at + 8 * j) = __floats2bfloat162_rn(v0, v1);
      }
    }
  }
}

// Both kernels run 4 warps a block and take several blocks per multiprocessor: ask for the
// largest shared memory carveout, so that shared memory does not cap that number first.
// Launched with programmatic stream serialization where the device has it (sm_90 and later).
template <class... Params>
void launch_mma(void (*kernel)(Params...), dim3 grid, unsigned threads, std::size_t shared,
                cudaStream_t stream, auto... args) {
  LN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared));
  LN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(shared)));
  int device = 0;
  int major = 0;
  LN_CUDA_CHECK(cudaGetDevice(&device));
  LN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  cudaLaunchAttribute overlap;
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = &overlap;
  config.numAttrs = major >= 9 ? 1 : 0;
  LN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

// Calls f with std::true_type where the wgmma kernels run: D = 64 on a device of compute
// capability 9.0, in a build with sm_90a code (LONGNET_SM90A), unless LONGNET_NO_WGMMA is set
// (the mma.sync kernels then run there too); else with std::false_type.
template <int kD, class F>
void with_wgmma(F f) {
#ifdef LONGNET_SM90A
  if constexpr (kD == 64) {
    if (wgmma_device()) return f(std::true_type{});
  }
#endif
  f(std::false_type{});
}

}  // namespace

bool wgmma_device() {
  const bool disabled = std::getenv("LONGNET_NO_WGMMA") != nullptr;
  int device = 0;
  int major = 0;
  int minor = 0;
  LN_CUDA_CHECK(cudaGetDevice(&device));
  LN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  LN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return !disabled && major == 9 && minor == 0;
}

bool mma_wgmma(const Problem& p) {
  bool wgmma = false;
  with_head_dim(p.d, [&](auto dim) {
    with_wgmma<decltype(dim)::value>([&](auto on) { wgmma = decltype(on)::value; });
  });
  return wgmma;
}

int mma_query_tile(const Problem& p) {
  return kMmaQueryTile * (mma_wgmma(p) ? forward_groups<true> : forward_groups<false>);
}

int mma_key_tile(const Problem& p) {
  return kMmaKeyTile * (mma_wgmma(p) ? backward_groups<true> : backward_groups<false>);
}

bool mma_takes(const Problem& p, bool bf16, std::initializer_list<Operand> operands) {
  if (!bf16 || p.d != p.dv || (p.d != 32 && p.d != 64 && p.d != 128)) return false;
  return std::all_of(operands.begin(), operands.end(), [](const Operand& op) {
    return reinterpret_cast<std::uintptr_t>(op.data) % 16 == 0 && op.sb % 8 == 0 &&
           op.sn % 8 == 0 && op.sh % 8 == 0;
  });
}

void mma_forward(const Problem& p, const Launch& l, dim3 grid, Operand q, Operand k, Operand v,
                 void* out, bool out_f32, float* lse, cudaStream_t stream) {
  with_head_dim(p.d, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    with_wgmma<kD>([&](auto wgmma) {
      constexpr bool kWgmma = decltype(wgmma)::value;
      constexpr std::size_t shared = forward_shared_bytes<kD, kWgmma>();
      constexpr unsigned threads = kThreads * forward_groups<kWgmma>;
      if (out_f32) {
        launch_mma(forward_kernel<float, kD, kWgmma>, grid, threads, shared, stream, q, k, v,
                   static_cast<float*>(out), lse, p, l);
      } else {
        launch_mma(forward_kernel<bf16, kD, kWgmma>, grid, threads, shared, stream, q, k, v,
                   static_cast<bf16*>(out), lse, p, l);
      }
    });
  });
}

void mma_backward(const Problem& p, const Launch& l, dim3 grid, Operand q, Operand k, Operand v,
                  Operand dout, const float* lse, const float* dp, float* dq, void* dk, void* dv,
                  bool grads_f32, cudaStream_t stream) {
  with_head_dim(p.d, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    with_wgmma<kD>([&](auto wgmma) {
      constexpr bool kWgmma = decltype(wgmma)::value;
      constexpr std::size_t shared = backward_shared_bytes<kD, kWgmma>();
      constexpr unsigned threads = kThreads * backward_groups<kWgmma>;
      if (grads_f32) {
        launch_mma(backward_kernel<float, kD, kWgmma>, grid, threads, shared, stream, q, k, v, dout,
                   lse, dp, dq, static_cast<float*>(dk), static_cast<float*>(dv), p, l);
      } else {
        launch_mma(backward_kernel<bf16, kD, kWgmma>, grid, threads, shared, stream, q, k, v, dout,
                   lse, dp, dq, static_cast<bf16*>(dk), static_cast<bf16*>(dv), p, l);
      }
    });
  });
}

}  // namespace longnet::cuda::detail
