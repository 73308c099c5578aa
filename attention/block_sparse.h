// Block-sparse attention (DESIGN.md section 6). Positions are grouped in blocks of
// block_size (the last one may be shorter); a pattern keeps, for each query block, a set of
// key blocks, and each query attends with ONE softmax over all keys of its kept blocks
// (causal: only keys at or before the query, also inside the diagonal block).
//
// density in (0, 1] is the fraction of key blocks kept: keep = max(1, ceil(density * nb))
// of the nb key blocks, per pattern:
//   local_window      a window of keep key blocks centred on qb (qb - (keep-1)/2 ..), shifted
//                     to lie inside the sequence; causal: the keep blocks ending at qb;
//   dilated           key blocks qb + t * rate for integer t, rate = max(1, floor(1/density));
//   global_local      the first global_blocks blocks plus a window (as local_window) of the
//                     remaining budget, at least the diagonal block;
//   content_adaptive  per head and query block, the keep key blocks with the largest
//                     mean-pooled q . mean-pooled k, always including the diagonal block.
// Under causal masking key blocks after the query block are dropped from every pattern.
//
// q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv), one floating dtype on one device. CPU:
// f32, f64 or bf16, any block_size. CUDA (attention/cuda/block_sparse.h): bf16 with
// D == Dv in {32, 64, 128} on tensor cores, any block_size (multiples of 64 fill the kernels'
// 64-row tiles); anything else is an error that says what would run.
#pragma once

#include <optional>
#include <string>

#include "attention/dilated.h"

namespace longnet {

enum class BlockPattern { local_window, dilated, global_local, content_adaptive };

// "local_window", "dilated", "global_local", "content_adaptive"; anything else is an error
// listing the valid names.
BlockPattern parse_block_pattern(const std::string& name);
const char* name(BlockPattern pattern);

struct BlockSparseConfig {
  BlockPattern pattern = BlockPattern::local_window;
  std::int64_t block_size = 64;
  double density = 0.25;
  std::int64_t global_blocks = 1;  // global_local only
  bool causal = false;
  std::optional<double> scale;  // default 1/sqrt(D)

  // block_size >= 1, density in (0, 1], global_blocks >= 0, scale finite and > 0; an error
  // names the field and the valid range.
  void validate() const;
};

// keep: the number of key blocks density keeps of the blocks of nk keys.
std::int64_t kept_key_blocks(const BlockSparseConfig& config, std::int64_t nk);

// The kept key blocks (sorted, distinct) of every (batch, head, query block): the pattern
// made explicit. Indexed [(b * H + h) * nqb + qb]. CPU tensors.
std::vector<std::vector<std::int64_t>> block_layout(const Tensor& q, const Tensor& k,
                                                    const BlockSparseConfig& config);

// The same for a pattern that does not look at the data (all but content_adaptive, which is
// an error here): one list per query block, shared by every batch and head. Indexed [qb].
std::vector<std::vector<std::int64_t>> fixed_block_layout(const BlockSparseConfig& config,
                                                          std::int64_t nq, std::int64_t nk);

AttentionOutput block_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const BlockSparseConfig& config);

AttentionGrads block_sparse_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& out, const Tensor& lse,
                                               const Tensor& dout, const BlockSparseConfig& config);

// The differentiable op. The content-adaptive choice of blocks is not differentiated: the
// gradient flows through the scores of the kept blocks.
Variable block_sparse_attention(const Variable& q, const Variable& k, const Variable& v,
                                const BlockSparseConfig& config);

}  // namespace longnet
