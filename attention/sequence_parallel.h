// Sequence-parallel dilated attention (DESIGN.md section 7): the ranks of a communicator
// each hold one contiguous slice of a sequence of n positions (rank r holds
// sequence_slice(n, r, P)) and together compute exactly the dilated attention of the whole
// sequence: each rank gets the output rows, logsumexps and gradients of its own positions.
//
// For each branch and each head offset j of it, the positions the branch selects form one
// "compact" sequence, on which the branch is plain attention with rate 1 (its segments being
// the selected rows of the branch's segments). A branch whose segments never cross a slice
// boundary finds all its keys in the rank's own rows. For a branch whose segments do cross
// one, each rank packs the K and V rows of its slice that the branch selects (about
// n_local / r rows per head) and the ranks all-gather the packed rows, so only dilated rows
// travel: K and V in one collective per (branch, offset), started before the previous one
// computes, so that it overlaps that computation. The branches' outputs merge into one
// softmax as in dilated attention. The backward pass computes dK and dV of every key row a
// rank's queries saw and reduce-scatters them back to their owners (one collective for both,
// overlapping the next class's computation); it gathers the packed rows again instead of
// keeping them. Memory per rank: the slice plus,
// for two (branch, offset) classes at a time, every rank's packed rows (about n / r rows per
// head using them).
//
// In bf16 the attention calls of a crossing class keep their outputs and gradients in f32
// (ResultDtype::compute), and grouped mode's branch scale goes into the backward as out_scale
// (out and dout are not rescaled), so the result is rounded once, as on one device.
//
// When no segment crosses a slice boundary (every slice starts at a segment start of every
// branch), each rank's part is plain dilated attention over its own rows and nothing
// travels. Both cases run on any device dilated attention runs on: the crossing case is
// built from tensor ops, dilated attention calls on the compact rows and the communicator's
// collectives.
//
// Inputs: q, k, v of one rank's slice, (B, n_local, H, D) with v's own Dv. Every rank calls
// with the same config, n, batch, heads and head dims, in the same order relative to its
// other collectives. At least one position per rank (n >= P).
#pragma once

#include "attention/factory.h"
#include "dist/communicator.h"

namespace longnet {

struct SequenceSlice {
  std::int64_t begin;
  std::int64_t end;
};

// Positions [floor(rank n / ranks), floor((rank + 1) n / ranks)): sizes differ by at most one.
SequenceSlice sequence_slice(std::int64_t n, int rank, int ranks);

AttentionOutput sequence_parallel_attention_forward(const Tensor& q, const Tensor& k,
                                                    const Tensor& v,
                                                    const DilatedAttentionConfig& config,
                                                    std::int64_t n, Communicator& comm);

// Gradients of this rank's q, k, v from its out, lse and dout (all ranks call it together).
AttentionGrads sequence_parallel_attention_backward(const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const Tensor& out,
                                                    const Tensor& lse, const Tensor& dout,
                                                    const DilatedAttentionConfig& config,
                                                    std::int64_t n, Communicator& comm);

// The differentiable op. comm must outlive the backward pass.
Variable sequence_parallel_dilated_attention(const Variable& q, const Variable& k,
                                             const Variable& v,
                                             const DilatedAttentionConfig& config, std::int64_t n,
                                             Communicator& comm);

// The Attention of a sequence-parallel run, to put in place of make_attention's: the dilated
// semantics of config (dense: one segment over all n positions, rate 1; auto: its dilated
// config) over the slices comm's ranks hold. block_sparse has no sequence-parallel form yet
// (an error). comm must outlive the returned kernel and the backward passes through it.
std::shared_ptr<const Attention> make_sequence_parallel_attention(const AttentionConfig& config,
                                                                  std::int64_t n,
                                                                  Communicator& comm);

}  // namespace longnet
