// LongNet models: the encoder-decoder of the paper and LongNetLM, a decoder-only causal
// language model. Token ids are i64 or i32 tensors (B, N); logits are (B, N, vocab).
#pragma once

#include "attention/sequence_parallel.h"
#include "models/transformer.h"
#include "nn/embedding.h"
#include "nn/module_list.h"

namespace longnet {

struct LongNetConfig {
  std::int64_t vocab_size = 256;
  std::int64_t d_model = 768;
  std::int64_t num_heads = 12;
  std::int64_t encoder_layers = 12;  // 0 for a decoder-only model
  std::int64_t decoder_layers = 12;
  std::int64_t d_ff = 3072;
  AttentionConfig attention =
      DilatedAttentionConfig{{2048, 4096, 8192, 16384, 32768}, {1, 2, 4, 6, 12}};
  PositionEncoding position = PositionEncoding::rope;
  double dropout = 0;
  double layernorm_eps = 1e-5;
  // Arithmetic dtype of the layers and the output head (LayerConfig::compute_dtype); unset:
  // the parameters'. bf16 with f32 parameters is mixed precision; logits are then bf16.
  std::optional<DType> compute_dtype;
  // LongNetLM: keep only each decoder layer's input for backward and compute the layer
  // again there (autograd/checkpoint.h): activation memory of one layer instead of all.
  bool recompute = false;
  std::int64_t ffn_chunk = 0;  // LayerConfig::ffn_chunk

  // The paper's LongNet: d 768, 12 heads, 12 + 12 layers, FFN 3072, w = 2048..32768,
  // r = 1, 2, 4, 6, 12.
  static LongNetConfig paper();
  void validate() const;  // errors name the field and the valid range
};

// Decoder-only causal language model: embedding, decoder layers (causal self-attention with
// the configured position encoding on q and k), final LayerNorm, output head.
class LongNetLM final : public Cloneable<LongNetLM> {
 public:
  LongNetLM(const LongNetConfig& config, Generator& gen, TensorOptions options = {});
  // tokens (B, N) -> logits (B, N, vocab_size). gen draws dropout masks when training.
  Variable forward(const Tensor& tokens, Generator& gen) const;
  const LongNetConfig& config() const { return config_; }

  // Sequence parallel (attention/sequence_parallel.h): from now on forward takes this rank's
  // slice of each sequence of n tokens (positions sequence_slice(n, rank, ranks)), every
  // layer's self-attention runs over all ranks' slices, and RoPE/XPOS positions start at the
  // slice's first. The logits are this slice's. comm must outlive the model's use.
  void use_sequence_parallel(std::int64_t n, Communicator& comm);

 private:
  LongNetConfig config_;
  std::int64_t position_offset_ = 0;  // of the first token forward sees
  std::shared_ptr<Embedding> embed_tokens_;
  std::shared_ptr<ModuleList<DecoderLayer>> layers_;
  std::shared_ptr<LayerNorm> layer_norm_;
  std::shared_ptr<Linear> output_projection_;
};

// Encoder-decoder LongNet: the encoder reads the source, the decoder (causal, with
// cross-attention to the encoder's output) produces target logits.
class LongNet final : public Cloneable<LongNet> {
 public:
  LongNet(const LongNetConfig& config, Generator& gen, TensorOptions options = {});
  // source (B, M), target (B, N) -> logits (B, N, vocab_size).
  Variable forward(const Tensor& source, const Tensor& target, Generator& gen) const;
  const LongNetConfig& config() const { return config_; }

 private:
  LongNetConfig config_;
  std::shared_ptr<Embedding> encoder_embed_;
  std::shared_ptr<ModuleList<EncoderLayer>> encoder_layers_;
  std::shared_ptr<LayerNorm> encoder_layer_norm_;
  std::shared_ptr<Embedding> decoder_embed_;
  std::shared_ptr<ModuleList<DecoderLayer>> decoder_layers_;
  std::shared_ptr<LayerNorm> decoder_layer_norm_;
  std::shared_ptr<Linear> output_projection_;
};

}  // namespace longnet
