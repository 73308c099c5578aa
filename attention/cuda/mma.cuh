// What the tensor-core (mma.sync m16n8k16, bf16 products, f32 accumulation) flash-attention
// kernels share: attention/cuda/dilated_mma.cu (dense and dilated attention) and
// attention/cuda/block_sparse.cu. A block runs kWarps warps; every warp owns 16 rows of the
// products it accumulates. Tiles sit in shared memory as rows of kD + kPad bf16s, reached by
// 16-byte cp.async and read by ldmatrix; the padding puts the 8 rows one ldmatrix reads in
// distinct bank groups.
//
// The warp-level pieces below are the steps of FlashAttention-2: the forward's scores, online
// softmax and P V; the backward's transposed scores S^T = K Q^T and dP^T = V dO^T,
// dV += P^T dO and dK += dS^T Q, and dQ = dS K. The kernels supply what differs: which rows
// they load and which (query, key) pairs are masked (the forward through online_softmax's
// mask, the backward in its own step from S^T and dP^T to P^T and dS^T).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

namespace longnet::cuda::tensor_core {

using bf16 = __nv_bfloat16;

constexpr int kPad = 8;    // bf16s of padding per shared row (16 bytes)
constexpr int kWarps = 4;  // a block: 16 rows of its products per warp
constexpr int kThreads = 32 * kWarps;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kLog2e = 1.4426950408889634f;

// 2^x (MUFU.EX2, subnormal results flushed to 0; exp2f adds a rescaling for those).
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zeros when !valid (src is then not read).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void copy4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_address(dst)),
               "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void load_matrices(std::uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}
__device__ __forceinline__ void load_matrices_transposed(std::uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// c += a b for a 16x16 A (row major) and a 16x8 B (column major).
__device__ __forceinline__ void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                    std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int kN>
__device__ __forceinline__ void zero(float (&acc)[kN][4]) {
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
  }
}

// Two floats as bf16s, lo in the low half (the lower column of a fragment).
__device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&v);
}

// Fragment addresses of one lane (PTX ISA, "warp-level matrix fragment"). In an accumulator
// (16 x 8 tile j) lane (g, t) = (lane / 4, lane % 4) holds rows g and g + 8, columns
// 8 j + 2 t and 8 j + 2 t + 1, elements e = 0..3 at (row g + 8 (e / 2), column 2 t + e % 2).
//
// A operand, 16 rows x 16 k, from a row-major [row][k] tile at (row0, k0).
__device__ __forceinline__ const bf16* a_address(const bf16* tile, int row_len, int row0, int k0,
                                                 int lane) {
  return tile + (row0 + lane % 8 + 8 * (lane / 8 % 2)) * row_len + k0 + 8 * (lane / 16);
}
// A operand from the transpose: tile is [k][row] (ldmatrix .trans).
__device__ __forceinline__ const bf16* a_address_transposed(const bf16* tile, int row_len, int row0,
                                                            int k0, int lane) {
  return tile + (k0 + lane % 8 + 8 * (lane / 16)) * row_len + row0 + 8 * (lane / 8 % 2);
}
// B operands of two 8-column tiles (n0.., n0 + 8..) x 16 k from an [n][k] tile: registers
// 0, 1 are the first tile's, 2, 3 the second's.
__device__ __forceinline__ const bf16* b_address(const bf16* tile, int row_len, int n0, int k0,
                                                 int lane) {
  return tile + (n0 + lane % 8 + 8 * (lane / 16)) * row_len + k0 + 8 * (lane / 8 % 2);
}
// The same from a [k][n] tile (ldmatrix .trans).
__device__ __forceinline__ const bf16* b_address_transposed(const bf16* tile, int row_len, int n0,
                                                            int k0, int lane) {
  return tile + (k0 + lane % 8 + 8 * (lane / 8 % 2)) * row_len + n0 + 8 * (lane / 16);
}

// ---- forward: one warp, 16 query rows, a tile of kKeys keys ----

// sc += Q K^T: qf holds the warp's query rows as A fragments, kt the key tile [key][kD].
template <int kKeys, int kD>
__device__ __forceinline__ void add_scores(float (&sc)[kKeys / 8][4],
                                           const std::uint32_t (&qf)[kD / 16][4], const bf16* kt,
                                           int lane) {
  constexpr int kRow = kD + kPad;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
    for (int jj = 0; jj < kKeys / 16; ++jj) {
      std::uint32_t b[4];
      load_matrices(b, b_address(kt, kRow, 16 * jj, 16 * kk, lane));
      mma(sc[2 * jj], qf[kk], b[0], b[1]);
      mma(sc[2 * jj + 1], qf[kk], b[2], b[3]);
    }
  }
}

// One step of the online softmax over a tile of raw scores sc. Where the tile has masked
// pairs (edge, the same for the whole warp), mask(x, j, e) sets element e of accumulator j,
// x, to -inf where that pair is masked; tiles inside the visible region skip that pass. m is
// the running max of the raw scores of rows g and g + 8, l this lane's part of their running
// sums, o their outputs; m, l and o are rescaled to the new max and sc becomes
// exp(scale (sc - m)), added to l. The scale is positive (validated), so the max is taken on
// raw scores and the scale folds into one fma with the exponent's shift.
template <int kKeys, int kD, class Mask>
__device__ __forceinline__ void online_softmax(float (&sc)[kKeys / 8][4], float (&m)[2],
                                               float (&l)[2], float (&o)[kD / 8][4],
                                               float scale_log2, bool edge, Mask mask) {
  if (edge) {
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) mask(sc[j][e], j, e);
    }
  }
  float top[2] = {m[0], m[1]};
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) top[e / 2] = fmaxf(top[e / 2], sc[j][e]);
  }
  float shift[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    top[i] = fmaxf(top[i], __shfl_xor_sync(0xffffffffu, top[i], 1));
    top[i] = fmaxf(top[i], __shfl_xor_sync(0xffffffffu, top[i], 2));
    // A row that has seen no key yet keeps exp2(-inf - 0) = 0 everywhere instead of NaN.
    shift[i] = top[i] == -kInf ? 0.f : top[i] * scale_log2;
    const float alpha = exp2_fast(fmaf(m[i], scale_log2, -shift[i]));
    m[i] = top[i];
    l[i] *= alpha;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      o[j][2 * i] *= alpha;
      o[j][2 * i + 1] *= alpha;
    }
  }
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      sc[j][e] = exp2_fast(fmaf(sc[j][e], scale_log2, -shift[e / 2]));
      l[e / 2] += sc[j][e];
    }
  }
}

// o += P V: the score accumulators of keys 16 kk.. are the A fragment as they stand; vt is the
// value tile [key][kD].
template <int kKeys, int kD>
__device__ __forceinline__ void add_pv(float (&o)[kD / 8][4], const float (&sc)[kKeys / 8][4],
                                       const bf16* vt, int lane) {
  constexpr int kRow = kD + kPad;
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    const std::uint32_t a[4] = {
        pack(sc[2 * kk][0], sc[2 * kk][1]), pack(sc[2 * kk][2], sc[2 * kk][3]),
        pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]), pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
    for (int nn = 0; nn < kD / 16; ++nn) {
      std::uint32_t b[4];
      load_matrices_transposed(b, b_address_transposed(vt, kRow, 16 * nn, 16 * kk, lane));
      mma(o[2 * nn], a, b[0], b[1]);
      mma(o[2 * nn + 1], a, b[2], b[3]);
    }
  }
}

// ---- backward: warp w owns keys 16 w.. of a 64-key tile, against kRows query rows ----

// st += S^T = K Q^T and dpt += dP^T = V dO^T for the warp's 16 keys: ks and vs are the key
// and value tiles, qt and dot the query and output-gradient tiles, all [row][kD].
template <int kRows, int kD>
__device__ __forceinline__ void add_transposed_scores(float (&st)[kRows / 8][4],
                                                      float (&dpt)[kRows / 8][4], const bf16* ks,
                                                      const bf16* vs, const bf16* qt,
                                                      const bf16* dot, int warp, int lane) {
  constexpr int kRow = kD + kPad;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    std::uint32_t ka[4];
    std::uint32_t va[4];
    load_matrices(ka, a_address(ks, kRow, 16 * warp, 16 * kk, lane));
    load_matrices(va, a_address(vs, kRow, 16 * warp, 16 * kk, lane));
#pragma unroll
    for (int jj = 0; jj < kRows / 16; ++jj) {
      std::uint32_t b[4];
      load_matrices(b, b_address(qt, kRow, 16 * jj, 16 * kk, lane));
      mma(st[2 * jj], ka, b[0], b[1]);
      mma(st[2 * jj + 1], ka, b[2], b[3]);
      load_matrices(b, b_address(dot, kRow, 16 * jj, 16 * kk, lane));
      mma(dpt[2 * jj], va, b[0], b[1]);
      mma(dpt[2 * jj + 1], va, b[2], b[3]);
    }
  }
}

// P^T and dS^T in place of S^T (st) and dP^T (dpt) for the warp's 16 keys against kRows
// queries with their lse and Dp (lse_t, dp_t): P^T = exp(scale S^T - lse),
// dS^T = P^T (out_scale dP^T - Dp). Where the tile has masked pairs (edge, the same for the
// whole warp), seen(col, e) says whether element e of accumulator tile (column col) is a
// visible pair; the others are 0.
template <int kRows, class Seen>
__device__ __forceinline__ void transposed_probabilities(float (&st)[kRows / 8][4],
                                                         float (&dpt)[kRows / 8][4],
                                                         const float* lse_t, const float* dp_t,
                                                         float scale_log2, float out_scale,
                                                         int lane, bool edge, Seen seen) {
  const int t = lane % 4;
  auto apply = [&](auto masked) {
#pragma unroll
    for (int j = 0; j < kRows / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * t + e % 2;
        bool visible = true;
        if constexpr (decltype(masked)::value) visible = seen(col, e);
        const float pv =
            visible ? exp2_fast(fmaf(st[j][e], scale_log2, -lse_t[col] * kLog2e)) : 0.f;
        st[j][e] = pv;
        dpt[j][e] = pv * (dpt[j][e] * out_scale - dp_t[col]);
      }
    }
  };
  if (edge) {
    apply(std::true_type{});
  } else {
    apply(std::false_type{});
  }
}

// dV += P^T dO and dK += dS^T Q for the warp's 16 keys; dS^T also goes to the warp's rows of
// ds_t ([key][query], rows of kRows + kPad) for dQ.
template <int kRows, int kD>
__device__ __forceinline__ void add_dv_dk(float (&dv_acc)[kD / 8][4], float (&dk_acc)[kD / 8][4],
                                          const float (&st)[kRows / 8][4],
                                          const float (&dpt)[kRows / 8][4], bf16* ds_t,
                                          const bf16* qt, const bf16* dot, int warp, int lane) {
  constexpr int kRow = kD + kPad;
  constexpr int kSRow = kRows + kPad;
  const int g = lane / 4;
  const int t = lane % 4;
#pragma unroll
  for (int kk = 0; kk < kRows / 16; ++kk) {
    const std::uint32_t pa[4] = {
        pack(st[2 * kk][0], st[2 * kk][1]), pack(st[2 * kk][2], st[2 * kk][3]),
        pack(st[2 * kk + 1][0], st[2 * kk + 1][1]), pack(st[2 * kk + 1][2], st[2 * kk + 1][3])};
    const std::uint32_t sa[4] = {
        pack(dpt[2 * kk][0], dpt[2 * kk][1]), pack(dpt[2 * kk][2], dpt[2 * kk][3]),
        pack(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]), pack(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
    std::uint32_t* ds_row =
        reinterpret_cast<std::uint32_t*>(ds_t + (16 * warp + g) * kSRow + 16 * kk + 2 * t);
    ds_row[0] = sa[0];
    ds_row[8 * kSRow / 2] = sa[1];
    ds_row[4] = sa[2];
    ds_row[8 * kSRow / 2 + 4] = sa[3];
#pragma unroll
    for (int nn = 0; nn < kD / 16; ++nn) {
      std::uint32_t b[4];
      load_matrices_transposed(b, b_address_transposed(dot, kRow, 16 * nn, 16 * kk, lane));
      mma(dv_acc[2 * nn], pa, b[0], b[1]);
      mma(dv_acc[2 * nn + 1], pa, b[2], b[3]);
      load_matrices_transposed(b, b_address_transposed(qt, kRow, 16 * nn, 16 * kk, lane));
      mma(dk_acc[2 * nn], sa, b[0], b[1]);
      mma(dk_acc[2 * nn + 1], sa, b[2], b[3]);
    }
  }
}

// The warp's rows of dS^T are 0 (none of its keys is seen by the tile's queries).
template <int kRows>
__device__ __forceinline__ void zero_ds_rows(bf16* ds_t, int warp, int lane) {
  constexpr int kSRow = kRows + kPad;
  for (int i = lane; i < 8 * kRows; i += 32) {
    std::uint32_t* row =
        reinterpret_cast<std::uint32_t*>(ds_t + (16 * warp + i / (kRows / 2)) * kSRow);
    row[i % (kRows / 2)] = 0;
  }
}

// dQ = dS K for a tile of kRows queries and the 64 keys of ks (dS^T in ds_t): warp w takes 16
// query rows from DqSplit::row0(w) and DqSplit::kCols columns from DqSplit::col0(w).
template <int kRows, int kD>
struct DqSplit {
  static constexpr int kRowGroups = kRows / 16;
  static constexpr int kCols = kD / (kWarps / kRowGroups);
  static __device__ __forceinline__ int row0(int warp) { return 16 * (warp % kRowGroups); }
  static __device__ __forceinline__ int col0(int warp) { return kCols * (warp / kRowGroups); }
};

template <int kRows, int kD>
__device__ __forceinline__ void add_dq(float (&dq_acc)[DqSplit<kRows, kD>::kCols / 8][4],
                                       const bf16* ds_t, const bf16* ks, int warp, int lane) {
  using Split = DqSplit<kRows, kD>;
  constexpr int kRow = kD + kPad;
  constexpr int kSRow = kRows + kPad;
  constexpr int kKeys = 16 * kWarps;
  const int row0 = Split::row0(warp);
  const int col0 = Split::col0(warp);
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    std::uint32_t a[4];
    load_matrices_transposed(a, a_address_transposed(ds_t, kSRow, row0, 16 * kk, lane));
#pragma unroll
    for (int nn = 0; nn < Split::kCols / 16; ++nn) {
      std::uint32_t b[4];
      load_matrices_transposed(b, b_address_transposed(ks, kRow, col0 + 16 * nn, 16 * kk, lane));
      mma(dq_acc[2 * nn], a, b[0], b[1]);
      mma(dq_acc[2 * nn + 1], a, b[2], b[3]);
    }
  }
}

// Calls f with the head dim (32, 64 or 128) as a constant.
template <class F>
void with_head_dim(std::int64_t d, F f) {
  if (d == 32) return f(std::integral_constant<int, 32>{});
  if (d == 64) return f(std::integral_constant<int, 64>{});
  return f(std::integral_constant<int, 128>{});
}

}  // namespace longnet::cuda::tensor_core
