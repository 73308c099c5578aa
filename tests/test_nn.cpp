// The nn layer: Module (names, state dicts, clone, modes), initialisers, Linear,
// LayerNorm, Embedding, Dropout, activations, cross-entropy and RoPE/XPOS. Each op is
// gradchecked in f64, checked against a naive computation, and, for modules and losses,
// against PyTorch's values (tests/golden/nn_*.json, written by tests/golden/make_golden.py).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/activation.h"
#include "nn/dropout.h"
#include "nn/embedding.h"
#include "nn/init.h"
#include "nn/layer_norm.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/module.h"
#include "nn/module_list.h"
#include "nn/positional.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/reduce.h"
#include "tensor/view.h"
#include "tests/error_of.h"
#include "tests/golden_fixture.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;

using Fn = std::function<Variable(const std::vector<Variable>&)>;
using nlohmann::json;

void check_gradcheck(const Fn& f, const std::vector<Tensor>& inputs) {
  GradcheckResult result = gradcheck(f, inputs);
  CHECK_MESSAGE(result.ok, result.message);
}

Tensor randn64(const Shape& shape, Generator& gen) { return randn(shape, gen, {DType::f64}); }

// Largest |a - b| over all elements (same shape required).
double max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE_MESSAGE(a.shape() == b.shape(), str(a.shape()), " vs ", str(b.shape()));
  auto va = a.to_vector<double>();
  auto vb = b.to_vector<double>();
  double worst = 0;
  for (std::size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(va[i] - vb[i]));
  return worst;
}

// Sample mean and standard deviation of all elements.
std::pair<double, double> moments(const Tensor& t) {
  auto v = t.to_vector<double>();
  double mean = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(v.size());
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  return {mean, std::sqrt(var / static_cast<double>(v.size()))};
}

// --- Golden fixtures (the loading helpers of tests/test_golden.cpp) -----------------------

using namespace fixtures;

// --- A small nested model: how a model built on nn/ registers its parts ------------------

class Attn final : public Cloneable<Attn> {
 public:
  Attn(std::int64_t dim, Generator& gen) {
    register_module("q_proj", &Attn::q_proj_, std::make_shared<Linear>(dim, dim, gen));
    register_module("out_proj", &Attn::out_proj_, std::make_shared<Linear>(dim, dim, gen, false));
  }
  Variable forward(const Variable& x) const {
    return out_proj_->forward(relu(q_proj_->forward(x)));
  }

 private:
  std::shared_ptr<Linear> q_proj_;
  std::shared_ptr<Linear> out_proj_;
};

class Block final : public Cloneable<Block> {
 public:
  Block(std::int64_t dim, Generator& gen) {
    register_module("norm", &Block::norm_, std::make_shared<LayerNorm>(dim));
    register_module("attn", &Block::attn_, std::make_shared<Attn>(dim, gen));
  }
  Variable forward(const Variable& x) const { return x + attn_->forward(norm_->forward(x)); }

 private:
  std::shared_ptr<LayerNorm> norm_;
  std::shared_ptr<Attn> attn_;
};

class TinyModel final : public Cloneable<TinyModel> {
 public:
  TinyModel(std::int64_t vocab, std::int64_t dim, int layers, Generator& gen) {
    register_parameter("scale", &TinyModel::scale_, ones({dim}));
    register_module("embed", &TinyModel::embed_, std::make_shared<Embedding>(vocab, dim, gen));
    register_module("layers", &TinyModel::layers_, std::make_shared<ModuleList<Block>>());
    for (int i = 0; i < layers; ++i) layers_->push_back(std::make_shared<Block>(dim, gen));
    register_module("drop", &TinyModel::drop_, std::make_shared<Dropout>(0.25));
  }
  Variable forward(const Tensor& tokens, Generator& gen) const {
    Variable h = embed_->forward(tokens);
    for (const auto& block : *layers_) h = block->forward(h);
    return drop_->forward(h * scale_, gen);
  }
  const ModuleList<Block>& layers() const { return *layers_; }
  const Dropout& drop() const { return *drop_; }

  // Registration errors, reachable from tests.
  void register_scale_again() { register_parameter("scale", &TinyModel::scale_, ones({1})); }
  void register_dotted() { register_parameter("a.b", &TinyModel::scale_, ones({1})); }
  void register_null_module() {
    register_module("none", &TinyModel::embed_, std::shared_ptr<Embedding>());
  }

 private:
  Variable scale_;
  std::shared_ptr<Embedding> embed_;
  std::shared_ptr<ModuleList<Block>> layers_;
  std::shared_ptr<Dropout> drop_;
};

constexpr std::int64_t kVocab = 11;
constexpr std::int64_t kDim = 4;

std::shared_ptr<TinyModel> tiny_model(std::uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<TinyModel>(kVocab, kDim, 2, gen);
}

Tensor tokens() { return from_data<std::int64_t>({1, 5, 0, 10, 3, 3}, {2, 3}); }

// The model's output in eval mode (no dropout).
Tensor eval_output(TinyModel& model) {
  bool was_training = model.is_training();
  model.eval();
  Generator unused(0);
  Tensor out = model.forward(tokens(), unused).data();
  model.train(was_training);
  return out;
}

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> names;
  for (const auto& [name, p] : m.named_parameters()) names.push_back(name);
  return names;
}

// --- Naive references ---------------------------------------------------------------------

// Mean cross-entropy of logits (rows, V) over rows whose target is not ignore, in f64.
double naive_cross_entropy(const Tensor& logits, const std::vector<std::int64_t>& targets,
                           std::int64_t ignore) {
  std::int64_t classes = logits.size(-1);
  auto x = logits.to_vector<double>();
  double total = 0;
  int count = 0;
  for (std::size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] == ignore) continue;
    double sum = 0;
    for (std::int64_t v = 0; v < classes; ++v) sum += std::exp(x[r * classes + v]);
    total += std::log(sum) - x[r * classes + targets[r]];
    ++count;
  }
  return count > 0 ? total / count : 0.0;
}

// The same loss from generic autograd ops (log_softmax, gather, mask), for gradients.
Variable composed_cross_entropy(const Variable& logits, const std::vector<std::int64_t>& targets,
                                std::int64_t ignore) {
  std::int64_t rows = static_cast<std::int64_t>(targets.size());
  std::vector<std::int64_t> safe;
  std::vector<double> keep;
  for (auto t : targets) {
    safe.push_back(t == ignore ? 0 : t);
    keep.push_back(t == ignore ? 0.0 : 1.0);
  }
  double count = 0;
  for (double k : keep) count += k;
  Variable logp = log_softmax(reshape(logits, {rows, logits.size(-1)}), -1);
  Variable picked = gather(logp, 1, from_data(safe, {rows, 1}));
  Variable mask(to(from_data(keep, {rows, 1}), logits.dtype()));
  return mul(sum(picked * mask), -1.0 / count);
}

}  // namespace

TEST_SUITE("nn") {
  // --- Module -----------------------------------------------------------------------------

  TEST_CASE("named_parameters lists own parameters, then sub-modules', in registration order") {
    auto model = tiny_model(1);
    std::vector<std::string> expected = {"scale",
                                         "embed.weight",
                                         "layers.0.norm.weight",
                                         "layers.0.norm.bias",
                                         "layers.0.attn.q_proj.weight",
                                         "layers.0.attn.q_proj.bias",
                                         "layers.0.attn.out_proj.weight",
                                         "layers.1.norm.weight",
                                         "layers.1.norm.bias",
                                         "layers.1.attn.q_proj.weight",
                                         "layers.1.attn.q_proj.bias",
                                         "layers.1.attn.out_proj.weight"};
    CHECK(names_of(*model) == expected);
    auto named = model->named_parameters();
    CHECK(named[1].second.shape() == Shape{kVocab, kDim});
    CHECK(named[4].second.shape() == Shape{kDim, kDim});
    CHECK(named[5].second.shape() == Shape{kDim});
  }

  TEST_CASE("parameters are the named parameters' leaf Variables, all requiring grad") {
    auto model = tiny_model(1);
    auto params = model->parameters();
    auto named = model->named_parameters();
    REQUIRE(params.size() == named.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      CHECK(params[i].impl() == named[i].second.impl());
      CHECK(params[i].requires_grad());
      CHECK(params[i].is_leaf());
    }
    CHECK(model->layers().at(1)->named_parameters().size() == 5);
    CHECK(contains(error_of([&] { model->layers().at(2); }), "ModuleList::at(2) on a list of 2"));
  }

  TEST_CASE("registration rejects repeated, dotted and empty names and null modules") {
    auto model = tiny_model(1);
    CHECK(contains(error_of([&] { model->register_scale_again(); }), "\"scale\" is already"));
    CHECK(contains(error_of([&] { model->register_dotted(); }), "hold no '.'"));
    CHECK(contains(error_of([&] { model->register_null_module(); }), "is null"));
  }

  TEST_CASE("state_dict and load_state_dict round-trip every value, in place") {
    auto source = tiny_model(1);
    auto target = tiny_model(2);
    CHECK(max_diff(eval_output(*source), eval_output(*target)) > 1e-3);
    auto before = target->parameters();
    std::vector<const void*> storage;
    storage.reserve(before.size());
    for (const auto& p : before) storage.push_back(p.data().raw_data());

    StateDict dict = source->state_dict();
    REQUIRE(dict.size() == before.size());
    CHECK(dict[0].first == "scale");
    target->load_state_dict(dict);

    auto after = target->parameters();
    for (std::size_t i = 0; i < after.size(); ++i) {
      CHECK(after[i].impl() == before[i].impl());
      CHECK(after[i].data().raw_data() == storage[i]);
      CHECK(max_diff(after[i].data(), dict[i].second) == 0);
    }
    CHECK(max_diff(eval_output(*source), eval_output(*target)) == 0);
  }

  TEST_CASE("state_dict values share storage with the parameters") {
    auto model = tiny_model(1);
    StateDict dict = model->state_dict();
    fill_(dict[0].second, 3.0);
    CHECK(model->parameters()[0].data().to_vector<float>()[0] == 3.0F);
  }

  TEST_CASE("strict load_state_dict names missing and unexpected keys and loads nothing") {
    auto model = tiny_model(1);
    Tensor original = clone(model->parameters()[0].data());
    StateDict dict = tiny_model(2)->state_dict();
    dict.erase(dict.begin() + 2);  // layers.0.norm.weight
    dict.emplace_back("layers.0.attn.k_proj.weight", zeros({kDim, kDim}));
    std::string message = error_of([&] { model->load_state_dict(dict); });
    INFO(message);
    CHECK(contains(message, "missing keys: \"layers.0.norm.weight\""));
    CHECK(contains(message, "unexpected keys: \"layers.0.attn.k_proj.weight\""));
    CHECK(max_diff(model->parameters()[0].data(), original) == 0);
  }

  TEST_CASE("non-strict load_state_dict loads the matching keys and ignores the rest") {
    auto model = tiny_model(1);
    StateDict dict = {{"scale", full({kDim}, 2.0)}, {"not.a.parameter", zeros({1})}};
    model->load_state_dict(dict, false);
    CHECK(model->parameters()[0].data().to_vector<float>() == std::vector<float>(kDim, 2.0F));
  }

  TEST_CASE("load_state_dict reports a wrong shape or dtype with the key, expected and given") {
    auto model = tiny_model(1);
    Tensor original = clone(model->parameters()[0].data());
    StateDict dict = tiny_model(2)->state_dict();
    dict[4].second = zeros({kDim, 3});  // layers.0.attn.q_proj.weight
    dict[5].second = zeros({kDim}, {DType::f64});
    std::string message = error_of([&] { model->load_state_dict(dict); });
    INFO(message);
    CHECK(
        contains(message, "\"layers.0.attn.q_proj.weight\": expected f32[4, 4], given f32[4, 3]"));
    CHECK(contains(message, "\"layers.0.attn.q_proj.bias\": expected f32[4], given f64[4]"));
    CHECK(contains(message, "nothing was loaded"));
    CHECK(max_diff(model->parameters()[0].data(), original) == 0);
  }

  TEST_CASE("clone is deep: fresh storage, same values, and changing it leaves the original") {
    auto model = tiny_model(1);
    model->eval();
    Tensor expected = eval_output(*model);
    std::shared_ptr<Module> copy_base = model->clone();
    auto copy = std::dynamic_pointer_cast<TinyModel>(copy_base);
    REQUIRE(copy != nullptr);
    CHECK_FALSE(copy->is_training());
    CHECK_FALSE(copy->layers().at(0)->is_training());
    CHECK(names_of(*copy) == names_of(*model));
    auto mine = model->parameters();
    auto theirs = copy->parameters();
    for (std::size_t i = 0; i < mine.size(); ++i) {
      CHECK(theirs[i].impl() != mine[i].impl());
      CHECK(theirs[i].data().raw_data() != mine[i].data().raw_data());
      CHECK(max_diff(theirs[i].data(), mine[i].data()) == 0);
    }
    CHECK(max_diff(eval_output(*copy), expected) == 0);

    // The clone's forward uses the clone's own parameters, down to the nested Linear.
    for (const auto& p : copy->parameters()) fill_(p.data(), 0.5);
    copy->train();
    Generator gen(3);
    sum(copy->forward(tokens(), gen)).backward();
    CHECK(max_diff(eval_output(*copy), expected) > 1e-3);
    CHECK(max_diff(eval_output(*model), expected) == 0);
    for (const auto& p : model->parameters()) CHECK_FALSE(p.grad().defined());
    CHECK_FALSE(model->is_training());
  }

  TEST_CASE("train and eval reach every sub-module") {
    auto model = tiny_model(1);
    CHECK(model->is_training());
    model->eval();
    CHECK_FALSE(model->drop().is_training());
    CHECK_FALSE(model->layers().at(1)->is_training());
    model->train();
    CHECK(model->drop().is_training());
    CHECK(model->layers().at(1)->is_training());
  }

  TEST_CASE("zero_grad drops every parameter's gradient") {
    auto model = tiny_model(1);
    Generator gen(5);
    sum(model->forward(tokens(), gen)).backward();
    for (const auto& p : model->parameters()) REQUIRE(p.grad().defined());
    model->zero_grad();
    for (const auto& p : model->parameters()) CHECK_FALSE(p.grad().defined());
  }

  TEST_CASE("forward in eval mode is repeatable and leaves the model unchanged") {
    auto model = tiny_model(1);
    StateDict before;
    for (const auto& [name, t] : model->state_dict()) before.emplace_back(name, clone(t));
    Tensor first = eval_output(*model);
    CHECK(max_diff(eval_output(*model), first) == 0);
    StateDict after = model->state_dict();
    for (std::size_t i = 0; i < after.size(); ++i) {
      CHECK(max_diff(after[i].second, before[i].second) == 0);
    }
  }

  // --- Initialisers ------------------------------------------------------------------------

  TEST_CASE("xavier_normal_ draws with std gain * sqrt(2 / (fan_in + fan_out))") {
    Generator gen(7);
    Variable w(empty({200, 300}), true);
    xavier_normal_(w, 2.0, gen);
    auto [mean, std] = moments(w.data());
    CHECK(std::abs(mean) < 0.01);
    CHECK(std == doctest::Approx(2.0 * std::sqrt(2.0 / 500.0)).epsilon(0.02));

    // Trailing dims multiply both fans: [out=64, in=32, k=8] has fans 256 and 512.
    Variable conv(empty({64, 32, 8}), true);
    xavier_normal_(conv, 1.0, gen);
    CHECK(moments(conv.data()).second ==
          doctest::Approx(std::sqrt(2.0 / (256.0 + 512.0))).epsilon(0.03));

    CHECK(contains(error_of([&] { xavier_normal_(Variable(empty({5}), true), 1.0, gen); }),
                   "at least 2 dims"));
  }

  TEST_CASE("normal_ is deterministic per seed; zeros_ and ones_ fill in place") {
    Variable a(empty({100, 100}), true);
    Variable b(empty({100, 100}), true);
    Generator ga(3);
    Generator gb(3);
    normal_(a, 1.5, 0.5, ga);
    normal_(b, 1.5, 0.5, gb);
    CHECK(max_diff(a.data(), b.data()) == 0);
    auto [mean, std] = moments(a.data());
    CHECK(mean == doctest::Approx(1.5).epsilon(0.01));
    CHECK(std == doctest::Approx(0.5).epsilon(0.03));
    const void* storage = a.data().raw_data();
    zeros_(a);
    CHECK(a.data().raw_data() == storage);
    CHECK(max_diff(a.data(), zeros({100, 100})) == 0);
    ones_(a);
    CHECK(max_diff(a.data(), ones({100, 100})) == 0);
  }

  // --- Linear --------------------------------------------------------------------------------

  TEST_CASE("Linear maps (..., in) to (..., out) as x W^T + b") {
    Generator gen(11);
    Linear lin(3, 2, gen);
    CHECK(lin.weight().shape() == Shape{2, 3});
    CHECK(lin.bias().shape() == Shape{2});
    CHECK(lin.bias().data().to_vector<float>() == std::vector<float>{0, 0});
    fill_(lin.bias().data(), 0.25);
    Tensor x = randn({2, 2, 3}, gen);
    Tensor y = lin.forward(Variable(x)).data();
    REQUIRE(y.shape() == Shape{2, 2, 2});
    auto xv = x.to_vector<double>();
    auto wv = lin.weight().data().to_vector<double>();
    auto yv = y.to_vector<double>();
    for (int r = 0; r < 4; ++r) {
      for (int o = 0; o < 2; ++o) {
        double want = 0.25;
        for (int i = 0; i < 3; ++i) want += xv[r * 3 + i] * wv[o * 3 + i];
        CHECK(yv[r * 2 + o] == doctest::Approx(want).epsilon(1e-6));
      }
    }
    // A 1-d input is a single row.
    CHECK(lin.forward(Variable(randn({3}, gen))).shape() == Shape{2});
    CHECK(Linear(3, 2, gen, false).named_parameters().size() == 1);
    CHECK(contains(error_of([&] {
                     lin.forward(Variable(randn({2, 4}, gen)));
                   }),
                   "Linear(3 -> 2): input f32[2, 4] cpu needs last dim 3"));
  }

  TEST_CASE("Linear rounds f32 parameters to bf16 for a bf16 input; gradients come back f32") {
    Generator gen(13);
    Linear lin(24, 10, gen);
    fill_(lin.bias().data(), 0.125);
    Tensor x = to(randn({4, 3, 24}, gen), DType::bf16);
    Tensor g = to(randn({4, 3, 10}, gen), DType::bf16);
    Variable xv(x, true);
    Variable y = lin.forward(xv);
    CHECK(y.dtype() == DType::bf16);
    y.backward(g);
    REQUIRE(lin.weight().grad().dtype() == DType::f32);
    REQUIRE(lin.bias().grad().dtype() == DType::f32);
    CHECK(xv.grad().dtype() == DType::bf16);

    // Oracle: f64 on the bf16-rounded weight, bias, input and gradient.
    Variable x64(to(x, DType::f64), true);
    Variable w64(to(to(lin.weight().data(), DType::bf16), DType::f64), true);
    Variable b64(to(to(lin.bias().data(), DType::bf16), DType::f64), true);
    Variable y64 = linear(x64, w64, b64);
    y64.backward(to(g, DType::f64));
    auto rel = [](const Tensor& got, const Tensor& want) {
      return max_diff(got, want) / max_diff(want, zeros(want.shape(), {DType::f64}));
    };
    CHECK(rel(y.data(), y64.data()) < 1e-2);
    CHECK(rel(xv.grad(), x64.grad()) < 1e-2);
    CHECK(rel(lin.weight().grad(), w64.grad()) < 1e-2);
    CHECK(rel(lin.bias().grad(), b64.grad()) < 1e-2);
  }

  TEST_CASE("linear gradcheck: input, weight and bias") {
    Generator gen(12);
    check_gradcheck([](const auto& v) { return linear(v[0], v[1], v[2]); },
                    {randn64({2, 3, 4}, gen), randn64({5, 4}, gen), randn64({5}, gen)});
    check_gradcheck([](const auto& v) { return linear(v[0], v[1]); },
                    {randn64({3, 4}, gen), randn64({2, 4}, gen)});
  }

  TEST_CASE("Linear matches PyTorch: output and all gradients") {
    json doc = load_fixture("nn_linear");
    for (Tolerance tol : {kF64, kF32}) {
      Generator gen(0);
      Linear lin(4, 3, gen, true, {tol.dtype});
      lin.load_state_dict(
          {{"weight", input(doc, "weight", tol.dtype)}, {"bias", input(doc, "bias", tol.dtype)}});
      Variable x(input(doc, "x", tol.dtype), true);
      Variable y = lin.forward(x);
      Variable loss = sum(y * Variable(input(doc, "w", tol.dtype)));
      loss.backward();
      check_close(y.data(), doc, "y", tol);
      check_close(loss.data(), doc, "loss", tol);
      check_close(x.grad(), doc, "grad_x", tol);
      check_close(lin.weight().grad(), doc, "grad_weight", tol);
      check_close(lin.bias().grad(), doc, "grad_bias", tol);
    }
  }

  // --- LayerNorm ---------------------------------------------------------------------------

  TEST_CASE("layer_norm gradcheck: input, weight and bias, with and without affine") {
    Generator gen(21);
    check_gradcheck([](const auto& v) { return layer_norm(v[0], v[1], v[2]); },
                    {randn64({3, 5}, gen), randn64({5}, gen), randn64({5}, gen)});
    check_gradcheck([](const auto& v) { return layer_norm(v[0], {}, {}, 1e-3); },
                    {randn64({2, 2, 6}, gen)});
  }

  TEST_CASE("layer_norm forward and backward match the definition over many row blocks") {
    // 1000 rows make 16 blocks in backward; the weight and bias sums cross them all.
    Generator gen(22);
    const std::int64_t rows = 1000;
    const std::int64_t dim = 7;
    Tensor xt = add(mul(randn64({rows, dim}, gen), 3.0), 1.0);
    Variable x(xt, true);
    Variable w(randn64({dim}, gen), true);
    Variable b(randn64({dim}, gen), true);
    Tensor g = randn64({rows, dim}, gen);
    Variable y = layer_norm(x, w, b, 1e-5);
    y.backward(g);

    auto xv = xt.to_vector<double>();
    auto wv = w.data().to_vector<double>();
    auto bv = b.data().to_vector<double>();
    auto gv = g.to_vector<double>();
    std::vector<double> yv(xv.size()), dx(xv.size()), dw(dim, 0.0), db(dim, 0.0);
    for (std::int64_t r = 0; r < rows; ++r) {
      const double* xr = &xv[r * dim];
      double mean = 0;
      for (std::int64_t j = 0; j < dim; ++j) mean += xr[j] / dim;
      double var = 0;
      for (std::int64_t j = 0; j < dim; ++j) var += (xr[j] - mean) * (xr[j] - mean) / dim;
      double rstd = 1 / std::sqrt(var + 1e-5);
      double a = 0;
      double c = 0;
      for (std::int64_t j = 0; j < dim; ++j) {
        double xhat = (xr[j] - mean) * rstd;
        double gy = gv[r * dim + j] * wv[j];
        yv[r * dim + j] = xhat * wv[j] + bv[j];
        a += gy / dim;
        c += gy * xhat / dim;
        dw[j] += gv[r * dim + j] * xhat;
        db[j] += gv[r * dim + j];
      }
      for (std::int64_t j = 0; j < dim; ++j) {
        double xhat = (xr[j] - mean) * rstd;
        dx[r * dim + j] = rstd * (gv[r * dim + j] * wv[j] - a - xhat * c);
      }
    }
    CHECK(max_diff(y.data(), from_data(yv, {rows, dim})) < 1e-12);
    CHECK(max_diff(x.grad(), from_data(dx, {rows, dim})) < 1e-12);
    CHECK(max_diff(w.grad(), from_data(dw, {dim})) < 1e-10);
    CHECK(max_diff(b.grad(), from_data(db, {dim})) < 1e-10);

    // f32 and bf16 compute in f32 with f64 row statistics.
    Variable y32 = layer_norm(Variable(to(xt, DType::f32)), Variable(to(w.data(), DType::f32)),
                              Variable(to(b.data(), DType::f32)));
    CHECK(max_diff(y32.data(), from_data(yv, {rows, dim})) < 1e-5);
    Variable y16 = layer_norm(Variable(to(xt, DType::bf16)), Variable(to(w.data(), DType::bf16)),
                              Variable(to(b.data(), DType::bf16)));
    CHECK(y16.dtype() == DType::bf16);
    CHECK(max_diff(y16.data(), from_data(yv, {rows, dim})) < 0.1);
  }

  TEST_CASE("layer_norm with f32 parameters beside a bf16 input (mixed precision)") {
    Generator gen(23);
    const std::int64_t rows = 300;
    const std::int64_t dim = 48;
    // The oracle is f64 arithmetic on the same bf16-rounded input and gradient and the same
    // f32 parameters: what is left is the kernel's f32 arithmetic and bf16 outputs.
    Tensor x = to(add(mul(randn64({rows, dim}, gen), 2.0), 0.5), DType::bf16);
    Tensor g = to(randn64({rows, dim}, gen), DType::bf16);
    Tensor w = to(add(randn64({dim}, gen), 1.0), DType::f32);
    Tensor b = to(randn64({dim}, gen), DType::f32);
    Variable xv(x, true);
    Variable wv(w, true);
    Variable bv(b, true);
    Variable y = layer_norm(xv, wv, bv);
    y.backward(g);
    CHECK(y.dtype() == DType::bf16);
    REQUIRE(wv.grad().dtype() == DType::f32);
    REQUIRE(bv.grad().dtype() == DType::f32);
    CHECK(xv.grad().dtype() == DType::bf16);

    Variable x64(to(x, DType::f64), true);
    Variable w64(to(w, DType::f64), true);
    Variable b64(to(b, DType::f64), true);
    Variable y64 = layer_norm(x64, w64, b64);
    y64.backward(to(g, DType::f64));
    auto rel = [](const Tensor& got, const Tensor& want) {
      return max_diff(got, want) / max_diff(want, zeros(want.shape(), {DType::f64}));
    };
    CHECK(rel(y.data(), y64.data()) < 1e-2);
    CHECK(rel(xv.grad(), x64.grad()) < 1e-2);
    // The parameter gradients stay in f32: far tighter than a bf16 rounding.
    CHECK(rel(wv.grad(), w64.grad()) < 1e-5);
    CHECK(rel(bv.grad(), b64.grad()) < 1e-5);

    // Only f32 parameters may sit beside bf16; weight and bias share a dtype.
    CHECK(contains(error_of([&] {
                     layer_norm(Variable(to(x, DType::f32)), wv, Variable(to(b, DType::bf16)));
                   }),
                   "layer_norm: bias bf16[48] cpu must have the dtype of input"));
    CHECK(contains(error_of([&] { layer_norm(xv, Variable(to(w, DType::f64)), Variable()); }),
                   "layer_norm: weight f64[48] cpu must have the dtype of input"));
    CHECK(contains(error_of([&] { layer_norm(xv, wv, Variable(to(b, DType::bf16))); }),
                   "must have one dtype"));
  }

  TEST_CASE("layer_norm into bf16 from f32 is the norm then the cast, bit for bit") {
    Generator gen(24);
    Tensor x = to(add(mul(randn64({70, 40}, gen), 3.0), 1.0), DType::f32);
    Tensor g = to(randn64({70, 40}, gen), DType::bf16);
    Tensor w = to(add(randn64({40}, gen), 1.0), DType::f32);
    Tensor b = to(randn64({40}, gen), DType::f32);
    auto run = [&](bool fused) {
      Variable xv(x, true);
      Variable wv(w, true);
      Variable bv(b, true);
      Variable y = fused ? layer_norm(xv, wv, bv, 1e-5, DType::bf16)
                         : to(layer_norm(xv, wv, bv, 1e-5), DType::bf16);
      y.backward(g);
      return std::vector<Tensor>{y.data(), xv.grad(), wv.grad(), bv.grad()};
    };
    std::vector<Tensor> fused = run(true);
    std::vector<Tensor> apart = run(false);
    CHECK(fused[0].dtype() == DType::bf16);
    CHECK(fused[1].dtype() == DType::f32);
    for (std::size_t i = 0; i < fused.size(); ++i) {
      CAPTURE(i);
      CHECK(fused[i].to_vector<double>() == apart[i].to_vector<double>());
    }
    // Other changes of dtype are a cast after the norm.
    Variable y32 = LayerNorm(40).forward(Variable(to(x, DType::bf16)), DType::f32);
    CHECK(y32.dtype() == DType::f32);
    CHECK(y32.data().to_vector<double>() ==
          to(layer_norm(Variable(to(x, DType::bf16)), Variable(ones({40})), Variable(zeros({40}))),
             DType::f32)
              .data()
              .to_vector<double>());
  }

  TEST_CASE("LayerNorm matches PyTorch: output and all gradients") {
    json doc = load_fixture("nn_layer_norm");
    for (Tolerance tol : {kF64, kF32}) {
      LayerNorm ln(6, 1e-5, true, {tol.dtype});
      ln.load_state_dict(
          {{"weight", input(doc, "weight", tol.dtype)}, {"bias", input(doc, "bias", tol.dtype)}});
      Variable x(input(doc, "x", tol.dtype), true);
      Variable y = ln.forward(x);
      Variable loss = sum(y * Variable(input(doc, "w", tol.dtype)));
      loss.backward();
      check_close(y.data(), doc, "y", tol);
      check_close(loss.data(), doc, "loss", tol);
      check_close(x.grad(), doc, "grad_x", tol);
      check_close(ln.weight().grad(), doc, "grad_weight", tol);
      check_close(ln.bias().grad(), doc, "grad_bias", tol);
    }
  }

  TEST_CASE("LayerNorm: ones and zeros, no parameters without affine, shape errors") {
    LayerNorm ln(4);
    CHECK(names_of(ln) == std::vector<std::string>{"weight", "bias"});
    CHECK(ln.weight().data().to_vector<float>() == std::vector<float>(4, 1.0F));
    CHECK(ln.bias().data().to_vector<float>() == std::vector<float>(4, 0.0F));
    CHECK(LayerNorm(4, 1e-5, false).named_parameters().empty());
    Generator gen(1);
    CHECK(contains(error_of([&] {
                     ln.forward(Variable(randn({2, 5}, gen)));
                   }),
                   "LayerNorm(4): input f32[2, 5] cpu needs last dim 4"));
    CHECK(contains(error_of([&] {
                     layer_norm(Variable(randn({2, 4}, gen)), Variable(ones({3})), {});
                   }),
                   "weight f32[3] cpu must have shape [4]"));
  }

  // --- Embedding ---------------------------------------------------------------------------

  TEST_CASE("embedding gradcheck: repeated indices accumulate") {
    Generator gen(31);
    Tensor index = from_data<std::int64_t>({0, 2, 2, 4, 0, 2}, {2, 3});
    check_gradcheck([](const auto& v) { return embedding(v[1].data(), v[0]); },
                    {randn64({5, 3}, gen), index});
  }

  TEST_CASE("Embedding looks up rows for i64 and i32 indices of any shape") {
    Generator gen(32);
    Embedding emb(6, 3, gen);
    auto table = emb.weight().data().to_vector<float>();
    Tensor out = emb.forward(from_data<std::int32_t>({5, 0, 2, 2}, {2, 1, 2})).data();
    REQUIRE(out.shape() == Shape{2, 1, 2, 3});
    auto values = out.to_vector<float>();
    std::vector<int> rows = {5, 0, 2, 2};
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 3; ++j) CHECK(values[i * 3 + j] == table[rows[i] * 3 + j]);
    }
    Tensor single = emb.forward(from_data<std::int64_t>({4}, {})).data();
    CHECK(single.shape() == Shape{3});
    CHECK(single.to_vector<float>() == std::vector<float>(table.begin() + 12, table.begin() + 15));
  }

  TEST_CASE("Embedding initialises Normal(0, 1) and rejects out-of-range indices") {
    Generator gen(33);
    Embedding emb(200, 100, gen);
    auto [mean, std] = moments(emb.weight().data());
    CHECK(std::abs(mean) < 0.01);
    CHECK(std == doctest::Approx(1.0).epsilon(0.02));
    CHECK(contains(error_of([&] {
                     emb.forward(from_data<std::int64_t>({3, 200}, {2}));
                   }),
                   "index 200 is out of range for a table of 200 embeddings (valid: 0 to 199)"));
    CHECK(contains(error_of([&] { emb.forward(from_data<std::int32_t>({-1}, {1})); }),
                   "index -1 is out of range"));
    CHECK(contains(error_of([&] { emb.forward(from_data<float>({1.0F}, {1})); }),
                   "index must be i64 or i32"));
  }

  // --- Dropout -----------------------------------------------------------------------------

  TEST_CASE("dropout gradcheck with a fixed mask") {
    Generator gen(41);
    check_gradcheck(
        [](const auto& v) {
          Generator fixed(99);
          return dropout(v[0], 0.4, fixed, true);
        },
        {randn64({3, 7}, gen)});
  }

  TEST_CASE("dropout masks are fixed by seed and offset") {
    Tensor x = ones({1000});
    Generator a(5);
    Generator b(5);
    Generator c(6);
    Tensor ya = dropout(Variable(x), 0.5, a, true).data();
    CHECK(max_diff(ya, dropout(Variable(x), 0.5, b, true).data()) == 0);
    CHECK(max_diff(ya, dropout(Variable(x), 0.5, c, true).data()) > 0);
    CHECK(a.offset() == 250);
    // The next draw from the same generator uses new counters, hence a new mask.
    CHECK(max_diff(ya, dropout(Variable(x), 0.5, a, true).data()) > 0);
    Generator resumed(5);
    resumed.set_offset(250);
    Generator again(5);
    again.set_offset(250);
    CHECK(max_diff(dropout(Variable(x), 0.5, resumed, true).data(),
                   dropout(Variable(x), 0.5, again, true).data()) == 0);
  }

  TEST_CASE("dropout keeps about 1 - p of the elements, scaled by 1 / (1 - p)") {
    const std::int64_t n = 200000;
    const double p = 0.3;
    Generator gen(8);
    Tensor x = add(uniform({n}, 0.0, 1.0, gen, {DType::f64}), 1.0);
    Variable xv(x, true);
    Variable y = dropout(xv, p, gen, true);
    auto in = x.to_vector<double>();
    auto out = y.data().to_vector<double>();
    std::int64_t kept = 0;
    bool scaled = true;
    for (std::int64_t i = 0; i < n; ++i) {
      if (out[i] != 0) {
        ++kept;
        scaled = scaled && std::abs(out[i] - in[i] / (1 - p)) < 1e-12;
      }
    }
    // 5 standard deviations of the kept fraction: sqrt(p (1 - p) / n) ~ 0.001.
    CHECK(std::abs(static_cast<double>(kept) / n - (1 - p)) < 0.005);
    CHECK(scaled);
    // Backward recomputes the same mask.
    y.backward(ones({n}, {DType::f64}));
    auto grad = xv.grad().to_vector<double>();
    bool same_mask = true;
    for (std::int64_t i = 0; i < n; ++i) {
      same_mask = same_mask && grad[i] == (out[i] != 0 ? 1 / (1 - p) : 0.0);
    }
    CHECK(same_mask);
  }

  TEST_CASE("dropout is the identity in eval mode and for p = 0; p must be in [0, 1)") {
    Generator gen(9);
    Variable x(randn({4, 4}, gen), true);
    std::uint64_t offset = gen.offset();
    CHECK(dropout(x, 0.5, gen, false).impl() == x.impl());
    CHECK(dropout(x, 0.0, gen, true).impl() == x.impl());
    CHECK(gen.offset() == offset);
    CHECK(contains(error_of([&] { dropout(x, 1.0, gen, true); }), "p must be in [0, 1), got 1"));
    CHECK(contains(error_of([&] { dropout(x, -0.1, gen, false); }), "p must be in [0, 1)"));
    CHECK(contains(error_of([] { Dropout(1.5); }), "p must be in [0, 1), got 1.5"));

    Dropout drop(0.5);
    CHECK(drop.forward(x, gen).impl() != x.impl());
    drop.eval();
    CHECK(drop.forward(x, gen).impl() == x.impl());
  }

  // --- Activations -------------------------------------------------------------------------

  TEST_CASE("ReLU and GELU modules apply relu and the exact gelu") {
    Variable x(from_data<double>({-1.0, 0.0, 1.0, 2.0}, {4}));
    CHECK(ReLU().forward(x).data().to_vector<double>() == std::vector<double>{0, 0, 1, 2});
    auto g = GELU().forward(x).data().to_vector<double>();
    CHECK(g[0] == doctest::Approx(-0.15865525393145707));
    CHECK(g[2] == doctest::Approx(0.8413447460685429));
    CHECK(GELU().named_parameters().empty());
  }

  // --- Cross-entropy -----------------------------------------------------------------------

  TEST_CASE("cross_entropy gradcheck: ignored targets and chunks smaller than the rows") {
    Generator gen(51);
    Tensor targets = from_data<std::int64_t>({2, -100, 0, 4, 4, -100, 1}, {7});
    check_gradcheck([&](const auto& v) { return cross_entropy(v[0], targets, -100, 3); },
                    {randn64({7, 5}, gen)});
    Tensor targets3 = from_data<std::int32_t>({1, 3, 0, 2, 2, 3}, {2, 3});
    check_gradcheck([&](const auto& v) { return cross_entropy(v[0], targets3, 3, 4); },
                    {randn64({2, 3, 4}, gen)});
  }

  TEST_CASE("cross_entropy matches a naive log-sum-exp for every chunk size") {
    Generator gen(52);
    std::vector<std::int64_t> t = {3, 0, -100, 8, 8, 1, -100, 5, 2, 7, 0};
    Tensor targets = from_data(t, {11});
    Tensor logits = mul(randn64({11, 9}, gen), 4.0);
    double want = naive_cross_entropy(logits, t, -100);
    Variable reference_x(logits, true);
    composed_cross_entropy(reference_x, t, -100).backward();
    for (std::int64_t chunk : {1, 3, 11, 4096}) {
      CAPTURE(chunk);
      Variable x(logits, true);
      Variable loss = cross_entropy(x, targets, -100, chunk);
      CHECK(loss.shape() == Shape{});
      CHECK(loss.data().item() == doctest::Approx(want).epsilon(1e-13));
      loss.backward();
      CHECK(max_diff(x.grad(), reference_x.grad()) < 1e-14);

      Variable x32(to(logits, DType::f32), true);
      Variable loss32 = cross_entropy(x32, targets, -100, chunk);
      CHECK(loss32.dtype() == DType::f32);
      CHECK(loss32.data().item() == doctest::Approx(want).epsilon(1e-6));
      loss32.backward();
      CHECK(max_diff(x32.grad(), reference_x.grad()) < 1e-6);
    }
    Variable loss16 = cross_entropy(Variable(to(logits, DType::bf16)), targets);
    CHECK(loss16.dtype() == DType::f32);
    CHECK(loss16.data().item() == doctest::Approx(want).epsilon(2e-2));
  }

  TEST_CASE("cross_entropy with every target ignored is 0 with a zero gradient") {
    Generator gen(53);
    Variable x(randn64({3, 4}, gen), true);
    Variable loss = cross_entropy(x, from_data<std::int64_t>({7, 7, 7}, {3}), 7);
    CHECK(loss.data().item() == 0.0);
    loss.backward();
    CHECK(max_diff(x.grad(), zeros({3, 4}, {DType::f64})) == 0);
  }

  TEST_CASE("cross_entropy rejects targets outside [0, V), bad shapes and dtypes") {
    Generator gen(54);
    Variable x(randn({4, 5}, gen));
    CHECK(contains(error_of([&] {
                     cross_entropy(x, from_data<std::int64_t>({0, 5, 1, 1}, {4}));
                   }),
                   "target 5 at row 1 is outside [0, 5) and is not ignore_index (-100)"));
    CHECK(contains(error_of([&] {
                     cross_entropy(x, from_data<std::int64_t>({0, 1, -1, 1}, {4}));
                   }),
                   "target -1 at row 2"));
    // A custom ignore_index inside [0, V) ignores that class.
    Tensor t = from_data<std::int64_t>({0, 1, 2, 1}, {4});
    std::vector<std::int64_t> tv = {0, 1, 2, 1};
    CHECK(cross_entropy(x, t, 1).data().item() ==
          doctest::Approx(naive_cross_entropy(x.data(), tv, 1)).epsilon(1e-6));
    CHECK(contains(error_of([&] {
                     cross_entropy(x, from_data<std::int64_t>({0, 1}, {2}));
                   }),
                   "targets i64[2] cpu must have shape [4]"));
    CHECK(contains(error_of([&] { cross_entropy(x, to(t, DType::f32)); }),
                   "targets must be i64 or i32"));
    CHECK(contains(error_of([&] { cross_entropy(x, t, -100, 0); }), "chunk_rows must be positive"));
  }

  TEST_CASE("cross_entropy with ignore_index matches PyTorch: loss and gradient") {
    json doc = load_fixture("nn_cross_entropy");
    for (Tolerance tol : {kF64, kF32}) {
      Variable logits(input(doc, "logits", tol.dtype), true);
      Variable loss = cross_entropy(logits, index_input(doc, "targets"), -100, 3);
      loss.backward();
      check_close(loss.data(), doc, "loss", tol);
      check_close(logits.grad(), doc, "grad_logits", tol);
    }
  }

  // --- RoPE and XPOS -----------------------------------------------------------------------

  TEST_CASE("rope and xpos gradcheck at a position offset") {
    Generator gen(61);
    Tensor x = randn64({2, 3, 2, 4}, gen);
    check_gradcheck([](const auto& v) { return apply_rope(v[0], 5); }, {x});
    check_gradcheck([](const auto& v) { return apply_rope(v[0], 0, 100.0); }, {x});
    check_gradcheck([](const auto& v) { return apply_xpos(v[0], 5, false); }, {x});
    check_gradcheck([](const auto& v) { return apply_xpos(v[0], 5, true, 8.0); }, {x});
  }

  TEST_CASE("RoPE and XPOS match the formulas (PyTorch): values and gradients") {
    json doc = load_fixture("nn_rotary");
    for (Tolerance tol : {kF64, kF32}) {
      Variable w(input(doc, "w", tol.dtype));
      Variable x(input(doc, "x", tol.dtype), true);
      Variable q(input(doc, "q", tol.dtype), true);
      Variable k(input(doc, "k", tol.dtype), true);
      Variable rope = apply_rope(x, 3);
      Variable xpos_q = apply_xpos(q, 3, false);
      Variable xpos_k = apply_xpos(k, 3, true);
      sum(rope * w).backward();
      sum(xpos_q * w).backward();
      sum(xpos_k * w).backward();
      check_close(rope.data(), doc, "rope", tol);
      check_close(xpos_q.data(), doc, "xpos_q", tol);
      check_close(xpos_k.data(), doc, "xpos_k", tol);
      check_close(x.grad(), doc, "grad_x", tol);
      check_close(q.grad(), doc, "grad_q", tol);
      check_close(k.grad(), doc, "grad_k", tol);
    }
  }

  TEST_CASE("rope at an offset equals the tail of a longer sequence") {
    Generator gen(62);
    Tensor x = randn64({2, 9, 3, 8}, gen);
    Tensor tail = contiguous(slice(x, 1, 4, 9));
    CHECK(max_diff(slice(apply_rope(Variable(x), 2).data(), 1, 4, 9),
                   apply_rope(Variable(tail), 6).data()) < 1e-14);
    CHECK(max_diff(slice(apply_xpos(Variable(x), 2, true).data(), 1, 4, 9),
                   apply_xpos(Variable(tail), 6, true).data()) < 1e-14);
  }

  TEST_CASE("query-key scores depend only on relative position; xpos decays them") {
    Generator gen(63);
    const std::int64_t dim = 8;
    Tensor q = randn64({1, 1, 1, dim}, gen);
    Tensor k = randn64({1, 1, 1, dim}, gen);
    auto score = [&](std::int64_t m, std::int64_t n, bool xpos) {
      Variable qm = xpos ? apply_xpos(Variable(q), m, false) : apply_rope(Variable(q), m);
      Variable kn = xpos ? apply_xpos(Variable(k), n, true) : apply_rope(Variable(k), n);
      return sum(mul(qm.data(), kn.data())).item();
    };
    CHECK(score(7, 3, false) == doctest::Approx(score(1004, 1000, false)).epsilon(1e-9));
    CHECK(score(7, 3, true) == doctest::Approx(score(1004, 1000, true)).epsilon(1e-9));
    CHECK(score(3, 3, false) == doctest::Approx(sum(mul(q, k)).item()).epsilon(1e-12));
    // RoPE keeps every pair's norm.
    Tensor x = randn64({1, 5, 2, dim}, gen);
    auto in = x.to_vector<double>();
    auto out = apply_rope(Variable(x), 11).data().to_vector<double>();
    for (std::size_t i = 0; i < in.size(); i += 2) {
      CHECK(std::hypot(out[i], out[i + 1]) ==
            doctest::Approx(std::hypot(in[i], in[i + 1])).epsilon(1e-12));
    }
    // XPOS pair 0 of q at position 512 is scaled by (0.4 D / 1.4 D)^1 = 2/7.
    Tensor unit = zeros({1, 1, 1, dim}, {DType::f64});
    fill_(narrow(unit, 3, 0, 1), 1.0);
    auto scaled = apply_xpos(Variable(unit), 512, false).data().to_vector<double>();
    CHECK(std::hypot(scaled[0], scaled[1]) == doctest::Approx(2.0 / 7.0).epsilon(1e-12));
  }

  TEST_CASE("rope and xpos reject odd D, a rank other than 4 and negative offsets") {
    Generator gen(64);
    CHECK(contains(error_of([&] {
                     apply_rope(Variable(randn({1, 2, 1, 5}, gen)), 0);
                   }),
                   "must be (B, N, H, D) with D even"));
    CHECK(contains(error_of([&] {
                     apply_xpos(Variable(randn({2, 1, 4}, gen)), 0, false);
                   }),
                   "must be (B, N, H, D)"));
    CHECK(contains(error_of([&] {
                     apply_rope(Variable(randn({1, 2, 1, 4}, gen)), -1);
                   }),
                   "position_offset must be >= 0"));
  }
}

}  // namespace longnet
