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

namespace longnet {
namespace {

using nlohmann::json;

// --- Golden fixtures (the loading helpers of tests/test_golden.cpp) -----------------------

// |actual - expected| <= atol + rtol * |expected|, elementwise.
struct Tolerance {
  DType dtype;
  double rtol;
  double atol;
};
constexpr Tolerance kF64{DType::f64, 1e-10, 1e-10};

json load_fixture(const std::string& name) {
  const char* root = std::getenv("LONGNET_SOURCE_ROOT");
  if (root == nullptr || *root == '\0') {
    throw std::runtime_error(
        "LONGNET_SOURCE_ROOT is not set: run through `meson test`, or set it to the source "
        "tree so that $LONGNET_SOURCE_ROOT/tests/golden/" +
        name + ".json exists");
  }
  auto path = std::filesystem::path(root) / "tests" / "golden" / (name + ".json");
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot open golden fixture " + path.string() +
                             "; regenerate it with /usr/bin/python3 tests/golden/make_golden.py");
  }
  return json::parse(in);
}

struct Golden {
  Shape shape;
  std::vector<double> data;
};

Golden golden(const json& doc, const std::string& key) {
  if (!doc.contains(key)) throw std::runtime_error("golden fixture has no tensor \"" + key + "\"");
  const json& t = doc.at(key);
  return {t.at("shape").get<Shape>(), t.at("data").get<std::vector<double>>()};
}

Tensor input(const json& doc, const std::string& key, DType dtype) {
  Golden g = golden(doc, key);
  return to(from_data<double>(g.data, g.shape), dtype);
}

void check_close(const Tensor& actual, const json& doc, const std::string& key, Tolerance tol) {
  const std::string where = "\"" + key + "\" in " + name(tol.dtype);
  INFO("golden tensor ", where);
  Golden expected = golden(doc, key);
  REQUIRE_MESSAGE(actual.defined(), "no value computed");
  CHECK(actual.dtype() == tol.dtype);
  REQUIRE_MESSAGE(actual.shape() == expected.shape, "shape ", str(actual.shape()), ", PyTorch has ",
                  str(expected.shape));
  std::vector<double> got = actual.to_vector<double>();
  REQUIRE(got.size() == expected.data.size());
  std::ostringstream report;
  report.precision(17);
  int mismatches = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double want = expected.data[i];
    double err = std::abs(got[i] - want);
    if (!(err <= tol.atol + tol.rtol * std::abs(want))) {
      if (++mismatches <= 8) {
        report << "\n  [" << i << "] got " << got[i] << ", PyTorch " << want << " (abs err " << err
               << ")";
      }
    }
  }
  CHECK_MESSAGE(mismatches == 0, mismatches, " of ", got.size(), " elements of ", where,
                " differ from PyTorch beyond rtol ", tol.rtol, ", atol ", tol.atol, report.str());
}

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
  check_close(y.data(), doc, "y", kF64);
  check_close(loss.data(), doc, "loss", kF64);
  check_close(x.grad(), doc, "grad_x", kF64);
  for (const auto& [name, param] : module.named_parameters()) {
    check_close(param.grad(), doc, "grad_" + name, kF64);
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
