// Optimisation: AdamW against torch.optim.AdamW step by step (with clip_grad_norm_ and a
// cosine schedule; tests/golden/adamw_steps.json, written by tests/golden/make_golden.py),
// its checkpoint state, skipped and decayed parameters, the learning-rate schedules and
// gradient clipping.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/error_of.h"
#include "tests/golden_fixture.h"
#include "train/optim.h"
#include "train/safetensors.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;

using namespace fixtures;
using nlohmann::json;

// f32 runs are checked against PyTorch's f64 values: after five steps parameters are off by
// up to 7e-7 relative (7e-8 absolute), the small entries of the moments by up to 7e-6
// relative (1.4e-9 absolute).
constexpr Tolerance kAdamWF32{DType::f32, 1e-5, 1e-7};

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

// A parameter of fresh random values (f32 unless said otherwise).
Variable parameter(const Shape& shape, Generator& gen, DType dtype = DType::f32) {
  return Variable(randn(shape, gen, {dtype}), true);
}

// Gives every parameter a fresh random gradient.
void random_grads(const std::vector<Variable>& parameters, Generator& gen) {
  for (const Variable& p : parameters) p.set_grad(randn(p.shape(), gen, {p.dtype()}));
}

// Deep copies of a state's tensors (state() shares storage with the optimizer).
NamedTensors cloned(const NamedTensors& state) {
  NamedTensors out;
  for (const auto& [name, t] : state) out.emplace_back(name, clone(t));
  return out;
}

// Checks that two states have the same names, dtypes and bits.
void check_same_state(const NamedTensors& a, const NamedTensors& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO("state tensor ", a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.dtype() == b[i].second.dtype());
    CHECK(values(a[i].second) == values(b[i].second));
  }
}

// The fixture's run in dtype: per step the scheduled rate, the grad norm before clipping
// and the parameters after the step, then the moments after the last step.
void check_adamw_golden(DType dtype, Tolerance tol) {
  json doc = load_fixture("adamw_steps");
  Variable weight(input(doc, "weight_0", dtype), true);
  Variable bias(input(doc, "bias_0", dtype), true);
  AdamW opt({{"weight", weight}, {"bias", bias}}, {0.05, 0.9, 0.95, 1e-8, 0.1});
  Tensor grad_weight = input(doc, "grad_weight", dtype);
  Tensor grad_bias = input(doc, "grad_bias", dtype);
  std::vector<double> lrs = golden(doc, "lr").data;
  std::vector<double> norms = golden(doc, "grad_norm").data;
  std::vector<Tensor> weights;
  std::vector<Tensor> biases;
  for (std::int64_t t = 0; t < 5; ++t) {
    INFO("step ", t);
    double lr = scheduled_lr(0.05, Schedule::cosine, 2, 5, 0.1, t);
    CHECK(lr == doctest::Approx(lrs[t]).epsilon(1e-15));
    weight.set_grad(clone(squeeze(narrow(grad_weight, 0, t, 1), 0)));
    bias.set_grad(clone(squeeze(narrow(grad_bias, 0, t, 1), 0)));
    CHECK(clip_grad_norm({weight, bias}, 1.0) == doctest::Approx(norms[t]).epsilon(tol.rtol));
    opt.step(lr);
    weights.push_back(unsqueeze(clone(weight.data()), 0));
    biases.push_back(unsqueeze(clone(bias.data()), 0));
  }
  CHECK(opt.steps() == 5);
  check_close(concat(weights, 0), doc, "weight", tol);
  check_close(concat(biases, 0), doc, "bias", tol);
  for (const auto& [name, t] : opt.state()) {
    if (name != "step") check_close(t, doc, name, tol);
  }
}

}  // namespace

TEST_SUITE("optim") {
  TEST_CASE("AdamW with clipping and a cosine schedule matches torch.optim.AdamW in f64") {
    check_adamw_golden(DType::f64, kF64);
  }

  TEST_CASE("AdamW with clipping and a cosine schedule matches torch.optim.AdamW in f32") {
    check_adamw_golden(DType::f32, kAdamWF32);
  }

  TEST_CASE("state names the step count and both moments of every parameter, in order") {
    Generator gen(1);
    Variable w = parameter({3, 2}, gen);
    Variable b = parameter({2}, gen, DType::f64);
    AdamW opt({{"w", w}, {"b", b}}, {});
    random_grads({w, b}, gen);
    opt.step(1e-3);
    NamedTensors state = opt.state();
    REQUIRE(state.size() == 5);
    std::vector<std::string> names;
    for (const auto& [name, t] : state) names.push_back(name);
    CHECK(names == std::vector<std::string>{"step", "exp_avg.w", "exp_avg_sq.w", "exp_avg.b",
                                            "exp_avg_sq.b"});
    CHECK(state[0].second.dtype() == DType::i64);
    CHECK(state[0].second.dim() == 0);
    CHECK(state[0].second.item() == 1);
    CHECK(state[1].second.dtype() == DType::f32);
    CHECK(state[1].second.shape() == Shape{3, 2});
    CHECK(state[3].second.dtype() == DType::f64);
    CHECK(state[4].second.shape() == Shape{2});
  }

  TEST_CASE("state loaded into a fresh optimizer over cloned parameters continues bit for bit") {
    Generator gen(2);
    Variable w = parameter({5, 4}, gen);
    Variable b = parameter({4}, gen);
    Variable g = parameter({4}, gen, DType::f64);
    AdamW first({{"w", w}, {"b", b}, {"g", g}}, {});
    for (int t = 0; t < 3; ++t) {
      random_grads({w, b, g}, gen);
      first.step(1e-2);
    }
    // Through the bytes of a checkpoint file, as training saves and resumes.
    NamedTensors saved = parse_safetensors(serialize_safetensors(first.state())).tensors;
    Variable w2(clone(w.data()), true);
    Variable b2(clone(b.data()), true);
    Variable g2(clone(g.data()), true);
    AdamW second({{"w", w2}, {"b", b2}, {"g", g2}}, {});
    second.load_state(saved);
    CHECK(second.steps() == 3);
    check_same_state(second.state(), first.state());
    for (int t = 0; t < 3; ++t) {
      random_grads({w, b, g}, gen);
      w2.set_grad(clone(w.grad()));
      b2.set_grad(clone(b.grad()));
      g2.set_grad(clone(g.grad()));
      first.step(1e-2 / (t + 1));
      second.step(1e-2 / (t + 1));
    }
    CHECK(values(w2.data()) == values(w.data()));
    CHECK(values(b2.data()) == values(b.data()));
    CHECK(values(g2.data()) == values(g.data()));
    check_same_state(second.state(), first.state());
  }

  TEST_CASE("load_state reports every missing, unexpected, misshapen and mistyped tensor") {
    Generator gen(3);
    Variable w = parameter({3, 2}, gen);
    Variable b = parameter({2}, gen);
    AdamW opt({{"w", w}, {"b", b}}, {});
    random_grads({w, b}, gen);
    opt.step(1e-2);
    NamedTensors before = cloned(opt.state());

    NamedTensors bad = cloned(opt.state());
    bad.erase(bad.begin() + 3);                      // exp_avg.b
    bad[1].second = to(bad[1].second, DType::f64);   // exp_avg.w
    bad[2].second = reshape(bad[2].second, {2, 3});  // exp_avg_sq.w
    bad.emplace_back("exp_avg.extra", zeros({2}));
    std::string error = error_of([&] { opt.load_state(bad); });
    INFO(error);
    CHECK(contains(error, "AdamW::load_state"));
    CHECK(contains(error, "missing tensor 'exp_avg.b'"));
    CHECK(contains(error, "tensor 'exp_avg.w' is f64[3, 2] cpu, expected f32[3, 2]"));
    CHECK(contains(error, "tensor 'exp_avg_sq.w' is f32[2, 3] cpu, expected f32[3, 2]"));
    CHECK(contains(error, "unexpected tensor 'exp_avg.extra'"));
    CHECK(!contains(error, "'exp_avg_sq.b'"));
    CHECK(!contains(error, "'step'"));
    CHECK(opt.steps() == 1);
    check_same_state(opt.state(), before);
  }

  TEST_CASE("load_state rejects a negative, mistyped or repeated step count") {
    Generator gen(4);
    Variable w = parameter({2, 2}, gen);
    AdamW opt({{"w", w}}, {});
    NamedTensors state = cloned(opt.state());
    state[0].second = from_data<std::int64_t>({-1}, {});
    CHECK(contains(error_of([&] { opt.load_state(state); }),
                   "tensor 'step' holds -1, expected a count >= 0"));
    state[0].second = scalar(3.0, {DType::f64});
    CHECK(contains(error_of([&] { opt.load_state(state); }),
                   "tensor 'step' is f64[] cpu, expected i64[]"));
    state[0].second = from_data<std::int64_t>({3}, {});
    state.push_back(state[0]);
    CHECK(contains(error_of([&] { opt.load_state(state); }), "tensor 'step' appears twice"));
    CHECK(opt.steps() == 0);
  }

  TEST_CASE("a parameter without a gradient is skipped and later steps use the global count") {
    Generator gen(5);
    Variable w = parameter({3, 3}, gen, DType::f64);
    Variable b = parameter({3}, gen, DType::f64);
    AdamWConfig config{0.1, 0.9, 0.95, 1e-8, 0.0};
    AdamW opt({{"w", w}, {"b", b}}, config);
    std::vector<double> b0 = values(b.data());
    w.set_grad(randn(w.shape(), gen, {DType::f64}));
    opt.step(0.1);
    CHECK(values(b.data()) == b0);
    NamedTensors state = opt.state();
    CHECK(values(state[3].second) == std::vector<double>(3, 0.0));
    CHECK(values(state[4].second) == std::vector<double>(3, 0.0));

    // b's first update comes at step 2: its bias corrections are those of t = 2.
    b.set_grad(randn(b.shape(), gen, {DType::f64}));
    std::vector<double> grad = values(b.grad());
    opt.step(0.1);
    std::vector<double> b1 = values(b.data());
    for (std::size_t i = 0; i < grad.size(); ++i) {
      double m = 0.1 * grad[i] / (1 - 0.9 * 0.9);
      double v = std::sqrt(0.05 * grad[i] * grad[i] / (1 - 0.95 * 0.95));
      CHECK(b1[i] == doctest::Approx(b0[i] - 0.1 * m / (v + 1e-8)).epsilon(1e-14));
    }
  }

  TEST_CASE("matrices decay, vectors and scalars do not") {
    Generator gen(6);
    CHECK(decays("layers.0.fc1.weight", parameter({4, 3}, gen)));
    CHECK(decays("embed_tokens.weight", parameter({2, 3, 4}, gen)));
    CHECK_FALSE(decays("layers.0.fc1.bias", parameter({4}, gen)));
    CHECK_FALSE(decays("gamma", parameter({}, gen)));
  }

  TEST_CASE("weight decay is decoupled: with a zero gradient p shrinks by exactly 1 - lr * wd") {
    Generator gen(7);
    Variable w = parameter({4, 5}, gen, DType::f64);
    Variable b = parameter({5}, gen, DType::f64);
    AdamW opt({{"w", w}, {"b", b}}, {0.1, 0.9, 0.95, 1e-8, 0.3});
    std::vector<double> w0 = values(w.data());
    std::vector<double> b0 = values(b.data());
    w.set_grad(zeros_like(w.data()));
    b.set_grad(zeros_like(b.data()));
    opt.step(0.05);
    std::vector<double> w1 = values(w.data());
    for (std::size_t i = 0; i < w0.size(); ++i) CHECK(w1[i] == w0[i] * (1 - 0.05 * 0.3));
    CHECK(values(b.data()) == b0);
  }

  TEST_CASE("bf16 parameters keep f32 moments and are rounded once per step") {
    Generator gen(8);
    // bf16 values, held exactly by f32 as well.
    Tensor start = to(randn({6, 7}, gen), DType::bf16);
    Tensor grad = to(randn({6, 7}, gen), DType::bf16);
    Variable p16(clone(start), true);
    Variable p32(to(start, DType::f32), true);
    AdamW opt16({{"p", p16}}, {});
    AdamW opt32({{"p", p32}}, {});
    for (int t = 0; t < 3; ++t) {
      p16.set_grad(grad);
      p32.set_grad(to(grad, DType::f32));
      opt16.step(0.01);
      opt32.step(0.01);
      // p32 kept its unrounded value; rounding the same f32 update of the rounded value
      // is what the bf16 parameter must hold.
      copy_(p32.data(), to(to(p32.data(), DType::bf16), DType::f32));
    }
    CHECK(values(p16.data()) == values(p32.data()));
    check_same_state(opt16.state(), opt32.state());
    CHECK(opt16.state()[1].second.dtype() == DType::f32);
  }

  TEST_CASE("AdamW rejects bad configurations, repeated names and mismatched gradients") {
    Generator gen(9);
    Variable w = parameter({2, 2}, gen);
    CHECK(contains(error_of([&] {
                     AdamW({{"w", w}, {"w", w}}, {});
                   }),
                   "two parameters are named 'w'"));
    CHECK(contains(error_of([&] {
                     AdamW({{"w", w}}, {3e-4, 1.0});
                   }),
                   "AdamW: beta1 is 1, expected in [0, 1)"));
    CHECK(contains(error_of([&] {
                     AdamW({{"w", w}}, {3e-4, 0.9, 0.95, 1e-8, -0.1});
                   }),
                   "AdamW: weight_decay is -0.1, expected a finite value >= 0"));

    Variable b = parameter({2}, gen);
    AdamW opt({{"b", b}, {"w", w}}, {});
    std::vector<double> b0 = values(b.data());
    b.set_grad(randn({2}, gen));
    w.set_grad(randn({2}, gen));
    std::string error = error_of([&] { opt.step(1e-3); });
    CHECK(contains(error, "gradient f32[2] cpu of parameter 'w' f32[2, 2] cpu"));
    CHECK(values(b.data()) == b0);
    CHECK(opt.steps() == 0);
    CHECK(contains(error_of([&] { opt.step(-1); }),
                   "AdamW::step: lr is -1, expected a finite value >= 0"));
  }

  TEST_CASE("scheduled_lr warms up linearly, then decays to the minimum at the last step") {
    // lr 2, warmup 4, total 13: warmup steps 0..3, decay from step 4 to step 12 (8 steps).
    auto lr = [](Schedule s, std::int64_t step) { return scheduled_lr(2.0, s, 4, 13, 0.1, step); };
    for (Schedule s : {Schedule::cosine, Schedule::linear, Schedule::constant}) {
      INFO(schedule_name(s));
      CHECK(lr(s, 0) == doctest::Approx(0.5));
      CHECK(lr(s, 1) == doctest::Approx(1.0));
      CHECK(lr(s, 3) == doctest::Approx(2.0));
      CHECK(lr(s, 4) == doctest::Approx(2.0));
    }
    double quarter = 0.2 + 0.5 * (1 + std::cos(std::numbers::pi / 4)) * 1.8;
    CHECK(lr(Schedule::cosine, 6) == doctest::Approx(quarter));
    CHECK(lr(Schedule::cosine, 8) == doctest::Approx(1.1));
    CHECK(lr(Schedule::cosine, 12) == doctest::Approx(0.2));
    CHECK(lr(Schedule::cosine, 100) == doctest::Approx(0.2));
    CHECK(lr(Schedule::linear, 6) == doctest::Approx(1.55));
    CHECK(lr(Schedule::linear, 8) == doctest::Approx(1.1));
    CHECK(lr(Schedule::linear, 12) == doctest::Approx(0.2));
    CHECK(lr(Schedule::linear, 13) == doctest::Approx(0.2));
    CHECK(lr(Schedule::constant, 12) == 2.0);
    CHECK(lr(Schedule::constant, 1000) == 2.0);
  }

  TEST_CASE("scheduled_lr without warmup starts at the peak rate") {
    CHECK(scheduled_lr(1.0, Schedule::cosine, 0, 11, 0.0, 0) == 1.0);
    CHECK(scheduled_lr(1.0, Schedule::cosine, 0, 11, 0.0, 5) == doctest::Approx(0.5));
    CHECK(scheduled_lr(1.0, Schedule::cosine, 0, 11, 0.0, 10) == doctest::Approx(0.0));
    CHECK(scheduled_lr(1.0, Schedule::linear, 0, 11, 0.0, 0) == 1.0);
    CHECK(scheduled_lr(1.0, Schedule::linear, 0, 11, 0.0, 10) == doctest::Approx(0.0));
    CHECK(scheduled_lr(1.0, Schedule::constant, 0, 11, 0.0, 0) == 1.0);
    // A single step is both the first and the last: the peak rate.
    CHECK(scheduled_lr(1.0, Schedule::cosine, 0, 1, 0.5, 0) == 1.0);
    CHECK(scheduled_lr(1.0, Schedule::cosine, 0, 1, 0.5, 7) == 1.0);
  }

  TEST_CASE("scheduled_lr rejects impossible step counts and ratios") {
    CHECK(contains(error_of([] { scheduled_lr(1.0, Schedule::cosine, 10, 10, 0.1, 0); }),
                   "warmup_steps 10 and total_steps 10 must satisfy"));
    CHECK(contains(error_of([] { scheduled_lr(1.0, Schedule::cosine, 0, 10, 1.5, 0); }),
                   "min_lr_ratio is 1.5"));
    CHECK(contains(error_of([] { scheduled_lr(1.0, Schedule::cosine, 0, 10, 0.1, -1); }),
                   "step is -1"));
  }

  TEST_CASE("schedule names parse and print; an unknown name lists the valid ones") {
    for (Schedule s : {Schedule::cosine, Schedule::linear, Schedule::constant}) {
      CHECK(parse_schedule(schedule_name(s)) == s);
    }
    CHECK(std::string(schedule_name(Schedule::cosine)) == "cosine");
    CHECK(error_of([] { parse_schedule("foo"); }) ==
          "schedule is \"foo\" (valid: cosine, linear, constant)");
    CHECK(error_of([] { parse_schedule("Cosine"); }) ==
          "schedule is \"Cosine\" (valid: cosine, linear, constant)");
  }

  TEST_CASE("clip_grad_norm returns the global norm and leaves gradients within max_norm alone") {
    Generator gen(10);
    Variable w = parameter({7, 5}, gen);
    Variable b = parameter({5}, gen, DType::f64);
    Variable unused = parameter({3}, gen);
    random_grads({w, b}, gen);
    double sum = 0;
    for (const Variable& p : {w, b}) {
      for (double x : values(p.grad())) sum += x * x;
    }
    std::vector<double> w_grad = values(w.grad());
    std::vector<double> b_grad = values(b.grad());
    double norm = clip_grad_norm({w, b, unused}, std::sqrt(sum) * 1.01);
    CHECK(norm == doctest::Approx(std::sqrt(sum)).epsilon(1e-14));
    CHECK(values(w.grad()) == w_grad);
    CHECK(values(b.grad()) == b_grad);
    CHECK_FALSE(unused.grad().defined());
    CHECK(clip_grad_norm({unused}, 1.0) == 0);
  }

  TEST_CASE("clip_grad_norm scales every gradient by max_norm / (norm + 1e-6) above max_norm") {
    Generator gen(11);
    Variable w = parameter({7, 5}, gen);
    Variable b = parameter({5}, gen, DType::f64);
    random_grads({w, b}, gen);
    std::vector<double> w_grad = values(w.grad());
    std::vector<double> b_grad = values(b.grad());
    double norm = clip_grad_norm({w, b}, 0.5);
    double coef = 0.5 / (norm + 1e-6);
    REQUIRE(coef < 0.5);
    std::vector<double> w_clipped = values(w.grad());
    std::vector<double> b_clipped = values(b.grad());
    for (std::size_t i = 0; i < w_grad.size(); ++i) {
      CHECK(w_clipped[i] == doctest::Approx(w_grad[i] * coef).epsilon(1e-6));
    }
    for (std::size_t i = 0; i < b_grad.size(); ++i) {
      CHECK(b_clipped[i] == doctest::Approx(b_grad[i] * coef).epsilon(1e-14));
    }
    CHECK(clip_grad_norm({w, b}, 10.0) == doctest::Approx(0.5).epsilon(1e-5));
    CHECK(contains(error_of([&] { clip_grad_norm({w}, 0); }), "max_norm is 0, expected > 0"));
  }

  TEST_CASE("clip_grad_norm returns a NaN or infinite norm and scales nothing") {
    Generator gen(12);
    Variable w = parameter({4, 4}, gen);
    Variable b = parameter({4}, gen);
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
      INFO("bad value ", bad);
      random_grads({w, b}, gen);
      fill_(narrow(b.grad(), 0, 2, 1), bad);
      std::vector<double> w_grad = values(w.grad());
      std::vector<double> b_grad = values(b.grad());
      double norm = clip_grad_norm({w, b}, 1e-3);
      CHECK(std::isnan(norm) == std::isnan(bad));
      CHECK(std::isinf(norm) == std::isinf(bad));
      CHECK(values(w.grad()) == w_grad);
      std::vector<double> b_after = values(b.grad());
      for (std::size_t i : {0, 1, 3}) CHECK(b_after[i] == b_grad[i]);
    }
  }
}

}  // namespace longnet
