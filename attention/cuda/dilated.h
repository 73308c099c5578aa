// Dilated attention on a CUDA device (DESIGN.md section 5, "Fused GPU kernel"), dense
// attention being its one-branch case. Each branch is one flash-attention pass over the
// compact rows of every segment: compact row t of a segment starting at t0 is position
// t0 + j + t*r, read in place by index arithmetic (no gather copy). Scores live only in
// registers and shared memory, so memory is O(N): the forward keeps out and lse per query
// row, the backward recomputes the probabilities tile by tile from them.
//
// Paper mode runs the branches in turn, each merging its (out, lse) into the running pair,
// which is the one softmax over the union of the branches' keys; grouped mode runs each
// group's branch on its heads only.
//
// bf16 with D == Dv in {32, 64, 128} and 16-byte aligned rows of inputs and outputs (aligned
// base, strides multiples of 8 elements; a dim of size 1 has no stride to check) runs on
// tensor cores (f32 accumulation: wgmma on compute capability 9.0, H100 and H200, for D = 64
// where the build has sm_90a code, else mma.sync); everything else on CUDA cores in f32. On
// tensor cores dq is summed by f32 atomics, so its last bits can differ between runs; out,
// lse, dk and dv are deterministic. Inputs are validated by the caller
// (attention/dilated.cpp); these functions write every element of their outputs.
#pragma once

#include "attention/dilated.h"

namespace longnet::cuda {

// The largest head dim (of q/k and of v) the kernels take.
constexpr std::int64_t kMaxAttentionHeadDim = 128;

// q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv): one CUDA device, one dtype (f32 or
// bf16), any strides whose last is 1; D, Dv <= kMaxAttentionHeadDim. Fills out
// (B, Nq, H, Dv), contiguous, q's dtype or f32 (rounded once, at the end), and lse
// (B, H, Nq), contiguous f32 (-inf where no branch selects the query). scale multiplies q.k.
void dilated_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                               const DilatedAttentionConfig& config, double scale,
                               const Tensor& out, const Tensor& lse);

// Whether q, k and v (and dout, when defined) take the tensor-core kernels.
bool dilated_attention_on_tensor_cores(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& dout = Tensor());

// The kernels that dense and dilated attention of q, k and v run on their device: "wgmma"
// or "mma.sync" (tensor cores) or "cuda cores". LONGNET_NO_WGMMA in the environment turns
// wgmma off (the mma.sync kernels run instead).
const char* dilated_attention_kernels(const Tensor& q, const Tensor& k, const Tensor& v);

// From the forward's out and lse and the output gradient dout (q's dtype and shape of out,
// last stride 1), fills dq, dk and dv: contiguous, the shapes of q, k and v, all three in
// the inputs' dtype or all three f32. out_scale: out is that times the attention's output
// (see attention/dilated.h).
void dilated_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const Tensor& lse, const Tensor& dout,
                                const DilatedAttentionConfig& config, double scale,
                                double out_scale, const Tensor& dq, const Tensor& dk,
                                const Tensor& dv);

}  // namespace longnet::cuda
