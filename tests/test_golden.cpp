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
#include "tests/golden_fixture.h"

namespace {

using namespace longnet;
using nlohmann::json;

using namespace fixtures;

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
