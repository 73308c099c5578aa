// Block-sparse attention on a CUDA device (DESIGN.md section 6, the semantics of
// attention/block_sparse.h): flash-attention kernels on tensor cores (attention/cuda/mma.cuh)
// that visit only the key blocks the pattern keeps. Memory is O(N): the forward keeps out and
// lse per query row, the backward recomputes the probabilities from them.
//
// The pattern becomes, per (batch, head), a list of key blocks for every query block (CSR:
// offsets and block indices, sorted) and its transpose, the query blocks that keep each key
// block. The three fixed patterns build both on the host once per (pattern, Nq, Nk,
// block_size, density, global_blocks, causal, device) and keep them on the device (a few
// recent configurations are cached); content_adaptive selects its blocks on the device from
// mean-pooled q and k in every call, exactly as the CPU does (same sums in the same order,
// same ties), so that both keep the same blocks.
//
// Forward: a block of 4 warps owns 64 query rows of one query block and walks the keys of the
// kept blocks, concatenated, 64 at a time with an online softmax. Backward: a block owns 64
// keys of one key block, keeps their dk and dv in registers over the query blocks of the
// transposed list (deterministic) and adds dq = dS K to an f32 buffer by atomics (the last bits
// of dq can differ between runs). A 64-row tile never crosses a block, so block sizes that are
// multiples of 64 fill every tile; others leave part of the last tile of each block idle.
//
// Inputs are validated by the caller (attention/block_sparse.cpp): q (B, Nq, H, D),
// k (B, Nk, H, D), v (B, Nk, H, D), bf16 on one device, D in {32, 64, 128}, any strides whose
// last is 1 (rows that are not 16-byte aligned are copied first). These functions write every
// element of their outputs.
#pragma once

#include "attention/block_sparse.h"

namespace longnet::cuda {

// Whether the kernels take a head dim (q's and v's alike).
constexpr bool block_sparse_head_dim_supported(std::int64_t d) {
  return d == 32 || d == 64 || d == 128;
}

// Fills out (B, Nq, H, D), contiguous bf16, and lse (B, H, Nq), contiguous f32 (-inf for
// queries whose block keeps no key block). scale multiplies q.k.
void block_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const BlockSparseConfig& config, double scale,
                                    const Tensor& out, const Tensor& lse);

// From the forward's out and lse and the output gradient dout (bf16, the shape of out, last
// stride 1), fills dq, dk and dv: contiguous bf16, the shapes of q, k and v.
void block_sparse_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const BlockSparseConfig& config, double scale,
                                     const Tensor& dq, const Tensor& dk, const Tensor& dv);

}  // namespace longnet::cuda
