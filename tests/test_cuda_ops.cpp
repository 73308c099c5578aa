// The tensor ops on the GPU against the CPU, the oracle: one small case per op and shape
// (broadcasting, size-1, odd, empty and multi-block shapes), run from the same fresh random
// inputs on both devices, in every dtype the op takes and in four GPU layouts (contiguous,
// contiguous but misaligned, every other element of a wider buffer, and a transposed view
// of the last two dims).
// Outputs are poisoned first: the ops allocate their results, so NaN-filled blocks of the
// result's size are handed back to the caching allocator just before, for the op to reuse.
// Differentiable cases also compare input gradients through autograd, which runs each op's
// backward through the GPU kernels.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"
#include "tensor/softmax.h"
#include "tensor/view.h"
#include "tests/gpu_check.h"

namespace longnet {
namespace {

using testing::kGpu;
using testing::poisoned;
using testing::relative_error;
using testing::tolerance_for;

enum class Domain { normal, positive, small_int, mask, index, index32 };

struct Input {
  Shape shape;
  Domain domain = Domain::normal;
  std::int64_t high = 0;  // indices are drawn from [0, high)
};

Input pos(Shape shape) { return {std::move(shape), Domain::positive}; }
Input ints(Shape shape) { return {std::move(shape), Domain::small_int}; }
Input mask(Shape shape) { return {std::move(shape), Domain::mask}; }
Input idx(Shape shape, std::int64_t high) { return {std::move(shape), Domain::index, high}; }
Input idx32(Shape shape, std::int64_t high) { return {std::move(shape), Domain::index32, high}; }

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
using GradFn = std::function<Variable(const std::vector<Variable>&)>;

const std::vector<DType> kFloating = {DType::f32, DType::bf16, DType::f64};
const std::vector<DType> kAll = {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64};

struct OpCase {
  std::string name;
  std::vector<Input> inputs;
  Fn op;
  std::vector<DType> dtypes = kFloating;
  GradFn grad;  // the same op on Variables; empty when not differentiable
};

enum class Layout { contiguous, offset, strided, transposed };
const char* name(Layout layout) {
  static constexpr const char* kNames[] = {"contiguous", "offset", "strided", "transposed"};
  return kNames[static_cast<int>(layout)];
}

// Values of the domain, in dtype where the input takes the case's dtype.
Tensor draw(const Input& in, DType dtype, Generator& gen) {
  switch (in.domain) {
    case Domain::normal:
      return is_floating(dtype) ? to(randn(in.shape, gen, {DType::f64}), dtype)
                                : randint(-50, 50, in.shape, gen, {dtype});
    case Domain::positive:
      return to(uniform(in.shape, 0.5, 2.0, gen, {DType::f64}), dtype);
    case Domain::small_int:
      return to(randint(-2, 3, in.shape, gen), dtype);
    case Domain::mask:
      return randint(0, 2, in.shape, gen);
    case Domain::index:
      return randint(0, in.high, in.shape, gen);
    case Domain::index32:
      return randint(0, in.high, in.shape, gen, {DType::i32, Device::cpu()});
  }
  return {};
}

double poison_value(DType dtype) {
  return is_floating(dtype) ? std::numeric_limits<double>::quiet_NaN() : -123456789.0;
}

// t's values on the GPU in the given layout. The offset layout is contiguous but starts
// one element into its buffer (so not 16-byte aligned); the strided one takes every other
// element of a poisoned buffer twice as wide; the transposed one stores the last two dims
// swapped.
Tensor on_gpu(const Tensor& t, Layout layout) {
  if (layout == Layout::offset) {
    Tensor buffer = full({t.numel() + 1}, poison_value(t.dtype()), {t.dtype()});
    copy_(reshape(narrow(buffer, 0, 1, t.numel()), t.shape()), t);
    return reshape(narrow(to(buffer, kGpu), 0, 1, t.numel()), t.shape());
  }
  if (layout == Layout::transposed && t.dim() >= 2) {
    return transpose(to(contiguous(transpose(t, -1, -2)), kGpu), -1, -2);
  }
  if (layout == Layout::strided && t.dim() >= 1) {
    Shape wide = t.shape();
    wide.back() *= 2;
    Tensor buffer = full(wide, poison_value(t.dtype()), {t.dtype()});
    copy_(slice(buffer, -1, 0, wide.back(), 2), t);
    return slice(to(buffer, kGpu), -1, 0, wide.back(), 2);
  }
  return to(t, kGpu);
}

// Hands NaN-filled blocks of like's size back to the caching allocator, so that the next
// allocation of that size (the op's result) starts out poisoned.
void poison_allocator(const Tensor& like) {
  std::vector<Tensor> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(poisoned(like.shape(), {like.dtype(), kGpu}));
}

std::vector<Layout> layouts_of(const OpCase& c) {
  bool has_2d = false;
  for (const auto& in : c.inputs) has_2d = has_2d || in.shape.size() >= 2;
  if (has_2d) return {Layout::contiguous, Layout::offset, Layout::strided, Layout::transposed};
  return {Layout::contiguous, Layout::offset, Layout::strided};
}

std::vector<Tensor> draw_all(const OpCase& c, DType dtype, Generator& gen) {
  std::vector<Tensor> inputs;
  for (const auto& in : c.inputs) inputs.push_back(draw(in, dtype, gen));
  return inputs;
}

void check_values(const OpCase& c, std::uint64_t seed) {
  for (DType dtype : c.dtypes) {
    Generator gen(seed);
    std::vector<Tensor> host = draw_all(c, dtype, gen);
    Tensor expected = c.op(host);
    for (Layout layout : layouts_of(c)) {
      std::string what = cat(c.name, " (", name(dtype), ", ", name(layout), ")");
      std::vector<Tensor> device;
      for (const auto& t : host) device.push_back(on_gpu(t, layout));
      poison_allocator(expected);
      Tensor got = c.op(device);
      REQUIRE_MESSAGE(got.device() == kGpu, what, ": result on ", str(got.device()));
      CHECK_MESSAGE(got.dtype() == expected.dtype(), what, ": dtype ", name(got.dtype()));
      double err = relative_error(got, expected);
      CHECK_MESSAGE(err <= tolerance_for(dtype), what, ": relative error ", err);
    }
  }
}

// Gradients of sum(op(inputs) * w) for a random w, on both devices, in f32 and (where the
// case takes it) bf16.
void check_gradients(const OpCase& c, std::uint64_t seed) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    if (std::find(c.dtypes.begin(), c.dtypes.end(), dtype) == c.dtypes.end()) continue;
    Generator gen(seed);
    std::vector<Tensor> host = draw_all(c, dtype, gen);
    for (Layout layout : layouts_of(c)) {
      std::string what = cat(c.name, " gradient (", name(dtype), ", ", name(layout), ")");
      std::vector<Variable> cpu;
      std::vector<Variable> gpu;
      for (const auto& t : host) {
        bool floating = is_floating(t.dtype());
        cpu.emplace_back(t, floating);
        gpu.emplace_back(on_gpu(t, layout), floating);
      }
      Variable y = c.grad(cpu);
      Generator wgen(seed + 1);
      Tensor w = to(randn(y.shape(), wgen, {DType::f64}), y.dtype());
      sum(mul(y, Variable(w))).backward();
      sum(mul(c.grad(gpu), Variable(to(w, kGpu)))).backward();
      for (std::size_t i = 0; i < host.size(); ++i) {
        if (!is_floating(host[i].dtype())) continue;
        REQUIRE_MESSAGE(gpu[i].grad().defined(), what, ": input ", i, " got no gradient");
        CHECK_MESSAGE(gpu[i].grad().device() == kGpu, what, ": gradient on the host");
        double err = relative_error(gpu[i].grad(), cpu[i].grad());
        CHECK_MESSAGE(err <= tolerance_for(dtype), what, ": input ", i, " relative error ", err);
      }
    }
  }
}

// ---- cases -----------------------------------------------------------------------------

void add_unary_cases(std::vector<OpCase>& cases) {
  const std::vector<Shape> shapes = {{3, 5}, {2, 1, 7}, {}, {0, 4}, {257, 129}};
  for (int i = 0; i <= static_cast<int>(UnaryOp::gelu_grad); ++i) {
    auto op = static_cast<UnaryOp>(i);
    bool integer_ok = op <= UnaryOp::relu;
    bool positive = op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt ||
                    op == UnaryOp::reciprocal;
    GradFn grad;
    if (op != UnaryOp::gelu_grad) grad = [op](const auto& x) { return unary(op, x[0]); };
    for (const Shape& shape : shapes) {
      cases.push_back({cat(name(op), " ", str(shape)),
                       {positive ? pos(shape) : Input{shape}},
                       [op](const auto& x) { return unary(op, x[0]); },
                       integer_ok ? kAll : kFloating,
                       grad});
    }
  }
}

void add_binary_cases(std::vector<OpCase>& cases) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 5}, {3, 5}},     {{4, 1, 3}, {5, 1}}, {{}, {2, 3}},          {{2, 3}, {1}},
      {{37, 1000}, {1000}}, {{64, 1}, {64, 96}}, {{6, 1, 16}, {5, 16}}, {{0, 3}, {3}}};
  for (int i = 0; i <= static_cast<int>(BinaryOp::pow); ++i) {
    auto op = static_cast<BinaryOp>(i);
    bool comparison = op >= BinaryOp::eq && op <= BinaryOp::ge;
    bool integer_ok = op < BinaryOp::div;
    GradFn grad;
    if (!comparison) grad = [op](const auto& x) { return binary(op, x[0], x[1]); };
    for (const auto& [sa, sb] : shapes) {
      Input a = comparison ? ints(sa) : (op == BinaryOp::pow ? pos(sa) : Input{sa});
      Input b = comparison ? ints(sb) : (op == BinaryOp::div ? pos(sb) : Input{sb});
      cases.push_back({cat(name(op), " ", str(sa), " ", str(sb)),
                       {a, b},
                       [op](const auto& x) { return binary(op, x[0], x[1]); },
                       integer_ok ? kAll : kFloating,
                       grad});
    }
  }
  for (const auto& [sc, sa, sb] : std::vector<std::tuple<Shape, Shape, Shape>>{
           {{3, 1}, {3, 4}, {4}}, {{2, 5}, {2, 5}, {2, 5}}, {{}, {3, 2}, {3, 2}}}) {
    cases.push_back({cat("where ", str(sc), " ", str(sa), " ", str(sb)),
                     {mask(sc), {sa}, {sb}},
                     [](const auto& x) { return where(x[0], x[1], x[2]); },
                     kAll,
                     [](const auto& x) { return where(x[0].data(), x[1], x[2]); }});
  }
  cases.push_back({"where with a floating condition [4, 3]",
                   {ints({4, 3}), {{4, 3}}, {{1}}},
                   [](const auto& x) { return where(x[0], x[1], x[2]); },
                   kFloating});
  cases.push_back({"scalar ops [5, 6]",
                   {pos({5, 6})},
                   [](const auto& x) { return pow(mul(add(x[0], 0.5), -1.5), 2.0); },
                   kFloating,
                   [](const auto& x) { return pow(mul(add(x[0], 0.5), -1.5), 2.0); }});
  cases.push_back({"scalar gt [5, 6]",
                   {{{5, 6}}},
                   [](const auto& x) { return gt(x[0], 0.25); },
                   {DType::f32, DType::f64, DType::i32}});
}

void add_reduction_cases(std::vector<OpCase>& cases) {
  using Dims = std::vector<std::int64_t>;
  const std::vector<std::pair<Shape, Dims>> sums = {
      {{3, 4, 5}, {}},     {{3, 4, 5}, {1}},      {{3, 4, 5}, {0, 2}},
      {{3, 4, 5}, {-1}},   {{1, 7, 1}, {0}},      {{}, {}},
      {{0, 3}, {0}},       {{0, 3}, {1}},         {{300, 1000}, {0}},
      {{300, 1000}, {1}},  {{100000}, {}},        {{64, 4097}, {1}},
      {{2, 3000, 8}, {1}}, {{40, 50, 60}, {0, 2}}};
  for (const auto& [shape, dims] : sums) {
    for (bool keepdim : {false, true}) {
      std::string tail = cat(" ", str(shape), " dims ", str(dims), keepdim ? " keepdim" : "");
      cases.push_back({"sum" + tail,
                       {{shape}},
                       [=](const auto& x) { return sum(x[0], dims, keepdim); },
                       kAll,
                       [=](const auto& x) { return sum(x[0], dims, keepdim); }});
      cases.push_back({"mean" + tail,
                       {{shape}},
                       [=](const auto& x) { return mean(x[0], dims, keepdim); },
                       kFloating,
                       [=](const auto& x) { return mean(x[0], dims, keepdim); }});
    }
  }
  const std::vector<std::tuple<Shape, std::int64_t, bool>> maxes = {
      {{3, 4, 5}, 1, false},  {{3, 4, 5}, -1, true}, {{7}, 0, false},     {{2, 1}, 1, false},
      {{64, 5000}, 1, false}, {{5000, 64}, 0, true}, {{33, 40}, 1, false}};
  for (const auto& [shape, dim, keepdim] : maxes) {
    std::string tail = cat(" ", str(shape), " dim ", dim, keepdim ? " keepdim" : "");
    cases.push_back({"max" + tail,
                     {{shape}},
                     [=](const auto& x) { return max(x[0], dim, keepdim).values; },
                     kAll,
                     [=](const auto& x) { return max(x[0], dim, keepdim); }});
    cases.push_back({"argmax" + tail,
                     {{shape}},
                     [=](const auto& x) { return argmax(x[0], dim, keepdim); },
                     kAll});
  }
  for (const auto& [from, to_shape] : std::vector<std::pair<Shape, Shape>>{{{4, 3, 5}, {3, 1}},
                                                                           {{4, 3, 5}, {5}},
                                                                           {{6, 7}, {1, 1}},
                                                                           {{6, 7}, {}},
                                                                           {{6, 7}, {6, 7}}}) {
    cases.push_back({cat("sum_to ", str(from), " to ", str(to_shape)),
                     {{from}},
                     [=](const auto& x) { return sum_to(x[0], to_shape); },
                     kAll});
  }
}

void add_matmul_cases(std::vector<OpCase>& cases) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 4}, {4, 5}},          {{2, 3, 4}, {4, 5}},
      {{2, 1, 3, 4}, {3, 4, 2}}, {{5, 7}, {7, 3}},
      {{1, 1}, {1, 1}},          {{4, 1}, {1, 3}},
      {{3, 4}, {2, 3, 4, 2}},    {{64, 96}, {96, 80}},
      {{4, 33, 17}, {17, 5}},    {{2, 3, 40, 24}, {2, 3, 24, 16}},
      {{3, 0}, {0, 4}},          {{0, 3}, {3, 4}},
      {{5, 7}, {7, 1}},          {{1, 7}, {7, 5}},
      {{2, 5, 7}, {1, 7, 6}}};
  for (const auto& [sa, sb] : shapes) {
    cases.push_back({cat("matmul ", str(sa), " ", str(sb)),
                     {{sa}, {sb}},
                     [](const auto& x) { return matmul(x[0], x[1]); },
                     kFloating,
                     [](const auto& x) { return matmul(x[0], x[1]); }});
  }
}

void add_softmax_cases(std::vector<OpCase>& cases) {
  const std::vector<std::pair<Shape, std::int64_t>> shapes = {
      {{3, 5}, -1},    {{2, 3, 4}, 1},  {{1, 1}, 0},      {{4, 9}, 0},
      {{7, 2000}, -1}, {{33, 100}, -1}, {{50, 3, 40}, 0}, {{0, 5}, -1}};
  for (const auto& [shape, dim] : shapes) {
    for (bool log : {false, true}) {
      std::string tail = cat(" ", str(shape), " dim ", dim);
      auto forward = [dim, log](const Tensor& x) {
        return log ? log_softmax(x, dim) : softmax(x, dim);
      };
      cases.push_back(
          {(log ? "log_softmax" : "softmax") + tail,
           {{shape}},
           [=](const auto& x) { return forward(x[0]); },
           kFloating,
           [=](const auto& x) { return log ? log_softmax(x[0], dim) : softmax(x[0], dim); }});
      cases.push_back({(log ? "log_softmax_backward" : "softmax_backward") + tail,
                       {{shape}, {shape}},
                       [=](const auto& x) {
                         Tensor y = forward(x[0]);
                         return log ? log_softmax_backward(y, x[1], dim)
                                    : softmax_backward(y, x[1], dim);
                       },
                       kFloating});
    }
  }
}

void add_index_cases(std::vector<OpCase>& cases) {
  for (const auto& [shape, dim, index] :
       std::vector<std::tuple<Shape, std::int64_t, Input>>{{{3, 4}, 1, idx({3, 2}, 4)},
                                                           {{3, 4}, 0, idx({2, 4}, 3)},
                                                           {{2, 3, 5}, -1, idx({2, 2, 7}, 5)},
                                                           {{50, 64}, 0, idx({200, 64}, 50)},
                                                           {{6, 5}, 1, idx32({6, 9}, 5)}}) {
    cases.push_back({cat("gather ", str(shape), " dim ", dim, " index ", str(index.shape)),
                     {{shape}, index},
                     [=](const auto& x) { return gather(x[0], dim, x[1]); },
                     kAll,
                     [=](const auto& x) { return gather(x[0], dim, x[1].data()); }});
  }
  for (const auto& [shape, dim, index, src] :
       std::vector<std::tuple<Shape, std::int64_t, Input, Shape>>{
           {{3, 4}, 0, idx({5, 4}, 3), {5, 4}},
           {{3, 4}, 1, idx({3, 6}, 4), {3, 6}},
           {{3, 4}, 1, idx({2, 3}, 4), {3, 5}},
           {{4, 6}, 1, idx32({4, 8}, 6), {4, 8}}}) {
    cases.push_back({cat("scatter_add ", str(shape), " dim ", dim, " index ", str(index.shape),
                         " src ", str(src)),
                     {{shape}, index, {src}},
                     [=](const auto& x) { return scatter_add(x[0], dim, x[1], x[2]); },
                     kAll,
                     [=](const auto& x) { return scatter_add(x[0], dim, x[1].data(), x[2]); }});
  }
  // Fifty additions into every slot. Not in bf16: the CPU rounds after each addition, so
  // its own error there exceeds the bf16 tolerance.
  cases.push_back({"scatter_add [10, 32] dim 0 index [500, 32] src [500, 32]",
                   {{{10, 32}}, idx({500, 32}, 10), {{500, 32}}},
                   [](const auto& x) { return scatter_add(x[0], 0, x[1], x[2]); },
                   {DType::f32, DType::f64, DType::i32, DType::i64},
                   [](const auto& x) { return scatter_add(x[0], 0, x[1].data(), x[2]); }});
  for (const auto& [shape, dim, index] :
       std::vector<std::tuple<Shape, std::int64_t, Input>>{{{5, 3}, 0, idx({4}, 5)},
                                                           {{2, 6}, 1, idx({7}, 6)},
                                                           {{2, 3, 4}, 1, idx({1}, 3)},
                                                           {{1000, 64}, 0, idx({3000}, 1000)},
                                                           {{7, 3}, 0, idx32({9}, 7)}}) {
    cases.push_back({cat("index_select ", str(shape), " dim ", dim, " index ", str(index.shape)),
                     {{shape}, index},
                     [=](const auto& x) { return index_select(x[0], dim, x[1]); },
                     kAll,
                     [=](const auto& x) { return index_select(x[0], dim, x[1].data()); }});
    Shape src = shape;
    src[dim] = index.shape[0];
    cases.push_back({cat("index_add ", str(shape), " dim ", dim, " index ", str(index.shape)),
                     {{shape}, index, {src}},
                     [=](const auto& x) { return index_add(x[0], dim, x[1], x[2]); },
                     kAll,
                     [=](const auto& x) { return index_add(x[0], dim, x[1].data(), x[2]); }});
  }
}

std::vector<OpCase> all_cases() {
  std::vector<OpCase> cases;
  add_unary_cases(cases);
  add_binary_cases(cases);
  add_reduction_cases(cases);
  add_matmul_cases(cases);
  add_softmax_cases(cases);
  add_index_cases(cases);
  return cases;
}

// Runs every case whose name starts with one of prefixes: values, then gradients.
void run_family(const std::vector<std::string>& prefixes) {
  auto cases = all_cases();
  int ran = 0;
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const auto& c = cases[k];
    bool match = false;
    for (const auto& p : prefixes) match = match || c.name.rfind(p, 0) == 0;
    if (!match) continue;
    CAPTURE(c.name);
    check_values(c, 5000 + k);
    if (c.grad) check_gradients(c, 9000 + k);
    ++ran;
  }
  REQUIRE_MESSAGE(ran > 0, "no case starts with ", prefixes.front());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("unary ops on the GPU match the CPU, values and gradients") {
    std::vector<std::string> prefixes;
    for (int i = 0; i <= static_cast<int>(UnaryOp::gelu_grad); ++i) {
      prefixes.push_back(cat(name(static_cast<UnaryOp>(i)), " "));
    }
    run_family(prefixes);
  }

  TEST_CASE("binary ops on the GPU broadcast and match the CPU, values and gradients") {
    run_family({"add ", "sub ", "mul ", "div ", "pow ", "maximum ", "minimum "});
  }

  TEST_CASE("comparisons, where and scalar ops on the GPU match the CPU") {
    run_family({"eq ", "lt ", "le ", "gt ", "ge ", "where ", "scalar "});
  }

  TEST_CASE("binary_out on the GPU writes a poisoned output, an aliased input, a strided view") {
    Generator gen(21);
    for (DType dtype : {DType::f32, DType::bf16, DType::i64}) {
      Tensor a = draw({{6, 5}}, dtype, gen);
      Tensor b = draw({{5}}, dtype, gen);
      Tensor expected = add(a, b);
      Tensor ga = to(a, kGpu);
      Tensor gb = to(b, kGpu);
      Tensor out = poisoned({6, 5}, {dtype, kGpu});
      binary_out(BinaryOp::add, ga, gb, out);
      CHECK(relative_error(out, expected) <= tolerance_for(dtype));
      binary_out(BinaryOp::add, ga, gb, ga);  // out is a
      CHECK(relative_error(ga, expected) <= tolerance_for(dtype));
      // add_ into every other column of a poisoned buffer: the gaps stay poisoned.
      Tensor buffer = poisoned({6, 10}, {dtype, kGpu});
      Tensor view = slice(buffer, 1, 0, 10, 2);
      copy_(view, to(a, kGpu));
      add_(view, gb);
      CHECK(relative_error(view, expected) <= tolerance_for(dtype));
      Tensor gaps = to(slice(buffer, 1, 1, 10, 2), Device::cpu());
      CHECK(relative_error(gaps, full({6, 5}, poison_value(dtype), {dtype})) == 0);
    }
  }

  TEST_CASE("add_converted on the GPU equals a cast and an add on the CPU, fused or not") {
    Generator gen(23);
    // 1003 elements: a tail after the kernel's 8-wide steps. f32 + bf16 at an offset of one
    // element (not 16-byte aligned), f64 + f32 and a narrowing f32 + f64 take the unfused path.
    for (auto [x_dtype, u_dtype] :
         {std::pair{DType::f32, DType::bf16}, std::pair{DType::f64, DType::f32},
          std::pair{DType::f32, DType::f64}}) {
      for (std::int64_t offset : {0, 1}) {
        CAPTURE(name(x_dtype));
        CAPTURE(name(u_dtype));
        CAPTURE(offset);
        Tensor xs = draw({{1004}}, x_dtype, gen);
        Tensor us = draw({{1004}}, u_dtype, gen);
        Tensor expected =
            add(narrow(xs, 0, offset, 1003), to(narrow(us, 0, offset, 1003), x_dtype));
        Tensor got = add_converted(narrow(to(xs, kGpu), 0, offset, 1003),
                                   narrow(to(us, kGpu), 0, offset, 1003));
        CHECK(got.device() == kGpu);
        CHECK(got.dtype() == x_dtype);
        CHECK(relative_error(got, expected) == 0);
      }
    }
  }

  TEST_CASE("sum, mean and sum_to on the GPU match the CPU, values and gradients") {
    run_family({"sum ", "mean ", "sum_to "});
  }

  TEST_CASE("max and argmax on the GPU match the CPU, values and gradients") {
    run_family({"max ", "argmax "});
  }

  TEST_CASE("max on the GPU takes NaN as largest and the first of equal values") {
    Tensor t = from_data<float>({1, 3, 3, 2, NAN, 5, NAN, 0, 7, 7, 7, 7}, {3, 4});
    MaxResult cpu = max(t, 1);
    MaxResult gpu = max(to(t, kGpu), 1);
    CHECK(relative_error(gpu.values, cpu.values) == 0);
    CHECK(to(gpu.indices, Device::cpu()).to_vector<std::int64_t>() ==
          std::vector<std::int64_t>{1, 0, 0});
  }

  TEST_CASE("matmul on the GPU matches the CPU for batched, broadcast and transposed operands") {
    run_family({"matmul "});
  }

  TEST_CASE("softmax and log_softmax on the GPU match the CPU, forward and backward") {
    run_family({"softmax ", "log_softmax ", "softmax_backward ", "log_softmax_backward "});
  }

  TEST_CASE("softmax on the GPU handles -inf entries and rows as the CPU does") {
    const float inf = std::numeric_limits<float>::infinity();
    Tensor t = from_data<float>({0, -inf, 1, 2, -inf, -inf, -inf, -inf, 3, 3, -inf, 3}, {3, 4});
    for (bool log : {false, true}) {
      Tensor cpu = log ? log_softmax(t, 1) : softmax(t, 1);
      Tensor gpu = log ? log_softmax(to(t, kGpu), 1) : softmax(to(t, kGpu), 1);
      CHECK_MESSAGE(relative_error(gpu, cpu) <= 1e-6, (log ? "log_softmax" : "softmax"));
    }
  }

  TEST_CASE("gather and scatter_add on the GPU match the CPU, values and gradients") {
    run_family({"gather ", "scatter_add "});
  }

  TEST_CASE("index_select and index_add on the GPU match the CPU, values and gradients") {
    run_family({"index_select ", "index_add "});
  }

  TEST_CASE("index_select and index_add_ with trusted indices give the checked results") {
    Generator gen(31);
    for (DType dtype : {DType::f32, DType::bf16}) {
      CAPTURE(dtype);
      Tensor t = to(randn({3, 50, 4}, gen, {dtype}), kGpu);
      Tensor index = to(randint(0, 50, {70}, gen), kGpu);  // repeats too
      Tensor src = to(randn({3, 70, 4}, gen, {dtype}), kGpu);
      Tensor checked = index_select(t, 1, index);
      Tensor trusted = index_select(t, 1, index, IndexCheck::trust);
      CHECK(relative_error(trusted, checked) == 0);
      Tensor sum_checked = clone(t);
      index_add_(sum_checked, 1, index, src);
      Tensor sum_trusted = clone(t);
      index_add_(sum_trusted, 1, index, src, IndexCheck::trust);
      // Repeated indices add by atomics: the order (and the last bits of f32) may differ.
      CHECK(relative_error(sum_trusted, sum_checked) <= tolerance_for(dtype));
      CHECK(relative_error(sum_checked, index_add(to(t, Device::cpu()), 1, to(index, Device::cpu()),
                                                  to(src, Device::cpu()))) <= tolerance_for(dtype));
    }
  }

  TEST_CASE("an index out of range on the GPU is the CPU's error") {
    Tensor t = from_data<float>({1, 2, 3, 4, 5, 6}, {2, 3});
    Tensor bad = from_data<std::int64_t>({0, 3}, {2});
    Tensor bad2d = from_data<std::int64_t>({0, 1, -1, 2}, {2, 2});
    Tensor src = ones({2, 2});
    std::vector<std::pair<const char*, std::function<Tensor(const Tensor&, const Tensor&,
                                                            const Tensor&, const Tensor&)>>>
        ops = {
            {"index_select", [](auto x, auto i, auto, auto) { return index_select(x, 1, i); }},
            {"gather", [](auto x, auto, auto i2, auto) { return gather(x, 1, i2); }},
            {"scatter_add", [](auto x, auto, auto i2, auto s) { return scatter_add(x, 1, i2, s); }},
            {"index_add", [](auto x, auto i, auto, auto s) { return index_add(x, 1, i, s); }},
        };
    for (const auto& [op, f] : ops) {
      std::string on_cpu = error_of([&] { f(t, bad, bad2d, src); });
      std::string on_gpu =
          error_of([&] { f(to(t, kGpu), to(bad, kGpu), to(bad2d, kGpu), to(src, kGpu)); });
      CHECK_MESSAGE(!on_cpu.empty(), op);
      CHECK_MESSAGE(on_gpu == on_cpu, op);
    }
  }
}

}  // namespace longnet
