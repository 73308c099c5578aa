#include "models/transformer.h"

#include <algorithm>

#include "autograd/checkpoint.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/init.h"

namespace longnet {

MagnetoGamma magneto_gamma(std::int64_t encoder_layers, std::int64_t decoder_layers) {
  auto n = static_cast<double>(encoder_layers);
  auto m = static_cast<double>(decoder_layers);
  MagnetoGamma g;
  if (encoder_layers > 0 && decoder_layers > 0) {
    g.encoder = std::sqrt(std::log(3 * m) * std::log(2 * n) / 3);
    g.decoder = std::sqrt(std::log(3 * m));
  } else {
    if (encoder_layers > 0) g.encoder = std::sqrt(std::log(2 * n));
    if (decoder_layers > 0) g.decoder = std::sqrt(std::log(2 * m));
  }
  return g;
}

void LayerConfig::validate() const {
  LN_CHECK(d_model >= 1, "d_model is ", d_model, "; valid: integers >= 1");
  LN_CHECK(d_ff >= 1, "d_ff is ", d_ff, "; valid: integers >= 1");
  LN_CHECK(dropout >= 0 && dropout < 1, "dropout is ", dropout, "; valid: [0, 1)");
  LN_CHECK(gamma > 0, "gamma is ", gamma, "; valid: > 0");
  LN_CHECK(ffn_chunk >= 0, "ffn_chunk is ", ffn_chunk, "; valid: integers >= 0 (0: off)");
  LN_CHECK(!compute_dtype || is_floating(*compute_dtype), "compute_dtype is ", name(*compute_dtype),
           "; valid: f32, f64, bf16");
}

Variable in_dtype(const Variable& x, std::optional<DType> dtype) {
  return dtype && *dtype != x.dtype() ? to(x, *dtype) : x;
}

AttentionConfig causal_version(AttentionConfig config) {
  std::visit(
      [](auto& c) {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, AutoAttentionConfig>) {
          c.dilated.causal = true;
        } else {
          c.causal = true;
        }
      },
      config);
  return config;
}

namespace {

MultiheadAttentionConfig attention_config(const LayerConfig& c, AttentionConfig attention,
                                          PositionEncoding position) {
  MultiheadAttentionConfig m;
  m.embed_dim = c.d_model;
  m.num_heads = c.num_heads;
  m.attention = std::move(attention);
  m.dropout = c.dropout;
  m.gamma_init = c.gamma;
  m.layernorm_eps = c.layernorm_eps;
  m.position = position;
  return m;
}

// x + dropout(update), the update brought to the residual stream's dtype (in the same pass
// as the add).
Variable residual(const Variable& x, const Variable& update, double p, Generator& gen,
                  bool training) {
  Variable u = dropout(update, p, gen, training);
  return u.dtype() == x.dtype() ? add(x, u) : add_converted(x, u);
}

// ffn(h) over sequence chunks of at most chunk positions, each a checkpoint; chunk 0: whole.
Variable feed_forward(const std::shared_ptr<FeedForward>& ffn, const Variable& h,
                      std::int64_t chunk, Generator& gen) {
  if (chunk == 0) return ffn->forward(h, gen);
  auto run = [ffn](const Variable& x, Generator& g) { return ffn->forward(x, g); };
  std::vector<Variable> params = ffn->parameters();
  std::vector<Variable> parts;
  std::int64_t n = h.size(1);
  for (std::int64_t start = 0; start < n; start += chunk) {
    parts.push_back(checkpoint(run, narrow(h, 1, start, std::min(chunk, n - start)), gen, params));
  }
  return parts.size() == 1 ? parts[0] : concat(parts, 1);
}

}  // namespace

FeedForward::FeedForward(const LayerConfig& c, Generator& gen, TensorOptions options)
    : dropout_(c.dropout) {
  c.validate();
  register_module("fc1", &FeedForward::fc1_,
                  std::make_shared<Linear>(c.d_model, c.d_ff, gen, true, options));
  register_module("ffn_layernorm", &FeedForward::ffn_layernorm_,
                  std::make_shared<LayerNorm>(c.d_ff, c.layernorm_eps, true, options));
  register_module("fc2", &FeedForward::fc2_,
                  std::make_shared<Linear>(c.d_ff, c.d_model, gen, true, options));
  xavier_normal_(fc1_->weight(), c.gamma, gen);
  xavier_normal_(fc2_->weight(), c.gamma, gen);
}

Variable FeedForward::forward(const Variable& x, Generator& gen) const {
  Variable u = fc1_->forward(x);
  // Without dropout between them the GELU and the sub-LayerNorm are one op.
  if (dropout_ == 0 || !is_training()) return fc2_->forward(ffn_layernorm_->forward_gelu(u));
  return fc2_->forward(ffn_layernorm_->forward(dropout(gelu(u), dropout_, gen, true)));
}

EncoderLayer::EncoderLayer(const LayerConfig& c, Generator& gen, TensorOptions options)
    : dropout_(c.dropout), compute_dtype_(c.compute_dtype), ffn_chunk_(c.ffn_chunk) {
  c.validate();
  register_module("self_attn_layer_norm", &EncoderLayer::self_attn_layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("self_attn", &EncoderLayer::self_attn_,
                  std::make_shared<MultiheadDilatedAttention>(
                      attention_config(c, c.attention, c.position), gen, options));
  register_module("final_layer_norm", &EncoderLayer::final_layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("ffn", &EncoderLayer::ffn_, std::make_shared<FeedForward>(c, gen, options));
}

Variable EncoderLayer::forward(const Variable& x, Generator& gen) const {
  Variable h = self_attn_layer_norm_->forward(x, compute_dtype_);
  Variable y = residual(x, self_attn_->forward(h, h, gen), dropout_, gen, is_training());
  h = final_layer_norm_->forward(y, compute_dtype_);
  return residual(y, feed_forward(ffn_, h, ffn_chunk_, gen), dropout_, gen, is_training());
}

DecoderLayer::DecoderLayer(const LayerConfig& c, bool cross_attention, Generator& gen,
                           TensorOptions options)
    : dropout_(c.dropout), compute_dtype_(c.compute_dtype), ffn_chunk_(c.ffn_chunk) {
  c.validate();
  register_module("self_attn_layer_norm", &DecoderLayer::self_attn_layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("self_attn", &DecoderLayer::self_attn_,
                  std::make_shared<MultiheadDilatedAttention>(
                      attention_config(c, causal_version(c.attention), c.position), gen, options));
  if (cross_attention) {
    register_module("encoder_attn_layer_norm", &DecoderLayer::encoder_attn_layer_norm_,
                    std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
    // Queries and keys come from different sequences: no rotary positions, no causal mask.
    register_module(
        "encoder_attn", &DecoderLayer::encoder_attn_,
        std::make_shared<MultiheadDilatedAttention>(
            attention_config(c, DenseAttentionConfig{}, PositionEncoding::none), gen, options));
  }
  register_module("final_layer_norm", &DecoderLayer::final_layer_norm_,
                  std::make_shared<LayerNorm>(c.d_model, c.layernorm_eps, true, options));
  register_module("ffn", &DecoderLayer::ffn_, std::make_shared<FeedForward>(c, gen, options));
}

Variable DecoderLayer::forward(const Variable& x, const Variable& memory, Generator& gen,
                               std::int64_t position_offset) const {
  Variable h = self_attn_layer_norm_->forward(x, compute_dtype_);
  Variable y =
      residual(x, self_attn_->forward(h, h, gen, position_offset), dropout_, gen, is_training());
  if (encoder_attn_) {
    LN_CHECK(memory.defined(), "decoder layer with cross-attention needs the encoder output");
    Variable c = encoder_attn_layer_norm_->forward(y, compute_dtype_);
    y = residual(y, encoder_attn_->forward(c, in_dtype(memory, compute_dtype_), gen), dropout_, gen,
                 is_training());
  }
  h = final_layer_norm_->forward(y, compute_dtype_);
  return residual(y, feed_forward(ffn_, h, ffn_chunk_, gen), dropout_, gen, is_training());
}

}  // namespace longnet
