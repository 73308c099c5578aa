// Pre-norm Transformer layers with MAGNETO (Foundation Transformers, Wang et al. 2022):
// a sub-LayerNorm inside attention (before out_proj) and inside the feed-forward block
// (before fc2), and the initialisation gain gamma on v_proj, out_proj, fc1 and fc2.
//
//   encoder layer:  x += drop(self_attn(ln(x)));               x += drop(ffn(ln(x)))
//   decoder layer:  x += drop(self_attn(ln(x)))  [causal];
//                   x += drop(cross_attn(ln(x), memory))  [when the model has an encoder];
//                   x += drop(ffn(ln(x)))
//   ffn(x) = fc2(ffn_ln(drop(gelu(fc1(x)))))
#pragma once

#include <optional>

#include "attention/multihead.h"
#include "nn/dropout.h"

namespace longnet {

// MAGNETO's gamma for a model with encoder_layers and decoder_layers (either may be 0):
// encoder-only sqrt(log 2N), decoder-only sqrt(log 2M); encoder-decoder: encoder
// sqrt(log 3M * log 2N / 3), decoder sqrt(log 3M).
struct MagnetoGamma {
  double encoder = 1;
  double decoder = 1;
};
MagnetoGamma magneto_gamma(std::int64_t encoder_layers, std::int64_t decoder_layers);

struct LayerConfig {
  std::int64_t d_model = 768;
  std::int64_t d_ff = 3072;
  std::int64_t num_heads = 12;
  AttentionConfig attention =
      DilatedAttentionConfig{{2048, 4096, 8192, 16384, 32768}, {1, 2, 4, 6, 12}};
  PositionEncoding position = PositionEncoding::none;
  double dropout = 0;
  double gamma = 1;
  double layernorm_eps = 1e-5;
  // The dtype of the sublayers' arithmetic; unset: the parameters' dtype. bf16 beside f32
  // parameters is mixed precision: each sublayer's input is rounded to bf16 after its
  // LayerNorm, its output comes back to the residual stream, which stays in f32.
  std::optional<DType> compute_dtype;
  // When > 0, the feed-forward block runs over sequence chunks of at most this many
  // positions, each recomputed in backward from its input (autograd/checkpoint.h): its
  // activations then take one chunk's memory. Position-wise, so only dropout draws differ.
  std::int64_t ffn_chunk = 0;

  void validate() const;  // positive sizes, dropout in [0, 1), and the attention's checks
};

class FeedForward final : public Cloneable<FeedForward> {
 public:
  FeedForward(const LayerConfig& config, Generator& gen, TensorOptions options = {});
  Variable forward(const Variable& x, Generator& gen) const;

 private:
  double dropout_;
  std::shared_ptr<Linear> fc1_;
  std::shared_ptr<LayerNorm> ffn_layernorm_;
  std::shared_ptr<Linear> fc2_;
};

class EncoderLayer final : public Cloneable<EncoderLayer> {
 public:
  EncoderLayer(const LayerConfig& config, Generator& gen, TensorOptions options = {});
  // x (B, N, d_model) -> (B, N, d_model).
  Variable forward(const Variable& x, Generator& gen) const;

 private:
  double dropout_;
  std::optional<DType> compute_dtype_;
  std::int64_t ffn_chunk_;
  std::shared_ptr<LayerNorm> self_attn_layer_norm_;
  std::shared_ptr<MultiheadDilatedAttention> self_attn_;
  std::shared_ptr<LayerNorm> final_layer_norm_;
  std::shared_ptr<FeedForward> ffn_;
};

class DecoderLayer final : public Cloneable<DecoderLayer> {
 public:
  // cross_attention: whether the layer attends to an encoder's output. The self-attention
  // is causal whatever config.attention says.
  DecoderLayer(const LayerConfig& config, bool cross_attention, Generator& gen,
               TensorOptions options = {});
  // x (B, N, d_model), memory (B, M, d_model) or undefined without cross-attention.
  Variable forward(const Variable& x, const Variable& memory, Generator& gen,
                   std::int64_t position_offset = 0) const;
  MultiheadDilatedAttention& self_attention() const { return *self_attn_; }

 private:
  double dropout_;
  std::optional<DType> compute_dtype_;
  std::int64_t ffn_chunk_;
  std::shared_ptr<LayerNorm> self_attn_layer_norm_;
  std::shared_ptr<MultiheadDilatedAttention> self_attn_;
  std::shared_ptr<LayerNorm> encoder_attn_layer_norm_;
  std::shared_ptr<MultiheadDilatedAttention> encoder_attn_;
  std::shared_ptr<LayerNorm> final_layer_norm_;
  std::shared_ptr<FeedForward> ffn_;
};

// x in dtype, or x itself when dtype is unset or already x's (autograd casts back).
Variable in_dtype(const Variable& x, std::optional<DType> dtype);

// The same attention configuration with causal masking switched on.
AttentionConfig causal_version(AttentionConfig config);

}  // namespace longnet
