// Dilated attention (LongNet), exactly as DESIGN.md section 5 defines it, and dense
// attention as its one-branch special case.
//
// q (B, Nq, H, D), k and v (B, Nk, H, D) [v may have its own last dim Dv], one floating
// dtype on one device (CPU: f32/f64/bf16; CUDA: f32/bf16, D <= 128); the output is (B, Nq, H, Dv).
// Segments of branch b cover positions [s*w_b, min((s+1)*w_b, N)) of queries and keys alike; in a
// segment starting at t0, head h selects t0 + j, t0 + j + r_b, ... with j = h mod r_b (paper mode)
// or j = g mod r_g for every head of group g (grouped mode). A selected query attends to the
// selected keys of its segment (and, if causal, only those at or before it).
//
// Paper mode: one softmax over the multiset union of all branches' key sets (a key
// selected twice counts twice); a query no branch selects gets 0 and lse = -inf.
// Grouped mode: heads split into m contiguous groups (sizes floor(H/m), the first H mod m
// one larger); group g uses branch g only; the output is its softmax output at selected
// positions, 0 elsewhere, divided by m.
//
// Memory is O(N) besides one segment's score matrix per thread; nothing N x N is stored.
#pragma once

#include <optional>
#include <vector>

#include "autograd/variable.h"

namespace longnet {

enum class DilatedMode { paper, grouped };

struct DilatedAttentionConfig {
  std::vector<std::int64_t> segment_lengths;
  std::vector<std::int64_t> dilation_rates;
  DilatedMode mode = DilatedMode::paper;
  bool causal = false;
  std::optional<double> scale;  // default 1/sqrt(D)

  // Non-empty lists of equal length, positive values, a finite positive scale; an error
  // names the field and the valid range.
  void validate() const;
};

// The dtype of the forward's out and of the backward's gradients: the inputs' (the default),
// or the one attention computes in (f32 for bf16 inputs), for a caller that combines several
// calls' results and rounds once (sequence-parallel attention).
enum class ResultDtype { input, compute };

struct AttentionOutput {
  Tensor out;  // (B, Nq, H, Dv), q's dtype (or the compute dtype)
  Tensor lse;  // (B, H, Nq) f32 (f64 for f64 inputs): log of each softmax denominator
};

AttentionOutput dilated_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const DilatedAttentionConfig& config,
                                          ResultDtype result = ResultDtype::input);

struct AttentionGrads {
  Tensor dq;
  Tensor dk;
  Tensor dv;
};

// Gradients from the forward's out and lse (DESIGN.md section 5, "Backward"). out_scale:
// out and dout belong to out_scale times this attention's output (one branch of grouped mode
// computed on its own, as sequence-parallel attention does), and the gradients are those of
// that scaled output; passing the scale keeps out and dout as they are, unrounded.
AttentionGrads dilated_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& out, const Tensor& lse, const Tensor& dout,
                                          const DilatedAttentionConfig& config,
                                          ResultDtype result = ResultDtype::input,
                                          double out_scale = 1);

// The differentiable op.
Variable dilated_attention(const Variable& q, const Variable& k, const Variable& v,
                           const DilatedAttentionConfig& config);

// Scaled dot-product attention over all keys (causal: key position <= query position):
// dilated attention with one segment as long as the sequence and rate 1.
Variable dense_attention(const Variable& q, const Variable& k, const Variable& v, bool causal,
                         std::optional<double> scale = std::nullopt);

}  // namespace longnet
