#include "models/longnet.h"

#include "autograd/checkpoint.h"

namespace longnet {

LongNetConfig LongNetConfig::paper() { return {}; }

void LongNetConfig::validate() const {
  LN_CHECK(vocab_size >= 1, "vocab_size is ", vocab_size, "; valid: integers >= 1");
  LN_CHECK(encoder_layers >= 0, "encoder_layers is ", encoder_layers, "; valid: integers >= 0");
  LN_CHECK(decoder_layers >= 1, "decoder_layers is ", decoder_layers, "; valid: integers >= 1");
  MultiheadAttentionConfig attention_check;
  attention_check.embed_dim = d_model;
  attention_check.num_heads = num_heads;
  attention_check.attention = attention;
  attention_check.dropout = dropout;
  attention_check.layernorm_eps = layernorm_eps;
  attention_check.position = position;
  attention_check.validate();
  LN_CHECK(d_ff >= 1, "d_ff is ", d_ff, "; valid: integers >= 1");
  LN_CHECK(!compute_dtype || is_floating(*compute_dtype), "compute_dtype is ", name(*compute_dtype),
           "; valid: f32, f64, bf16");
}

namespace {

LayerConfig layer_config(const LongNetConfig& c, double gamma, PositionEncoding position) {
  LayerConfig l;
  l.d_model = c.d_model;
  l.d_ff = c.d_ff;
  l.num_heads = c.num_heads;
  l.attention = c.attention;
  l.position = position;
  l.dropout = c.dropout;
  l.gamma = gamma;
  l.layernorm_eps = c.layernorm_eps;
  l.compute_dtype = c.compute_dtype;
  l.ffn_chunk = c.ffn_chunk;
  return l;
}

void check_tokens(const Tensor& tokens, const char* what) {
  LN_CHECK(tokens.dim() == 2, what, " must be (batch, seq) token ids, got ", describe(tokens));
}

}  // namespace

LongNetLM::LongNetLM(const LongNetConfig& config, Generator& gen, TensorOptions options)
    : config_(config) {
  config_.encoder_layers = 0;
  config_.validate();
  const LongNetConfig& c = config_;
  register_module("embed_tokens", &LongNetLM::embed_tokens_,
                  std::make_shared<Embedding>(c.vocab_size, c.d_model, gen, options));
  auto layers = std::make_shared<ModuleList<DecoderLayer>>();
  LayerConfig lc = layer_config(c, magneto_gamma(0, c.decoder_layers).decoder, c.position);
  for (std::int64_t i = 0; i < c.decoder_layers; ++i) {
    layers->push_back(std::make_shared<DecoderLayer>(lc, false, gen, options));
  }
  register_module("layers", &LongNetLM::layers_, layers);
  register_module("layer_norm", &LongNetLM::layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("output_projection", &LongNetLM::output_projection_,
                  std::make_shared<Linear>(c.d_model, c.vocab_size, gen, false, options));
}

Variable LongNetLM::forward(const Tensor& tokens, Generator& gen) const {
  check_tokens(tokens, "LongNetLM tokens");
  Variable x = embed_tokens_->forward(tokens);
  std::int64_t offset = position_offset_;
  for (const auto& layer : *layers_) {
    if (config_.recompute) {
      auto run = [layer, offset](const Variable& input, Generator& g) {
        return layer->forward(input, Variable(), g, offset);
      };
      x = checkpoint(run, x, gen, layer->parameters());
    } else {
      x = layer->forward(x, Variable(), gen, offset);
    }
  }
  return output_projection_->forward(layer_norm_->forward(x, config_.compute_dtype));
}

void LongNetLM::use_sequence_parallel(std::int64_t n, Communicator& comm) {
  for (const auto& layer : *layers_) {
    MultiheadDilatedAttention& attention = layer->self_attention();
    attention.set_attention(
        make_sequence_parallel_attention(attention.config().attention, n, comm));
  }
  position_offset_ = sequence_slice(n, comm.rank(), comm.size()).begin;
}

LongNet::LongNet(const LongNetConfig& config, Generator& gen, TensorOptions options)
    : config_(config) {
  config_.validate();
  const LongNetConfig& c = config_;
  LN_CHECK(c.encoder_layers >= 1, "encoder_layers is 0; LongNet needs an encoder (use LongNetLM ",
           "for a decoder-only model)");
  MagnetoGamma gamma = magneto_gamma(c.encoder_layers, c.decoder_layers);
  register_module("encoder_embed", &LongNet::encoder_embed_,
                  std::make_shared<Embedding>(c.vocab_size, c.d_model, gen, options));
  auto encoder = std::make_shared<ModuleList<EncoderLayer>>();
  for (std::int64_t i = 0; i < c.encoder_layers; ++i) {
    encoder->push_back(
        std::make_shared<EncoderLayer>(layer_config(c, gamma.encoder, c.position), gen, options));
  }
  register_module("encoder_layers", &LongNet::encoder_layers_, encoder);
  register_module("encoder_layer_norm", &LongNet::encoder_layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("decoder_embed", &LongNet::decoder_embed_,
                  std::make_shared<Embedding>(c.vocab_size, c.d_model, gen, options));
  auto decoder = std::make_shared<ModuleList<DecoderLayer>>();
  for (std::int64_t i = 0; i < c.decoder_layers; ++i) {
    decoder->push_back(std::make_shared<DecoderLayer>(layer_config(c, gamma.decoder, c.position),
                                                      true, gen, options));
  }
  register_module("decoder_layers", &LongNet::decoder_layers_, decoder);
  register_module("decoder_layer_norm", &LongNet::decoder_layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("output_projection", &LongNet::output_projection_,
                  std::make_shared<Linear>(c.d_model, c.vocab_size, gen, false, options));
}

Variable LongNet::forward(const Tensor& source, const Tensor& target, Generator& gen) const {
  check_tokens(source, "LongNet source");
  check_tokens(target, "LongNet target");
  Variable memory = encoder_embed_->forward(source);
  for (const auto& layer : *encoder_layers_) memory = layer->forward(memory, gen);
  memory = encoder_layer_norm_->forward(memory, config_.compute_dtype);
  Variable x = decoder_embed_->forward(target);
  for (const auto& layer : *decoder_layers_) x = layer->forward(x, memory, gen);
  return output_projection_->forward(decoder_layer_norm_->forward(x, config_.compute_dtype));
}

}  // namespace longnet
