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
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "attention/cuda/dilated_kernels.cuh"
#include "attention/cuda/mma.cuh"
#include "tensor/cuda/check.h"

namespace longnet::cuda::detail {

namespace {

using namespace tensor_core;

constexpr int kForwardKeys = 64;  // keys per step of the forward
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

// Starts copying `rows` compact rows of one head (the first at position pos, then every r)
// into a shared tile of kRows rows of kD + kPad bf16s; rows beyond the data are zeros, so
// that no garbage (NaN) reaches a product.
template <int kRows, int kD>
__device__ __forceinline__ void load_tile(bf16* tile, const Operand& op, std::int64_t batch,
                                          int head, std::int64_t pos, std::int64_t r,
                                          std::int64_t rows) {
  constexpr int kChunks = kD / 8;
  const bf16* base = static_cast<const bf16*>(op.data) + batch * op.sb + pos * op.sn + head * op.sh;
  const std::int64_t stride = r * op.sn;
#pragma unroll
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int row = i / kChunks;
    const int c = i % kChunks;
    const bool valid = row < rows;
    copy16(tile + row * (kD + kPad) + 8 * c, valid ? base + row * stride + 8 * c : base, valid);
  }
}

template <int kD>
constexpr std::size_t forward_shared_bytes() {
  return sizeof(bf16) * (kMmaQueryTile + 4 * kForwardKeys) * (kD + kPad);
}

// Forward of one branch for one query tile. O is the type out is kept in: bf16 when this
// launch writes final values, f32 when the branches merge into it.
// 167 registers for D <= 64 (3 blocks a multiprocessor), 220 for D = 128 (2).
template <class O, int kD>
__global__ void __launch_bounds__(kThreads, kD == 128 ? 2 : 3)
    forward_kernel(Operand q, Operand k, Operand v, O* out, float* lse, Problem p, Launch launch) {
  constexpr int kRow = kD + kPad;
  constexpr int kRows = kMmaQueryTile;
  constexpr int kKeys = kForwardKeys;
  extern __shared__ uint4 shared[];
  bf16* qs = reinterpret_cast<bf16*>(shared);
  bf16* ks = qs + kRows * kRow;      // two stages
  bf16* vs = ks + 2 * kKeys * kRow;  // two stages

  const int head = launch.head_begin + static_cast<int>(blockIdx.y);
  const Branch br = branch_of(launch, head);
  if (blockIdx.x >= br.segments * br.tiles) return;
  const std::int64_t batch = blockIdx.z;
  const Segment s = locate(p, br, head, /*reverse=*/true);
  const std::int64_t a0 = static_cast<std::int64_t>(s.tile) * kRows;
  if (a0 >= s.nq || s.nk == 0) return;
  if (!br.merge) wait_for_previous_launch();
  let_next_launch_start();
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4;
  const int t = lane % 4;
  const std::int64_t warp_row = a0 + 16 * warp;  // this warp's rows: warp_row + g (+ 8)

  // Under the causal mask compact query row a sees compact keys 0..a of its segment.
  const std::int64_t key_end = p.causal ? std::min<std::int64_t>(s.nk, a0 + kRows) : s.nk;
  const int steps = static_cast<int>((key_end + kKeys - 1) / kKeys);
  load_tile<kRows, kD>(qs, q, batch, head, s.first + a0 * br.r, br.r, s.nq - a0);
  load_tile<kKeys, kD>(ks, k, batch, head, s.first, br.r, s.nk);
  load_tile<kKeys, kD>(vs, v, batch, head, s.first, br.r, s.nk);
  commit_copies();

  std::uint32_t qf[kD / 16][4];
  float o[kD / 8][4] = {};
  float m[2] = {-kInf, -kInf};  // running max of the raw scores of rows g and g + 8
  float l[2] = {0, 0};          // this lane's part of their running sums
  for (int step = 0; step < steps; ++step) {
    wait_copies();
    // Tile `step` is in; every warp is done with tile step - 1, whose stage the next load takes.
    __syncthreads();
    const std::int64_t k0 = static_cast<std::int64_t>(step) * kKeys;
    if (step + 1 < steps) {
      const int next = (step + 1) % 2;
      load_tile<kKeys, kD>(ks + next * kKeys * kRow, k, batch, head, s.first + (k0 + kKeys) * br.r,
                           br.r, s.nk - k0 - kKeys);
      load_tile<kKeys, kD>(vs + next * kKeys * kRow, v, batch, head, s.first + (k0 + kKeys) * br.r,
                           br.r, s.nk - k0 - kKeys);
      commit_copies();
    }
    if (step == 0) {
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        load_matrices(qf[kk], a_address(qs, kRow, 16 * warp, 16 * kk, lane));
      }
    }
    // Under the causal mask the diagonal's last key tile may lie after all of a warp's rows.
    if (p.causal && k0 > warp_row + 15) continue;
    const bf16* kt = ks + (step % 2) * kKeys * kRow;
    const bf16* vt = vs + (step % 2) * kKeys * kRow;

    float sc[kKeys / 8][4] = {};
    add_scores<kKeys, kD>(sc, qf, kt, lane);
    // Keys past the segment's end or (causal) after the row are masked; only tiles at the
    // edges have any.
    const bool edge = k0 + kKeys > s.nk || (p.causal && k0 + kKeys - 1 > warp_row);
    online_softmax<kKeys, kD>(
        sc, m, l, o, p.scale_log2,
        [edge, k0, warp_row, g, t, nk = s.nk, causal = p.causal](float& x, int j, int e) {
          if (edge) {
            const std::int64_t key = k0 + 8 * j + 2 * t + e % 2;
            const std::int64_t row = warp_row + g + 8 * (e / 2);
            if (key >= nk || (causal && key > row)) x = -kInf;
          }
        });
    add_pv<kKeys, kD>(o, sc, vt, lane);
  }

  if (br.merge) wait_for_previous_launch();
  // Merging: every lane of a row reads the earlier lse before the row's first lane writes it.
  float lse_old[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const std::int64_t row = warp_row + g + 8 * i;
    const std::int64_t lse_index = (batch * p.heads + head) * p.nq + s.first + row * br.r;
    lse_old[i] = br.merge && row < s.nq ? lse[lse_index] : -kInf;
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const std::int64_t row = warp_row + g + 8 * i;
    if (row >= s.nq) continue;
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

template <int kD>
constexpr std::size_t backward_shared_bytes() {
  constexpr int kKeys = kMmaKeyTile;
  constexpr int kRows = backward_rows(kD);
  return sizeof(bf16) * ((2 * kKeys + 4 * kRows) * (kD + kPad) + kKeys * (kRows + kPad)) +
         sizeof(float) * 4 * kRows;
}

// Backward of one branch for one key tile: dk and dv of the tile's keys in registers over all
// query tiles that see them, dq added atomically per query tile. P is recomputed from the
// saved lse; dS = P (dO' . v - Dp) with dO' = out_scale dO. G is the type of dk and dv:
// f32 accumulates into earlier branches, bf16 is written.
// 168 registers for D <= 64 (3 blocks a multiprocessor), 249 for D = 128 (2).
template <class G, int kD>
__global__ void __launch_bounds__(kThreads, kD == 128 ? 1 : 3)
    backward_kernel(Operand q, Operand k, Operand v, Operand dout, const float* lse,
                    const float* dp, float* dq, G* dk, G* dv, Problem p, Launch launch) {
  constexpr int kRow = kD + kPad;
  constexpr int kKeys = kMmaKeyTile;
  constexpr int kRows = backward_rows(kD);
  constexpr int kSRow = kRows + kPad;
  extern __shared__ uint4 shared[];
  bf16* ks = reinterpret_cast<bf16*>(shared);
  bf16* vs = ks + kKeys * kRow;
  bf16* qs = vs + kKeys * kRow;                                    // two stages
  bf16* dos = qs + 2 * kRows * kRow;                               // two stages
  bf16* dst_s = dos + 2 * kRows * kRow;                            // dS^T [key][query]
  float* lse_s = reinterpret_cast<float*>(dst_s + kKeys * kSRow);  // two stages
  float* dp_s = lse_s + 2 * kRows;                                 // two stages

  const int head = launch.head_begin + static_cast<int>(blockIdx.y);
  const Branch br = branch_of(launch, head);
  if (blockIdx.x >= br.segments * br.tiles) return;
  const std::int64_t batch = blockIdx.z;
  const Segment s = locate(p, br, head, /*reverse=*/false);
  const std::int64_t k0 = static_cast<std::int64_t>(s.tile) * kKeys;
  // Query tiles before the key tile see none of its keys under the causal mask; keys no query
  // sees keep dk = dv = 0 (the caller zeroed them).
  const std::int64_t a_begin = p.causal ? k0 / kRows * kRows : 0;
  if (k0 >= s.nk || a_begin >= s.nq) return;
  // dq takes atomic additions at any time; dk and dv are read and written at the end.
  if (!br.merge) wait_for_previous_launch();
  let_next_launch_start();
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4;
  const int t = lane % 4;
  const std::int64_t warp_key = k0 + 16 * warp;  // this warp's keys: warp_key + g (+ 8)
  const float* lse_h = lse + (batch * p.heads + head) * p.nq;
  const float* dp_h = dp + (batch * p.heads + head) * p.nq;

  auto load_queries = [&](int stage, std::int64_t a0) {
    const std::int64_t pos = s.first + a0 * br.r;
    load_tile<kRows, kD>(qs + stage * kRows * kRow, q, batch, head, pos, br.r, s.nq - a0);
    load_tile<kRows, kD>(dos + stage * kRows * kRow, dout, batch, head, pos, br.r, s.nq - a0);
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
  load_tile<kKeys, kD>(ks, k, batch, head, s.first + k0 * br.r, br.r, s.nk - k0);
  load_tile<kKeys, kD>(vs, v, batch, head, s.first + k0 * br.r, br.r, s.nk - k0);
  load_queries(0, a_begin);

  float dk_acc[kD / 8][4] = {};
  float dv_acc[kD / 8][4] = {};
  int stage = 0;
  for (std::int64_t a0 = a_begin; a0 < s.nq; a0 += kRows, stage ^= 1) {
    wait_copies();
    // This tile is in; every warp is done with the last one (its stage and dS^T).
    __syncthreads();
    if (a0 + kRows < s.nq) load_queries(stage ^ 1, a0 + kRows);
    const bf16* qt = qs + stage * kRows * kRow;
    const bf16* dot = dos + stage * kRows * kRow;
    const float* lse_t = lse_s + stage * kRows;
    const float* dp_t = dp_s + stage * kRows;

    if (p.causal && warp_key > a0 + kRows - 1) {
      // All of this warp's keys lie after the tile's queries: its rows of dS^T are 0.
      zero_ds_rows<kRows>(dst_s, warp, lane);
    } else {
      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
      float st[kRows / 8][4] = {};
      float dpt[kRows / 8][4] = {};
      add_transposed_scores<kRows, kD>(st, dpt, ks, vs, qt, dot, warp, lane);

      // P^T and dS^T; pairs past the ends or (causal) with the key after the query are 0.
      const bool edge = a0 + kRows > s.nq || k0 + kKeys > s.nk || (p.causal && warp_key + 15 > a0);
#pragma unroll
      for (int j = 0; j < kRows / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * j + 2 * t + e % 2;
          bool seen = true;
          if (edge) {
            const std::int64_t query = a0 + col;
            const std::int64_t key = warp_key + g + 8 * (e / 2);
            seen = query < s.nq && key < s.nk && (!p.causal || key <= query);
          }
          const float pv =
              seen ? exp2_fast(fmaf(st[j][e], p.scale_log2, -lse_t[col] * kLog2e)) : 0.f;
          st[j][e] = pv;
          dpt[j][e] = pv * (dpt[j][e] * br.out_scale - dp_t[col]);
        }
      }

      // dV += P^T dO and dK += dS^T Q; dS^T to shared memory for dQ.
      add_dv_dk<kRows, kD>(dv_acc, dk_acc, st, dpt, dst_s, qt, dot, warp, lane);
    }
    __syncthreads();

    // dQ = dS K: warp w takes 16 query rows and a column range.
    using Split = DqSplit<kRows, kD>;
    constexpr int kCols = Split::kCols;
    const int row0 = Split::row0(warp);
    const int col0 = Split::col0(warp);
    float dq_acc[kCols / 8][4] = {};
    add_dq<kRows, kD>(dq_acc, dst_s, ks, warp, lane);
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

  if (br.merge) wait_for_previous_launch();
    // Within one launch a key belongs to one block, and launches run in order on one stream:
    // a plain read-modify-write accumulates the branches.
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
        const float2 ko = *dk2;
        const float2 vo = *dv2;
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
void launch_mma(void (*kernel)(Params...), dim3 grid, std::size_t shared, cudaStream_t stream,
                auto... args) {
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
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = &overlap;
  config.numAttrs = major >= 9 ? 1 : 0;
  LN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

}  // namespace

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
    if (out_f32) {
      launch_mma(forward_kernel<float, kD>, grid, forward_shared_bytes<kD>(), stream, q, k, v,
                 static_cast<float*>(out), lse, p, l);
    } else {
      launch_mma(forward_kernel<bf16, kD>, grid, forward_shared_bytes<kD>(), stream, q, k, v,
                 static_cast<bf16*>(out), lse, p, l);
    }
  });
}

void mma_backward(const Problem& p, const Launch& l, dim3 grid, Operand q, Operand k, Operand v,
                  Operand dout, const float* lse, const float* dp, float* dq, void* dk, void* dv,
                  bool grads_f32, cudaStream_t stream) {
  with_head_dim(p.d, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    if (grads_f32) {
      launch_mma(backward_kernel<float, kD>, grid, backward_shared_bytes<kD>(), stream, q, k, v,
                 dout, lse, dp, dq, static_cast<float*>(dk), static_cast<float*>(dv), p, l);
    } else {
      launch_mma(backward_kernel<bf16, kD>, grid, backward_shared_bytes<kD>(), stream, q, k, v,
                 dout, lse, dp, dq, static_cast<bf16*>(dk), static_cast<bf16*>(dv), p, l);
    }
  });
}

}  // namespace longnet::cuda::detail
