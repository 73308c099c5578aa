// The backward engine: order, accumulation, graph lifetime, no-grad and detach.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "autograd/checkpoint.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/matmul.h"
#include "tensor/view.h"
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

  TEST_CASE("one gradient handed to several inputs: leaves accumulate into copies of it") {
    // add's backward gives its output gradient, one tensor, to both inputs; intermediates keep
    // it as it is, while the leaf x adds the other paths' gradients into its own in place,
    // which must not change what h, k and the inner add still have to read.
    for (int order = 0; order < 2; ++order) {
      Variable x = leaf({1, 2}, {2});
      Variable h = mul(x, 3.0);
      Variable k = mul(x, 5.0);
      k.retain_grad();
      Variable y = order == 0 ? add(add(x, h), k) : add(k, add(h, x));
      Variable w(from_data<float>({2, -1}, {2}), false);
      sum(mul(y, w)).backward();
      CHECK(grad_of(x) == std::vector<float>{18, -9});  // (1 + 3 + 5) w
      CHECK(k.grad().to_vector<float>() == std::vector<float>{2, -1});
    }
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

  TEST_CASE("add_converted adds in x's dtype; u's gradient comes back in u's") {
    Variable x = leaf({1, 2, 3}, {3});
    Variable u(to(from_data<float>({0.5F, -1, 4}, {3}), DType::bf16), true);
    Variable y = add_converted(x, u);
    CHECK(y.dtype() == DType::f32);
    CHECK(y.data().to_vector<float>() == std::vector<float>{1.5, 1, 7});
    sum(mul(y, Variable(from_data<float>({2, 3, 0.25F}, {3})))).backward();
    CHECK(grad_of(x) == std::vector<float>{2, 3, 0.25});
    CHECK(u.grad().dtype() == DType::bf16);
    CHECK(u.grad().to_vector<float>() == std::vector<float>{2, 3, 0.25});
    Variable short_u(from_data<float>({1, 2}, {2}), true);
    CHECK(error_of([&] { add_converted(x, short_u); }).find("shapes differ") != std::string::npos);
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

  TEST_CASE("gradient-ready hooks run once per pass, in the order gradients become final") {
    // A chain x W0 W1 W2 W3: backward finishes W3 first and W0 last. W0 also feeds a second
    // path that backward reaches first, so its hook must wait for both contributions.
    Generator gen(81);
    Variable x(randn({3, 4}, gen), false);
    std::vector<Variable> w;
    for (int i = 0; i < 4; ++i) w.emplace_back(randn({4, 4}, gen), true);
    std::vector<int> order;
    std::vector<Tensor> at_hook(4);
    for (int i = 0; i < 4; ++i) {
      w[i].add_grad_ready_hook([&, i](const Tensor& grad) {
        order.push_back(i);
        at_hook[i] = clone(grad);
      });
    }
    auto loss = [&] {
      Variable h = x;
      for (const Variable& wi : w) h = matmul(h, wi);
      return add(sum(h), sum(square(w[0])));
    };
    loss().backward();
    CHECK(order == std::vector<int>{3, 2, 1, 0});
    for (int i = 0; i < 4; ++i) CHECK(max_abs_diff(at_hook[i], w[i].grad()) == 0);
    // The reference: W0's gradient is x^T (1 W3^T W2^T W1^T) + 2 W0.
    Tensor up = ones({3, 4});
    for (int i = 3; i >= 1; --i) up = matmul(up, transpose(w[i].data(), 0, 1));
    Tensor expected = add(matmul(transpose(x.data(), 0, 1), up), mul(w[0].data(), 2.0));
    CHECK(max_abs_diff(at_hook[0], expected) < 1e-4);

    // A second pass runs every hook once more, with the accumulated gradient.
    for (auto& t : at_hook) fill_(t, std::nan(""));  // poisoned
    order.clear();
    loss().backward();
    CHECK(order == std::vector<int>{3, 2, 1, 0});
    CHECK(max_abs_diff(at_hook[0], mul(expected, 2.0)) < 1e-4);
  }

  TEST_CASE("gradient-ready hooks skip unreached leaves and removed hooks; a root leaf runs") {
    Variable a = leaf({1, 2}, {2});
    Variable b = leaf({3, 4}, {2});
    int a_calls = 0;
    int b_calls = 0;
    std::size_t id = a.add_grad_ready_hook([&](const Tensor&) { ++a_calls; });
    b.add_grad_ready_hook([&](const Tensor&) { ++b_calls; });
    sum(mul(a, 2.0)).backward();
    CHECK(a_calls == 1);
    CHECK(b_calls == 0);
    a.remove_grad_ready_hook(id);
    sum(add(a, b)).backward();
    CHECK(a_calls == 1);
    CHECK(b_calls == 1);
    Variable s(from_data<float>({5}, {}), true);
    std::vector<float> seen;
    s.add_grad_ready_hook([&](const Tensor& grad) { seen = grad.to_vector<float>(); });
    s.backward();
    CHECK(seen == std::vector<float>{1});
    CHECK(error_of([&] { a.remove_grad_ready_hook(id); }).find("no hook with id") !=
          std::string::npos);
    CHECK(error_of([&] {
            mul(a, 2.0).add_grad_ready_hook([](const Tensor&) {});
          }).find("needs a leaf that requires grad, got a non-leaf") != std::string::npos);
  }

  TEST_CASE("gradient-ready hooks wait for a recomputed block's inner backward") {
    Generator gen(82);
    Variable w(randn({4, 4}, gen), true);
    Variable x(randn({2, 4}, gen), true);
    auto block = [&](const Variable& h, Generator&) { return tanh(matmul(h, w)); };
    int calls = 0;
    Tensor at_hook;
    w.add_grad_ready_hook([&](const Tensor& grad) {
      ++calls;
      at_hook = clone(grad);
    });
    Generator unused(0);
    Variable y = checkpoint(block, checkpoint(block, x, unused, {w}), unused, {w});
    sum(y).backward();
    CHECK(calls == 1);
    Variable w_plain(w.data(), true);
    sum(tanh(matmul(tanh(matmul(x.detach(), w_plain)), w_plain))).backward();
    CHECK(max_abs_diff(at_hook, w_plain.grad()) < 1e-5);
    CHECK(max_abs_diff(at_hook, w.grad()) == 0);
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
