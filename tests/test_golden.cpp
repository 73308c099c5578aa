// Golden values: composite computations whose loss, outputs and gradients PyTorch computed
// in float64 (tests/golden/*.json, written by tests/golden/make_golden.py). Each case is
// rebuilt with our ops and checked elementwise in f64 (to ~1e-10) and in f32 (to ~1e-5
// relative, against the same f64 values).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/variable.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/tensor.h"
#include "tensor/view.h"

namespace {

using namespace longnet;
using nlohmann::json;

// |actual - expected| <= atol + rtol * |expected|, elementwise. The f32 atol covers
// cancellation: an output near 0 summed from O(1) f32 products keeps their ~1e-6 absolute
// error (measured up to 1.3e-6 on y of matmul_chain; f64 errors stay below 1e-14).
struct Tolerance {
  DType dtype;
  double rtol;
  double atol;
};
constexpr Tolerance kF64{DType::f64, 1e-10, 1e-12};
constexpr Tolerance kF32{DType::f32, 1e-5, 1e-5};

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

// A fixture tensor as a tensor of dtype (values cast from the stored f64).
Tensor input(const json& doc, const std::string& key, DType dtype) {
  Golden g = golden(doc, key);
  return to(from_data<double>(g.data, g.shape), dtype);
}

Tensor index_input(const json& doc, const std::string& key) {
  const json& t = doc.at(key);
  return from_data<std::int64_t>(t.at("data").get<std::vector<std::int64_t>>(),
                                 t.at("shape").get<Shape>());
}

// Checks every element of actual against the fixture's tensor key; one CHECK per tensor,
// whose message lists the first mismatches.
void check_close(const Tensor& actual, const json& doc, const std::string& key, Tolerance tol) {
  // A std::string: doctest would print a bare const char* as a pointer.
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
    if (!(err <= tol.atol + tol.rtol * std::abs(want))) {  // also catches NaN
      if (++mismatches <= 8) {
        report << "\n  [" << i << "] got " << got[i] << ", PyTorch " << want << " (abs err " << err
               << ")";
      }
    }
  }
  CHECK_MESSAGE(mismatches == 0, mismatches, " of ", got.size(), " elements of ", where,
                " differ from PyTorch beyond rtol ", tol.rtol, ", atol ", tol.atol, report.str());
}

// loss = nll_loss(log_softmax(x, -1), targets), mean over the batch.
void check_log_softmax_nll(const json& doc, Tolerance tol) {
  Variable x(input(doc, "x", tol.dtype), true);
  Tensor targets = index_input(doc, "targets");
  std::int64_t n = targets.numel();

  Variable logp = log_softmax(x, -1);
  Variable loss = -mean(gather(logp, 1, reshape(targets, {n, 1})));
  loss.backward();

  check_close(loss.data(), doc, "loss", tol);
  check_close(x.grad(), doc, "grad_x", tol);
}

// y = (A @ B) @ C + bias with batch broadcasting; loss = sum(y * w).
void check_matmul_chain(const json& doc, Tolerance tol) {
  Variable a(input(doc, "A", tol.dtype), true);
  Variable b(input(doc, "B", tol.dtype), true);
  Variable c(input(doc, "C", tol.dtype), true);
  Variable bias(input(doc, "bias", tol.dtype), true);
  Variable w(input(doc, "w", tol.dtype));

  Variable y = matmul(matmul(a, b), c) + bias;
  Variable loss = sum(y * w);
  loss.backward();

  check_close(y.data(), doc, "y", tol);
  check_close(loss.data(), doc, "loss", tol);
  check_close(a.grad(), doc, "grad_A", tol);
  check_close(b.grad(), doc, "grad_B", tol);
  check_close(c.grad(), doc, "grad_C", tol);
  check_close(bias.grad(), doc, "grad_bias", tol);
}

// loss = x.sum(1).mean() + x.max(2).values.sum() * 0.5
//      + (x.exp().mean((0, 2), keepdim=True) * x).sum()
void check_reduction_mix(const json& doc, Tolerance tol) {
  Variable x(input(doc, "x", tol.dtype), true);

  Variable row_sums = mean(sum(x, {1}));
  Variable maxima = mul(sum(max(x, 2)), 0.5);
  Variable weighted = sum(mean(exp(x), {0, 2}, true) * x);
  Variable loss = row_sums + maxima + weighted;
  loss.backward();

  check_close(loss.data(), doc, "loss", tol);
  check_close(x.grad(), doc, "grad_x", tol);
}

}  // namespace

TEST_SUITE("golden") {
  TEST_CASE("log_softmax + nll_loss matches PyTorch: loss and input gradient") {
    json doc = load_fixture("log_softmax_nll");
    SUBCASE("f64") { check_log_softmax_nll(doc, kF64); }
    SUBCASE("f32") { check_log_softmax_nll(doc, kF32); }
  }

  TEST_CASE("broadcast matmul chain with bias matches PyTorch: output, loss and all gradients") {
    json doc = load_fixture("matmul_chain");
    SUBCASE("f64") { check_matmul_chain(doc, kF64); }
    SUBCASE("f32") { check_matmul_chain(doc, kF32); }
  }

  TEST_CASE("sum, mean, max and broadcast reductions match PyTorch: loss and input gradient") {
    json doc = load_fixture("reduction_mix");
    SUBCASE("f64") { check_reduction_mix(doc, kF64); }
    SUBCASE("f32") { check_reduction_mix(doc, kF32); }
  }
}
