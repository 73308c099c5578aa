#include "attention/multihead.h"

#include "autograd/ops.h"
#include "nn/dropout.h"
#include "nn/init.h"
#include "nn/positional.h"

namespace longnet {

PositionEncoding parse_position_encoding(const std::string& text) {
  if (text == "none") return PositionEncoding::none;
  if (text == "rope") return PositionEncoding::rope;
  if (text == "xpos") return PositionEncoding::xpos;
  throw Error(cat("unknown position encoding \"", text, "\" (valid: none, rope, xpos)"));
}

const char* name(PositionEncoding encoding) {
  switch (encoding) {
    case PositionEncoding::none:
      return "none";
    case PositionEncoding::rope:
      return "rope";
    case PositionEncoding::xpos:
      return "xpos";
  }
  return "?";
}

void MultiheadAttentionConfig::validate() const {
  LN_CHECK(embed_dim >= 1, "embed_dim is ", embed_dim, "; valid: integers >= 1");
  LN_CHECK(num_heads >= 1, "num_heads is ", num_heads, "; valid: integers >= 1");
  LN_CHECK(embed_dim % num_heads == 0, "embed_dim (", embed_dim,
           ") must be divisible by num_heads (", num_heads, ")");
  LN_CHECK(dropout >= 0 && dropout < 1, "dropout is ", dropout, "; valid: [0, 1)");
  LN_CHECK(gamma_init > 0, "gamma_init is ", gamma_init, "; valid: > 0");
  LN_CHECK(layernorm_eps > 0, "layernorm_eps is ", layernorm_eps, "; valid: > 0");
  if (position != PositionEncoding::none) {
    LN_CHECK((embed_dim / num_heads) % 2 == 0, "rotary position encodings need an even head ",
             "dim; embed_dim / num_heads is ", embed_dim / num_heads);
  }
  longnet::validate(attention);
}

MultiheadDilatedAttention::MultiheadDilatedAttention(const MultiheadAttentionConfig& config,
                                                     Generator& gen, TensorOptions options)
    : config_(config) {
  config_.validate();
  kernel_ = make_attention(config_.attention, options.device);
  std::int64_t e = config_.embed_dim;
  auto projection = [&](const char* name, std::shared_ptr<Linear> MultiheadDilatedAttention::*slot,
                        double gain) {
    auto layer = std::make_shared<Linear>(e, e, gen, config_.bias, options);
    xavier_normal_(layer->weight(), gain, gen);
    register_module(name, slot, layer);
  };
  projection("q_proj", &MultiheadDilatedAttention::q_proj_, 1.0);
  projection("k_proj", &MultiheadDilatedAttention::k_proj_, 1.0);
  projection("v_proj", &MultiheadDilatedAttention::v_proj_, config_.gamma_init);
  projection("out_proj", &MultiheadDilatedAttention::out_proj_, config_.gamma_init);
  if (config_.sub_layernorm) {
    register_module("inner_attn_ln", &MultiheadDilatedAttention::inner_attn_ln_,
                    std::make_shared<LayerNorm>(e, config_.layernorm_eps, true, options));
  }
}

Variable MultiheadDilatedAttention::forward(const Variable& query, const Variable& key_value,
                                            Generator& gen, std::int64_t position_offset) const {
  std::int64_t e = config_.embed_dim;
  LN_CHECK(query.dim() == 3 && key_value.dim() == 3 && query.size(2) == e &&
               key_value.size(2) == e && query.size(0) == key_value.size(0),
           "multihead attention: query ", describe(query.data()), " and key_value ",
           describe(key_value.data()), " must be (batch, seq, ", e, ") with one batch size");
  std::int64_t b = query.size(0);
  std::int64_t h = config_.num_heads;
  auto heads = [&](const Variable& x) { return reshape(x, {b, x.size(1), h, e / h}); };
  Variable q = heads(q_proj_->forward(query));
  Variable k = heads(k_proj_->forward(key_value));
  Variable v = heads(v_proj_->forward(key_value));
  if (config_.position == PositionEncoding::rope) {
    q = apply_rope(q, position_offset);
    k = apply_rope(k, position_offset);
  } else if (config_.position == PositionEncoding::xpos) {
    q = apply_xpos(q, position_offset, false);
    k = apply_xpos(k, position_offset, true);
  }
  Variable a = reshape(kernel_->forward(q, k, v), {b, query.size(1), e});
  if (inner_attn_ln_) a = inner_attn_ln_->forward(a);
  a = dropout(a, config_.dropout, gen, is_training());
  return out_proj_->forward(a);
}

}  // namespace longnet
