// Warpgroup matrix multiply (wgmma.mma_async, sm_90a) for the attention kernels of
// attention/cuda/dilated_mma.cu: a warpgroup (4 consecutive warps, 128 threads) computes a
// 64 x 64 (or 64 x 128) f32 accumulator from a 64 x 16 A (registers or shared memory) and a
// 16 x 64 (16 x 128) B (shared memory), 16 values of the reduction (k) a step. Warp w of the group
// holds rows 16 w..16 w + 15 of the accumulator in the layout of mma.sync m16n8k16's accumulators,
// one per 8 columns (acc[j][e]: row g + 8 (e / 2), column 8 j + 2 t + e % 2 with (g, t) = (lane /
// 4, lane % 4)), and an A from registers in the layout of mma.sync's A fragment, so the online
// softmax and the fragment packing of attention/cuda/mma.cuh apply unchanged.
//
// Shared tiles are rows of 64 bf16s (128 bytes) with the 128-byte swizzle: 16-byte chunk c of
// row r sits at chunk c ^ (r % 8). A tile starts on a 1024-byte boundary (the swizzle's
// period). The same tile serves as a K-major operand (its rows are the M or N index, the
// reduction runs along a row: a k step advances 32 bytes) and as an MN-major one (its rows are
// the reduction index: a k step advances 16 rows, 2048 bytes); 8-row groups are 1024 bytes
// apart either way.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/mma.cuh"

namespace longnet::cuda::wgmma {

using tensor_core::bf16;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LONGNET_WGMMA 1
#endif

constexpr int kRowBytes = 128;    // a swizzled row: 64 bf16s
constexpr int kAlignment = 1024;  // the swizzle's period: 8 rows

// Byte offset of (row, column) in a swizzled tile.
__device__ __forceinline__ int swizzled(int row, int col) {
  return row * kRowBytes + (((col / 8) ^ (row % 8)) * 16) + (col % 8) * 2;
}

// A shared-memory matrix descriptor for a swizzled tile from p: 8-row groups 1024 bytes
// apart (the stride byte offset); the leading byte offset is unused with this swizzle.
__device__ __forceinline__ std::uint64_t descriptor(const void* p) {
  const std::uint32_t address = tensor_core::shared_address(p);
  return static_cast<std::uint64_t>((address & 0x3FFFF) >> 4) |
         (static_cast<std::uint64_t>(1) << 16) |                // leading byte offset (unused)
         (static_cast<std::uint64_t>(kAlignment >> 4) << 32) |  // stride byte offset
         (static_cast<std::uint64_t>(1) << 62);                 // 128-byte swizzle
}

// Orders this thread's earlier shared-memory writes (stores, completed cp.async) before the
// tensor cores' reads of them; a barrier after it makes that hold for every writer.
__device__ __forceinline__ void fence_shared_for_tensor_cores() {
#ifdef LONGNET_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Pins the accumulators in place: the compiler sees them read and written here, so their
// writes before (zeroing, rescaling) stay before a batch and their reads after its wait stay
// after it (else it may move them across and ptxas then waits early, C7517).
template <int kN>
__device__ __forceinline__ void fence_operands(float (&d)[kN][4]) {
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
  }
}

// Before the first wgmma of a batch: earlier register writes (accumulators, A fragments)
// are complete.
__device__ __forceinline__ void fence() {
#ifdef LONGNET_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
// Closes the batch issued since the last commit and waits until every batch is done.
__device__ __forceinline__ void commit_and_wait() {
#ifdef LONGNET_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}

#define LONGNET_WGMMA_ACC                                                                       \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),     \
      "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), \
      "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), \
      "+f"(d[7][2]), "+f"(d[7][3])
#define LONGNET_WGMMA_D                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// d += A B, 64 x 64 x 16: A from registers (this warp's 16 rows as an mma.sync A fragment),
// B from the descriptor; kTransposeB: B's tile rows are k (MN-major), else n (K-major).
template <int kTransposeB>
__device__ __forceinline__ void mma(float (&d)[8][4], const std::uint32_t (&a)[4],
                                    std::uint64_t b) {
#ifdef LONGNET_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LONGNET_WGMMA_D
      ", {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
      : LONGNET_WGMMA_ACC
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kTransposeB));
#endif
}

// d += A B, 64 x 64 x 16, A and B from descriptors; kTransposeA: A's tile rows are k
// (M-major), else m.
template <int kTransposeA, int kTransposeB>
__device__ __forceinline__ void mma(float (&d)[8][4], std::uint64_t a, std::uint64_t b) {
#ifdef LONGNET_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LONGNET_WGMMA_D
      ", %32, %33, p, 1, 1, %34, %35;\n}\n"
      : LONGNET_WGMMA_ACC
      : "l"(a), "l"(b), "n"(kTransposeA), "n"(kTransposeB));
#endif
}

// The first 32 accumulators as LONGNET_WGMMA_ACC, then d[8..15].
#define LONGNET_WGMMA_ACC128                                                                       \
  LONGNET_WGMMA_ACC, "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]),    \
      "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), \
      "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),              \
      "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]),              \
      "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]),              \
      "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]),              \
      "+f"(d[15][3])

#define LONGNET_WGMMA_D128                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "  \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "  \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d += A B, 64 x 128 x 16, A and B from descriptors, both K-major.
template <int kTransposeA, int kTransposeB>
__device__ __forceinline__ void mma(float (&d)[16][4], std::uint64_t a, std::uint64_t b) {
  static_assert(kTransposeA == 0 && kTransposeB == 0);
#ifdef LONGNET_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LONGNET_WGMMA_D128
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : LONGNET_WGMMA_ACC128
      : "l"(a), "l"(b));
#endif
}

#undef LONGNET_WGMMA_ACC
#undef LONGNET_WGMMA_ACC128
#undef LONGNET_WGMMA_D
#undef LONGNET_WGMMA_D128

// A of the 16 k values from k0 out of a row-major 16 x 64 register tile of f32 accumulators
// (this warp's rows): the accumulators of columns k0.. and k0 + 8.., as bf16s.
template <int kN>
__device__ __forceinline__ void pack_a(std::uint32_t (&a)[4], const float (&acc)[kN][4], int k0) {
  const int j = k0 / 8;
  a[0] = tensor_core::pack(acc[j][0], acc[j][1]);
  a[1] = tensor_core::pack(acc[j][2], acc[j][3]);
  a[2] = tensor_core::pack(acc[j + 1][0], acc[j + 1][1]);
  a[3] = tensor_core::pack(acc[j + 1][2], acc[j + 1][3]);
}

}  // namespace longnet::cuda::wgmma
