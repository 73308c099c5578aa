// longnet-demo: trains a tiny two-layer network on a synthetic task (which of three
// interleaved spirals a 2-d point lies on) with the engine's autograd and plain SGD with
// momentum, and prints the loss as it falls. Deterministic for a given --seed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numbers>
#include <string>

#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/reduce.h"
#include "tensor/view.h"

namespace longnet {
namespace {

struct Options {
  int steps = 600;
  int hidden = 64;
  std::uint64_t seed = 1;
  double lr = 0.3;
};

// Points on three spirals with noise; the label is the spiral.
void make_spirals(std::int64_t n, Generator& gen, Tensor& points, Tensor& labels) {
  constexpr int kClasses = 3;
  Tensor t = uniform({n}, 0.05, 1.0, gen, {DType::f64});
  Tensor noise = randn({n, 2}, gen, {DType::f64});
  auto tv = t.to_vector<double>();
  auto nv = noise.to_vector<double>();
  std::vector<float> xy(static_cast<std::size_t>(2 * n));
  std::vector<std::int64_t> cls(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    cls[i] = i % kClasses;
    double angle = 4.0 * tv[i] + 2.0 * std::numbers::pi * double(cls[i]) / kClasses;
    xy[2 * i] = static_cast<float>(tv[i] * std::cos(angle) + 0.02 * nv[2 * i]);
    xy[2 * i + 1] = static_cast<float>(tv[i] * std::sin(angle) + 0.02 * nv[2 * i + 1]);
  }
  points = from_data(xy, {n, 2});
  labels = from_data(cls, {n, 1});
}

int run(const Options& opt) {
  Generator gen(opt.seed);
  Tensor points;
  Tensor labels;
  make_spirals(768, gen, points, labels);
  auto init = [&](const Shape& shape, double fan_in) {
    return Variable(mul(randn(shape, gen), 1.0 / std::sqrt(fan_in)), true);
  };
  std::vector<Variable> params = {init({2, opt.hidden}, 2),
                                  Variable(zeros({opt.hidden}), true),
                                  init({opt.hidden, opt.hidden}, opt.hidden),
                                  Variable(zeros({opt.hidden}), true),
                                  init({opt.hidden, 3}, opt.hidden),
                                  Variable(zeros({3}), true)};
  std::vector<Tensor> velocity;
  velocity.reserve(params.size());
  for (const auto& p : params) velocity.push_back(zeros_like(p.data()));

  Variable x(points);
  double first = 0;
  double last = 0;
  std::printf(
      "longnet-demo: 3-class spirals, 768 points, MLP 2-%d-%d-3, SGD momentum 0.9, lr %.2f\n",
      opt.hidden, opt.hidden, opt.lr);
  for (int step = 0; step <= opt.steps; ++step) {
    Variable h = gelu(add(matmul(x, params[0]), params[1]));
    h = gelu(add(matmul(h, params[2]), params[3]));
    Variable logp = log_softmax(add(matmul(h, params[4]), params[5]), 1);
    Variable loss = neg(mean(gather(logp, 1, labels)));
    double value = loss.data().item();
    if (step == 0) first = value;
    last = value;
    if (step % 50 == 0) {
      Tensor predicted = argmax(logp.data(), 1, true);
      double accuracy = mean(to(binary(BinaryOp::eq, predicted, labels), DType::f32)).item();
      std::printf("step %4d  loss %.4f  accuracy %5.1f%%\n", step, value, 100 * accuracy);
    }
    if (step == opt.steps) break;
    for (auto& p : params) p.zero_grad();
    loss.backward();
    NoGradGuard no_grad;
    for (std::size_t i = 0; i < params.size(); ++i) {
      Tensor v = add(mul(velocity[i], 0.9), params[i].grad());
      copy_(velocity[i], v);
      copy_(params[i].data(), sub(params[i].data(), mul(v, opt.lr)));
    }
  }
  std::printf("loss fell from %.4f to %.4f\n", first, last);
  return last < first ? 0 : 1;
}

}  // namespace
}  // namespace longnet

int main(int argc, char** argv) {
  longnet::Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "--steps" && has_value) {
      opt.steps = std::atoi(argv[++i]);
    } else if (arg == "--seed" && has_value) {
      opt.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--lr" && has_value) {
      opt.lr = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: longnet-demo [--steps N] [--seed S] [--lr LR]\n");
      return 2;
    }
  }
  if (opt.steps < 1 || opt.lr <= 0) {
    std::fprintf(stderr, "longnet-demo: --steps must be >= 1 and --lr > 0\n");
    return 2;
  }
  try {
    return longnet::run(opt);
  } catch (const longnet::Error& e) {
    std::fprintf(stderr, "longnet-demo: %s\n", e.what());
    return 1;
  }
}
