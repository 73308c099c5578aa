// The backward engine: order, accumulation, graph lifetime, no-grad and detach.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "autograd/checkpoint.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tests/error_of.h"

namespace longnet {
namespace {

using testing::error_of;

Variable leaf(const std::vector<float>& v, const Shape& shape) {
  return Variable(from_data<float>(v, shape), true);
}
std::vector<float> grad_of(const Variable& v) { return v.grad().to_vector<float>(); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>();
  auto y = b.to_vector<double>();
  double m = x.size() == y.size() ? 0.0 : 1e300;
  for (std::size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

double max_abs_norm(const Tensor& a) { return max_abs_diff(a, zeros(a.shape(), {a.dtype()})); }

}  // namespace

TEST_SUITE("autograd") {
  TEST_CASE("a diamond graph sums the gradients of both paths") {
    Variable x = leaf({2, 3}, {2});
    Variable y = mul(x, x);            // dy/dx = 2x
    Variable z = add(y, mul(y, 3.0));  // z = 4 x^2
    Variable loss = sum(mul(z, x));    // 4 x^3 -> 12 x^2
    loss.backward();
    CHECK(grad_of(x) == std::vector<float>{48, 108});
    CHECK(!y.grad().defined());  // intermediates keep no gradient by default
  }

  TEST_CASE("leaf gradients accumulate across backward calls until zeroed") {
    Variable x = leaf({1, -1}, {2});
    sum(mul(x, 5.0)).backward();
    sum(mul(x, 5.0)).backward();
    CHECK(grad_of(x) == std::vector<float>{10, 10});
    x.zero_grad();
    sum(x).backward();
    CHECK(grad_of(x) == std::vector<float>{1, 1});
  }

  TEST_CASE("a graph is freed after backward unless kept") {
    Variable x = leaf({1, 2}, {2});
    Variable loss = sum(exp(x));
    loss.backward({}, true);
    loss.backward();
    CHECK(grad_of(x)[0] == doctest::Approx(2 * std::exp(1.0)));
    CHECK(error_of([&] { loss.backward(); }).find("a second time") != std::string::npos);
  }

  TEST_CASE("retain_grad keeps an intermediate gradient") {
    Variable x = leaf({1, 2, 3}, {3});
    Variable y = mul(x, 2.0);
    y.retain_grad();
    sum(square(y)).backward();
    CHECK(y.grad().to_vector<float>() == std::vector<float>{4, 8, 12});
  }

  TEST_CASE("no-grad guard records nothing and detach cuts the graph") {
    Variable x = leaf({1, 2}, {2});
    {
      NoGradGuard guard;
      Variable y = mul(x, x);
      CHECK(!y.requires_grad());
      CHECK(y.is_leaf());
    }
    CHECK(grad_enabled());
    Variable d = mul(x, x).detach();
    CHECK(!d.requires_grad());
    Variable loss = sum(mul(d, x));  // d is a constant here
    loss.backward();
    CHECK(grad_of(x) == std::vector<float>{1, 4});
  }

  TEST_CASE("an explicit output gradient seeds backward; a missing one needs a scalar") {
    Variable x = leaf({1, 2}, {2});
    Variable y = mul(x, 3.0);
    y.backward(from_data<float>({1, -1}, {2}));
    CHECK(grad_of(x) == std::vector<float>{3, -3});
    Variable z = mul(x, 3.0);
    CHECK(error_of([&] { z.backward(); }).find("one-element") != std::string::npos);
    CHECK(error_of([] { Variable(zeros({2}, {DType::i64}), true); }).find("floating") !=
          std::string::npos);
  }

  TEST_CASE("inputs that need no gradient get none") {
    Variable x = leaf({1, 2}, {2});
    Variable c(from_data<float>({3, 4}, {2}));
    sum(mul(x, c)).backward();
    CHECK(grad_of(x) == std::vector<float>{3, 4});
    CHECK(!c.grad().defined());
  }

  TEST_CASE("cast gradients are cast back to the input dtype") {
    Variable x(from_data<double>({0.5, 1.5}, {2}), true);
    sum(mul(to(x, DType::f32), 2.0)).backward();
    CHECK(x.grad().dtype() == DType::f64);
    CHECK(x.grad().to_vector<double>() == std::vector<double>{2, 2});
    Variable b(to(from_data<float>({1, 2}, {2}), DType::bf16), true);
    sum(to(b, DType::f32)).backward();
    CHECK(b.grad().dtype() == DType::bf16);
  }

  TEST_CASE("a deep chain runs backward without recursion limits") {
    Variable x = leaf({1}, {1});
    Variable y = x;
    for (int i = 0; i < 20000; ++i) y = add(y, 1e-4);
    sum(y).backward();
    CHECK(grad_of(x) == std::vector<float>{1});
  }

  TEST_CASE("checkpoint recomputes in backward: same values and gradients, same random draws") {
    Generator init(71);
    Variable w(randn({5, 5}, init, {DType::f64}), true);
    Variable b(randn({5}, init, {DType::f64}), true);
    // A block with parameters and a random draw (as dropout makes).
    auto block = [&](const Variable& x, Generator& gen) {
      Variable noise(randn({3, 5}, gen, {DType::f64}));
      return mul(tanh(add(matmul(x, w), b)), noise);
    };
    Tensor x0 = randn({3, 5}, init, {DType::f64});
    Tensor seed = randn({3, 5}, init, {DType::f64});

    Generator plain_gen(9);
    Variable xp(x0, true);
    Variable plain = block(block(xp, plain_gen), plain_gen);
    plain.backward(seed);
    Tensor want_x = xp.grad();
    Tensor want_w = w.grad();
    Tensor want_b = b.grad();
    w.zero_grad();
    b.zero_grad();

    Generator gen(9);
    Variable xc(x0, true);
    Variable h = checkpoint(block, xc, gen, {w, b});
    Variable y = checkpoint(block, h, gen, {w, b});
    CHECK(gen.offset() == plain_gen.offset());
    CHECK(max_abs_diff(y.data(), plain.data()) == 0);
    y.backward(seed, true);
    CHECK(max_abs_diff(xc.grad(), want_x) == 0);
    CHECK(max_abs_diff(w.grad(), want_w) < 1e-14);
    CHECK(max_abs_diff(b.grad(), want_b) < 1e-14);

    // A second backward (graph kept) replays the same draws: the gradients double.
    y.backward(seed);
    CHECK(max_abs_diff(w.grad(), mul(want_w, 2.0)) < 1e-13);

    // An input that needs no gradient still sends the parameters theirs.
    w.zero_grad();
    b.zero_grad();
    Generator again(9);
    Variable z = checkpoint(block, Variable(x0), again, {w, b});
    z.backward(seed);
    REQUIRE(w.grad().defined());
    CHECK(max_abs_norm(w.grad()) > 0);
  }

  TEST_CASE("the graph keeps no intermediate result that no backward function needs") {
    Generator gen(72);
    Variable x(randn({64, 64}, gen), true);
    std::weak_ptr<Storage> middle;
    Variable y;
    {
      Variable h = add(x, x);  // add's backward needs neither input
      middle = h.data().storage();
      y = add(h, x);
    }
    CHECK(middle.expired());
    y.backward(ones({64, 64}));
    CHECK(max_abs_diff(x.grad(), full({64, 64}, 3.0)) == 0);

    // Where backward needs a value (tanh keeps its output), the graph holds that one.
    std::weak_ptr<Storage> kept;
    {
      Variable t = tanh(x);
      kept = t.data().storage();
      y = mul(t, 2.0);
    }
    CHECK_FALSE(kept.expired());
    y.backward(ones({64, 64}));
    CHECK(kept.expired());  // freed with the graph
  }

  TEST_CASE("gradcheck catches a wrong gradient") {
    // A function whose backward is deliberately wrong: value x^2, claimed gradient 3x.
    auto wrong = [](const std::vector<Variable>& x) {
      Tensor xd = x[0].data();
      return make_result(square(xd), {x[0]}, "wrong", [xd](const Tensor& g) {
        return std::vector<Tensor>{mul(g, mul(xd, 3.0))};
      });
    };
    Generator gen(1);
    GradcheckResult r = gradcheck(wrong, {randn({3}, gen)});
    CHECK(!r.ok);
    CHECK(r.message.find("analytic") != std::string::npos);
    auto right = [](const std::vector<Variable>& x) { return square(x[0]); };
    CHECK(gradcheck(right, {randn({3}, gen)}).ok);
  }
}

}  // namespace longnet
