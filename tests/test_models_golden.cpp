// Models against PyTorch: MultiheadDilatedAttention (paper and grouped dilated modes, RoPE,
// sub-LayerNorm) and one LongNetLM decoder layer, in f64. tests/golden/make_golden.py
// writes the fixtures (mha_*.json, lm_layer.json) from a plain PyTorch implementation of
// the definitions: the input x, every parameter under its C++ name, the output y, and the
// gradients of sum(y * w) with respect to x and every parameter.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attention/multihead.h"
#include "autograd/ops.h"
#include "models/longnet.h"
#include "models/transformer.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tests/golden_fixture.h"

namespace longnet {
namespace {

using nlohmann::json;

// --- Golden fixtures (the loading helpers of tests/test_golden.cpp) -----------------------

using namespace fixtures;
// Whole modules accumulate more rounding than single ops: 1e-10 absolute as well.
constexpr Tolerance kModuleF64{DType::f64, 1e-10, 1e-10};

// The fixture's parameters: every tensor key with a dot in its name ("q_proj.weight"),
// gradients ("grad_...") aside.
StateDict fixture_parameters(const json& doc, DType dtype) {
  StateDict dict;
  for (const auto& [key, value] : doc.items()) {
    if (key.find('.') != std::string::npos && key.rfind("grad_", 0) != 0) {
      dict.emplace_back(key, input(doc, key, dtype));
    }
  }
  return dict;
}

// Loads the fixture's parameters into module (strictly: the names must match exactly), runs
// forward on its x, and checks y, loss, and the gradients of x and of every parameter.
void check_module_matches(Module& module, const json& doc,
                          const std::function<Variable(const Variable&)>& forward) {
  StateDict params = fixture_parameters(doc, DType::f64);
  CHECK(params.size() == module.named_parameters().size());
  module.load_state_dict(params);
  module.eval();
  Variable x(input(doc, "x", DType::f64), true);
  Variable y = forward(x);
  Variable loss = sum(y * Variable(input(doc, "w", DType::f64)));
  loss.backward();
  check_close(y.data(), doc, "y", kModuleF64);
  check_close(loss.data(), doc, "loss", kModuleF64);
  check_close(x.grad(), doc, "grad_x", kModuleF64);
  for (const auto& [name, param] : module.named_parameters()) {
    check_close(param.grad(), doc, "grad_" + name, kModuleF64);
  }
}

MultiheadAttentionConfig mha_config(std::int64_t embed, std::int64_t heads,
                                    DilatedAttentionConfig attention, PositionEncoding position) {
  MultiheadAttentionConfig c;
  c.embed_dim = embed;
  c.num_heads = heads;
  c.attention = std::move(attention);
  c.position = position;
  c.sub_layernorm = true;
  c.dropout = 0;
  return c;
}

LayerConfig lm_layer_config() {
  LayerConfig c;
  c.d_model = 8;
  c.num_heads = 2;
  c.d_ff = 16;
  // The decoder layer makes its self-attention causal itself.
  c.attention = DilatedAttentionConfig{{4, 8}, {1, 2}, DilatedMode::paper, false};
  c.position = PositionEncoding::rope;
  c.dropout = 0;
  return c;
}

}  // namespace

TEST_CASE("MultiheadDilatedAttention in paper mode with RoPE matches PyTorch") {
  json doc = load_fixture("mha_dilated_paper_rope");
  Generator gen(1);
  MultiheadDilatedAttention mha(
      mha_config(8, 2, DilatedAttentionConfig{{4, 8}, {1, 2}, DilatedMode::paper, true},
                 PositionEncoding::rope),
      gen, {DType::f64});
  check_module_matches(mha, doc, [&](const Variable& x) { return mha.forward(x, x, gen); });
}

TEST_CASE("MultiheadDilatedAttention in grouped mode with uneven head groups matches PyTorch") {
  json doc = load_fixture("mha_dilated_grouped");
  Generator gen(2);
  MultiheadDilatedAttention mha(
      mha_config(12, 3, DilatedAttentionConfig{{3, 6}, {1, 2}, DilatedMode::grouped, true},
                 PositionEncoding::none),
      gen, {DType::f64});
  check_module_matches(mha, doc, [&](const Variable& x) { return mha.forward(x, x, gen); });
}

TEST_CASE("a LongNetLM decoder layer matches PyTorch") {
  json doc = load_fixture("lm_layer");
  Generator gen(3);
  DecoderLayer layer(lm_layer_config(), false, gen, {DType::f64});
  check_module_matches(layer, doc,
                       [&](const Variable& x) { return layer.forward(x, Variable(), gen); });
}

TEST_CASE("the golden decoder layer's parameter names are those of LongNetLM's layers") {
  Generator gen(4);
  LongNetConfig c;
  c.vocab_size = 16;
  c.d_model = 8;
  c.num_heads = 2;
  c.encoder_layers = 0;
  c.decoder_layers = 1;
  c.d_ff = 16;
  c.attention = DilatedAttentionConfig{{4, 8}, {1, 2}};
  c.position = PositionEncoding::rope;
  LongNetLM lm(c, gen, {DType::f64});
  std::set<std::string> lm_names;
  for (const auto& [name, param] : lm.named_parameters()) lm_names.insert(name);
  json doc = load_fixture("lm_layer");
  for (const auto& [name, value] : fixture_parameters(doc, DType::f64)) {
    CHECK_MESSAGE(lm_names.count("layers.0." + name) == 1, "LongNetLM has no layers.0.", name);
  }
}

}  // namespace longnet
