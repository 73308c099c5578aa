// MultiheadDilatedAttention: projections around an attention kernel from the factory, with
// MAGNETO's sub-LayerNorm. Batch-first: query (B, Nq, E), key_value (B, Nk, E) -> (B, Nq, E).
//
//   q, k, v = q_proj(query), k_proj(key_value), v_proj(key_value), split into H heads of E/H
//   q, k    = rotary or XPOS encoding of positions position_offset + n (if configured)
//   a       = attention(q, k, v) merged back to (B, Nq, E)
//   a       = inner_attn_ln(a) when sub_layernorm (MAGNETO), then dropout
//   out     = out_proj(a)
//
// Initialisation: xavier normal, gain 1 for q_proj and k_proj, gain gamma_init for v_proj
// and out_proj (MAGNETO); biases zero. Self-attention passes the same tensor twice.
#pragma once

#include <memory>

#include "attention/factory.h"
#include "nn/layer_norm.h"
#include "nn/linear.h"

namespace longnet {

enum class PositionEncoding { none, rope, xpos };

// "none", "rope", "xpos"; anything else is an error listing them.
PositionEncoding parse_position_encoding(const std::string& text);
const char* name(PositionEncoding encoding);

struct MultiheadAttentionConfig {
  std::int64_t embed_dim = 768;
  std::int64_t num_heads = 12;
  AttentionConfig attention =
      DilatedAttentionConfig{{2048, 4096, 8192, 16384, 32768}, {1, 2, 4, 6, 12}};
  double dropout = 0;  // on the attention output, before out_proj
  bool sub_layernorm = true;
  double gamma_init = 1;
  bool bias = true;
  double layernorm_eps = 1e-5;
  PositionEncoding position = PositionEncoding::none;

  // embed_dim and num_heads positive, embed_dim divisible by num_heads, dropout in [0, 1),
  // gamma_init and layernorm_eps positive, and the attention config; errors name the field.
  void validate() const;
};

class MultiheadDilatedAttention final : public Cloneable<MultiheadDilatedAttention> {
 public:
  MultiheadDilatedAttention(const MultiheadAttentionConfig& config, Generator& gen,
                            TensorOptions options = {});

  // gen draws the dropout mask (unused in eval mode or with dropout 0).
  Variable forward(const Variable& query, const Variable& key_value, Generator& gen,
                   std::int64_t position_offset = 0) const;

  const MultiheadAttentionConfig& config() const { return config_; }
  // Replaces the attention kernel, e.g. by a sequence-parallel one computing the same
  // semantics (config().attention) over several ranks.
  void set_attention(std::shared_ptr<const Attention> kernel) { kernel_ = std::move(kernel); }

 private:
  MultiheadAttentionConfig config_;
  std::shared_ptr<const Attention> kernel_;
  std::shared_ptr<Linear> q_proj_;
  std::shared_ptr<Linear> k_proj_;
  std::shared_ptr<Linear> v_proj_;
  std::shared_ptr<Linear> out_proj_;
  std::shared_ptr<LayerNorm> inner_attn_ln_;
};

}  // namespace longnet
