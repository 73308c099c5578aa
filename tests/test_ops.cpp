// The op harness: one small case per op and shape (broadcasting, size-1, odd and 0-d
// shapes). Every case is checked for values against the naive reference in tests/reference
// (f64, f32 and bf16; contiguous and strided inputs) and, when differentiable, for gradients
// with gradcheck.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/reference.h"

namespace longnet {
namespace {

using ref::Index;
using ref::Ref;
using Fn = std::function<Variable(const std::vector<Variable>&)>;
using RefFn = std::function<Ref(const std::vector<Ref>&)>;

enum class Domain { normal, positive, small_int, mask, index };

struct Input {
  Shape shape;
  Domain domain = Domain::normal;
  std::int64_t high = 0;  // indices are drawn from [0, high)
};

struct OpCase {
  std::string name;
  std::vector<Input> inputs;
  Fn op;
  RefFn reference;
  bool differentiable = true;
  bool bf16 = true;  // whether the op takes bf16
};

Input idx(Shape shape, std::int64_t high) { return {std::move(shape), Domain::index, high}; }

Tensor draw(const Input& in, Generator& gen) {
  switch (in.domain) {
    case Domain::normal:
      return randn(in.shape, gen, {DType::f64});
    case Domain::positive:
      return uniform(in.shape, 0.5, 2.0, gen, {DType::f64});
    case Domain::small_int:
      return to(randint(-2, 3, in.shape, gen), DType::f64);
    case Domain::mask:
      return randint(0, 2, in.shape, gen);
    case Domain::index:
      return randint(0, in.high, in.shape, gen);
  }
  return {};
}

// The same values in a non-contiguous layout: every other element of a wider buffer.
Tensor strided(const Tensor& t) {
  if (t.dim() == 0) return t;
  Shape wide = t.shape();
  wide.back() *= 2;
  Tensor buffer = full(wide, std::nan(""), {t.dtype()});
  Tensor view = slice(buffer, -1, 0, wide.back(), 2);
  copy_(view, t);
  return view;
}

void check_close(const Ref& got, const Ref& want, double atol, double rtol,
                 const std::string& what) {
  REQUIRE_MESSAGE(got.shape == want.shape, what, ": shape ", str(got.shape), " vs reference ",
                  str(want.shape));
  for (std::int64_t k = 0; k < want.numel(); ++k) {
    double g = got.v[k];
    double w = want.v[k];
    bool ok = std::abs(g - w) <= atol + rtol * std::abs(w) || (std::isnan(g) && std::isnan(w));
    if (!ok) {
      FAIL_CHECK(what, ": element ", k, " is ", g, ", reference ", w);
      return;
    }
  }
}

void run_case(const OpCase& c, std::uint64_t seed) {
  Generator gen(seed);
  std::vector<Tensor> inputs;
  for (const auto& in : c.inputs) inputs.push_back(draw(in, gen));

  struct Mode {
    DType dtype;
    bool strided;
    double tol;
  };
  std::vector<Mode> modes = {{DType::f64, false, 1e-12},
                             {DType::f64, true, 1e-12},
                             {DType::f32, false, 1e-5},
                             {DType::f32, true, 1e-5}};
  if (c.bf16) modes.push_back({DType::bf16, false, 1e-2});
  for (const auto& mode : modes) {
    std::vector<Variable> vars;
    std::vector<Ref> refs;
    for (const auto& t : inputs) {
      Tensor x = is_floating(t.dtype()) ? to(t, mode.dtype) : t;
      refs.push_back(Ref::of(x));  // the reference sees the rounded values
      vars.emplace_back(mode.strided ? strided(x) : x);
    }
    Variable y = c.op(vars);
    std::string what = cat(c.name, " (", name(mode.dtype), mode.strided ? ", strided" : "", ")");
    CHECK_MESSAGE(y.dtype() == mode.dtype, what, ": output dtype ", name(y.dtype()));
    check_close(Ref::of(y.data()), c.reference(refs), mode.tol, mode.tol, what);
  }
  if (c.differentiable) {
    GradcheckResult r = gradcheck(c.op, inputs);
    CHECK_MESSAGE(r.ok, c.name, ": gradcheck: ", r.message);
  }
}

// ---- cases -----------------------------------------------------------------------------

Ref map1(const Ref& x, const std::function<double(double)>& f) {
  return ref::make(x.shape, [&](const Index& i) { return f(x.at(i)); });
}

Ref map2(const Ref& a, const Ref& b, const std::function<double(double, double)>& f) {
  return ref::make(ref::broadcast(a.shape, b.shape),
                   [&](const Index& i) { return f(a.bat(i), b.bat(i)); });
}

void add_unary_cases(std::vector<OpCase>& cases) {
  struct U {
    UnaryOp op;
    Domain domain;
    std::function<double(double)> f;
  };
  std::vector<U> ops = {
      {UnaryOp::neg, Domain::normal, [](double x) { return -x; }},
      {UnaryOp::abs, Domain::normal, [](double x) { return std::fabs(x); }},
      {UnaryOp::sign, Domain::normal, [](double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }},
      {UnaryOp::square, Domain::normal, [](double x) { return x * x; }},
      {UnaryOp::relu, Domain::normal, [](double x) { return x > 0 ? x : 0.0; }},
      {UnaryOp::exp, Domain::normal, [](double x) { return std::exp(x); }},
      {UnaryOp::log, Domain::positive, [](double x) { return std::log(x); }},
      {UnaryOp::sqrt, Domain::positive, [](double x) { return std::sqrt(x); }},
      {UnaryOp::rsqrt, Domain::positive, [](double x) { return 1 / std::sqrt(x); }},
      {UnaryOp::reciprocal, Domain::positive, [](double x) { return 1 / x; }},
      {UnaryOp::tanh, Domain::normal, [](double x) { return std::tanh(x); }},
      {UnaryOp::sigmoid, Domain::normal, [](double x) { return 1 / (1 + std::exp(-x)); }},
      {UnaryOp::gelu, Domain::normal,
       [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }},
  };
  for (const auto& u : ops) {
    for (const Shape& shape : {Shape{3, 5}, Shape{2, 1, 7}, Shape{}}) {
      cases.push_back({cat(name(u.op), " ", str(shape)),
                       {{shape, u.domain}},
                       [op = u.op](const auto& x) { return unary(op, x[0]); },
                       [f = u.f](const auto& r) { return map1(r[0], f); }});
    }
  }
}

void add_binary_cases(std::vector<OpCase>& cases) {
  struct B {
    BinaryOp op;
    Domain a;
    Domain b;
    std::function<double(double, double)> f;
    bool differentiable = true;
  };
  std::vector<B> ops = {
      {BinaryOp::add, Domain::normal, Domain::normal, [](double a, double b) { return a + b; }},
      {BinaryOp::sub, Domain::normal, Domain::normal, [](double a, double b) { return a - b; }},
      {BinaryOp::mul, Domain::normal, Domain::normal, [](double a, double b) { return a * b; }},
      {BinaryOp::div, Domain::normal, Domain::positive, [](double a, double b) { return a / b; }},
      {BinaryOp::pow, Domain::positive, Domain::normal,
       [](double a, double b) { return std::pow(a, b); }},
      {BinaryOp::maximum, Domain::normal, Domain::normal,
       [](double a, double b) { return std::max(a, b); }},
      {BinaryOp::minimum, Domain::normal, Domain::normal,
       [](double a, double b) { return std::min(a, b); }},
      {BinaryOp::eq, Domain::small_int, Domain::small_int,
       [](double a, double b) { return double(a == b); }, false},
      {BinaryOp::lt, Domain::small_int, Domain::small_int,
       [](double a, double b) { return double(a < b); }, false},
      {BinaryOp::le, Domain::small_int, Domain::small_int,
       [](double a, double b) { return double(a <= b); }, false},
      {BinaryOp::gt, Domain::small_int, Domain::small_int,
       [](double a, double b) { return double(a > b); }, false},
      {BinaryOp::ge, Domain::small_int, Domain::small_int,
       [](double a, double b) { return double(a >= b); }, false},
  };
  std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 5}, {3, 5}}, {{4, 1, 3}, {5, 1}}, {{}, {2, 3}}, {{2, 3}, {1}}};
  for (const auto& b : ops) {
    for (const auto& [sa, sb] : shapes) {
      cases.push_back({cat(name(b.op), " ", str(sa), " ", str(sb)),
                       {{sa, b.a}, {sb, b.b}},
                       [op = b.op](const auto& x) { return binary(op, x[0], x[1]); },
                       [f = b.f](const auto& r) { return map2(r[0], r[1], f); },
                       b.differentiable});
    }
  }
  cases.push_back({"where [3, 1] [3, 4] [4]",
                   {{{3, 1}, Domain::mask}, {{3, 4}}, {{4}}},
                   [](const auto& x) { return where(x[0].data(), x[1], x[2]); },
                   [](const auto& r) {
                     Shape s = ref::broadcast(r[0].shape, ref::broadcast(r[1].shape, r[2].shape));
                     return ref::make(s, [&](const Index& i) {
                       return r[0].bat(i) != 0 ? r[1].bat(i) : r[2].bat(i);
                     });
                   }});
  cases.push_back({"scalar ops [2, 3]",
                   {{{2, 3}, Domain::positive}},
                   [](const auto& x) { return pow(mul(add(x[0], 0.5), -1.5), 2.0); },
                   [](const auto& r) {
                     return map1(r[0], [](double v) { return std::pow((v + 0.5) * -1.5, 2.0); });
                   },
                   true,
                   false});
}

void add_reduction_cases(std::vector<OpCase>& cases) {
  using Dims = std::vector<std::int64_t>;
  for (const auto& [shape, dims] : std::vector<std::pair<Shape, Dims>>{{{3, 4, 5}, {}},
                                                                       {{3, 4, 5}, {1}},
                                                                       {{3, 4, 5}, {0, 2}},
                                                                       {{3, 4, 5}, {-1}},
                                                                       {{1, 7, 1}, {0}},
                                                                       {{}, {}}}) {
    for (bool keepdim : {false, true}) {
      std::string tail = cat(" ", str(shape), " dims ", str(dims), keepdim ? " keepdim" : "");
      cases.push_back({"sum" + tail,
                       {{shape}},
                       [=](const auto& x) { return sum(x[0], dims, keepdim); },
                       [=](const auto& r) { return ref::sum(r[0], dims, keepdim); }});
      cases.push_back({"mean" + tail,
                       {{shape}},
                       [=](const auto& x) { return mean(x[0], dims, keepdim); },
                       [=](const auto& r) {
                         Ref s = ref::sum(r[0], dims, keepdim);
                         double count = double(r[0].numel()) / double(s.numel());
                         return map1(s, [=](double v) { return v / count; });
                       }});
    }
  }
  for (const auto& [shape, dim, keepdim] : std::vector<std::tuple<Shape, std::int64_t, bool>>{
           {{3, 4, 5}, 1, false}, {{3, 4, 5}, -1, true}, {{7}, 0, false}, {{2, 1}, 1, false}}) {
    cases.push_back({cat("max ", str(shape), " dim ", dim, keepdim ? " keepdim" : ""),
                     {{shape}},
                     [=](const auto& x) { return max(x[0], dim, keepdim); },
                     [=](const auto& r) { return ref::max(r[0], dim, keepdim); }});
  }
}

void add_matmul_cases(std::vector<OpCase>& cases) {
  std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 4}, {4, 5}}, {{2, 3, 4}, {4, 5}}, {{2, 1, 3, 4}, {3, 4, 2}}, {{5, 7}, {7, 3}},
      {{1, 1}, {1, 1}}, {{4, 1}, {1, 3}},    {{3, 4}, {2, 3, 4, 2}},
  };
  for (const auto& [sa, sb] : shapes) {
    cases.push_back({cat("matmul ", str(sa), " ", str(sb)),
                     {{sa}, {sb}},
                     [](const auto& x) { return matmul(x[0], x[1]); },
                     [](const auto& r) { return ref::matmul(r[0], r[1]); }});
  }
  cases.push_back(
      {"matmul of transposed views [4, 3]^T [5, 4]^T",
       {{{4, 3}}, {{5, 4}}},
       [](const auto& x) { return matmul(transpose(x[0], 0, 1), transpose(x[1], 0, 1)); },
       [](const auto& r) {
         Ref a = ref::make({3, 4}, [&](const Index& i) { return r[0].at({i[1], i[0]}); });
         Ref b = ref::make({4, 5}, [&](const Index& i) { return r[1].at({i[1], i[0]}); });
         return ref::matmul(a, b);
       }});
}

void add_softmax_cases(std::vector<OpCase>& cases) {
  for (const auto& [shape, dim] : std::vector<std::pair<Shape, std::int64_t>>{
           {{3, 5}, -1}, {{2, 3, 4}, 1}, {{1, 1}, 0}, {{4, 9}, 0}}) {
    for (bool log : {false, true}) {
      cases.push_back(
          {cat(log ? "log_softmax " : "softmax ", str(shape), " dim ", dim),
           {{shape}},
           [=](const auto& x) { return log ? log_softmax(x[0], dim) : softmax(x[0], dim); },
           [=](const auto& r) { return ref::softmax(r[0], dim, log); }});
    }
  }
}

Index with(Index i, std::int64_t d, std::int64_t v) {
  i[d] = v;
  return i;
}

void add_index_cases(std::vector<OpCase>& cases) {
  for (const auto& [shape, dim, index] :
       std::vector<std::tuple<Shape, std::int64_t, Input>>{{{3, 4}, 1, idx({3, 2}, 4)},
                                                           {{3, 4}, 0, idx({2, 4}, 3)},
                                                           {{2, 3, 5}, -1, idx({2, 2, 7}, 5)}}) {
    cases.push_back({cat("gather ", str(shape), " dim ", dim, " index ", str(index.shape)),
                     {{shape}, index},
                     [=](const auto& x) { return gather(x[0], dim, x[1].data()); },
                     [=](const auto& r) {
                       auto d = dim < 0 ? dim + static_cast<std::int64_t>(shape.size()) : dim;
                       return ref::make(r[1].shape, [&](const Index& i) {
                         return r[0].at(with(i, d, static_cast<std::int64_t>(r[1].at(i))));
                       });
                     }});
  }
  for (const auto& [shape, dim, index, src] :
       std::vector<std::tuple<Shape, std::int64_t, Input, Shape>>{
           {{3, 4}, 0, idx({5, 4}, 3), {5, 4}},
           {{3, 4}, 1, idx({3, 6}, 4), {3, 6}},
           {{3, 4}, 1, idx({2, 3}, 4), {3, 5}}}) {
    cases.push_back({cat("scatter_add ", str(shape), " dim ", dim, " index ", str(index.shape),
                         " src ", str(src)),
                     {{shape}, index, {src}},
                     [=](const auto& x) { return scatter_add(x[0], dim, x[1].data(), x[2]); },
                     [=](const auto& r) {
                       Ref out = r[0];
                       for (std::int64_t k = 0; k < r[1].numel(); ++k) {
                         Index i = ref::unravel(k, r[1].shape);
                         Index j = with(i, dim, static_cast<std::int64_t>(r[1].v[k]));
                         out.v[ref::ravel(j, out.shape)] += r[2].at(i);
                       }
                       return out;
                     }});
  }
  for (const auto& [shape, dim, index] : std::vector<std::tuple<Shape, std::int64_t, Input>>{
           {{5, 3}, 0, idx({4}, 5)}, {{2, 6}, 1, idx({7}, 6)}, {{2, 3, 4}, 1, idx({1}, 3)}}) {
    cases.push_back({cat("index_select ", str(shape), " dim ", dim, " index ", str(index.shape)),
                     {{shape}, index},
                     [=](const auto& x) { return index_select(x[0], dim, x[1].data()); },
                     [=](const auto& r) {
                       Shape out = shape;
                       out[dim] = r[1].numel();
                       return ref::make(out, [&](const Index& i) {
                         return r[0].at(with(i, dim, static_cast<std::int64_t>(r[1].v[i[dim]])));
                       });
                     }});
    Shape src = shape;
    src[dim] = index.shape[0];
    cases.push_back({cat("index_add ", str(shape), " dim ", dim, " index ", str(index.shape)),
                     {{shape}, index, {src}},
                     [=](const auto& x) { return index_add(x[0], dim, x[1].data(), x[2]); },
                     [=](const auto& r) {
                       Ref out = r[0];
                       for (std::int64_t k = 0; k < r[2].numel(); ++k) {
                         Index i = ref::unravel(k, r[2].shape);
                         Index j = with(i, dim, static_cast<std::int64_t>(r[1].v[i[dim]]));
                         out.v[ref::ravel(j, out.shape)] += r[2].v[k];
                       }
                       return out;
                     }});
  }
}

void add_shape_cases(std::vector<OpCase>& cases) {
  auto concat_ref = [](const std::vector<Ref>& r, std::int64_t dim) {
    Shape shape = r[0].shape;
    shape[dim] = 0;
    for (const auto& x : r) shape[dim] += x.shape[dim];
    return ref::make(shape, [&](const Index& i) {
      std::int64_t at = i[dim];
      for (const auto& x : r) {
        if (at < x.shape[dim]) return x.at(with(i, dim, at));
        at -= x.shape[dim];
      }
      return 0.0;
    });
  };
  cases.push_back({"concat [2, 3] [4, 3] dim 0",
                   {{{2, 3}}, {{4, 3}}},
                   [](const auto& x) { return concat(x, 0); },
                   [=](const auto& r) { return concat_ref(r, 0); }});
  cases.push_back({"concat [2, 1] [2, 3] dim -1",
                   {{{2, 1}}, {{2, 3}}},
                   [](const auto& x) { return concat(x, -1); },
                   [=](const auto& r) { return concat_ref(r, 1); }});
  cases.push_back({"concat three [1, 2] dim 0",
                   {{{1, 2}}, {{1, 2}}, {{1, 2}}},
                   [](const auto& x) { return concat(x, 0); },
                   [=](const auto& r) { return concat_ref(r, 0); }});
  cases.push_back(
      {"split [3, 7] sizes 2, 5 dim 1, second piece",
       {{{3, 7}}},
       [](const auto& x) {
         return split(x[0], {2, 5}, 1)[1];
       },
       [](const auto& r) {
         return ref::make({3, 5}, [&](const Index& i) { return r[0].at({i[0], i[1] + 2}); });
       }});
  cases.push_back({"split pieces recombined",
                   {{{4, 3}}},
                   [](const auto& x) {
                     auto parts = split(x[0], {1, 0, 3}, 0);
                     return concat({mul(parts[2], 2.0), parts[1], parts[0]}, 0);
                   },
                   [](const auto& r) {
                     return ref::make({4, 3}, [&](const Index& i) {
                       return i[0] < 3 ? 2 * r[0].at({i[0] + 1, i[1]}) : r[0].at({0, i[1]});
                     });
                   }});
  cases.push_back({"reshape [3, 4] to [2, -1]",
                   {{{3, 4}}},
                   [](const auto& x) {
                     return reshape(x[0], {2, -1});
                   },
                   [](const auto& r) {
                     return Ref{{2, 6}, r[0].v};
                   }});
  cases.push_back(
      {"reshape of a transpose (copy path)",
       {{{3, 4}}},
       [](const auto& x) { return reshape(transpose(x[0], 0, 1), {12}); },
       [](const auto& r) {
         return ref::make({12}, [&](const Index& i) { return r[0].at({i[0] % 3, i[0] / 3}); });
       }});
  cases.push_back({"flatten [2, 3, 2]",
                   {{{2, 3, 2}}},
                   [](const auto& x) { return flatten(x[0]); },
                   [](const auto& r) {
                     return Ref{{12}, r[0].v};
                   }});
  cases.push_back(
      {"transpose [2, 3, 4] dims 0, 2",
       {{{2, 3, 4}}},
       [](const auto& x) { return transpose(x[0], 0, 2); },
       [](const auto& r) {
         return ref::make({4, 3, 2}, [&](const Index& i) { return r[0].at({i[2], i[1], i[0]}); });
       }});
  cases.push_back(
      {"permute [2, 3, 4] to 2, 0, 1",
       {{{2, 3, 4}}},
       [](const auto& x) {
         return permute(x[0], {2, 0, 1});
       },
       [](const auto& r) {
         return ref::make({4, 2, 3}, [&](const Index& i) { return r[0].at({i[1], i[2], i[0]}); });
       }});
  cases.push_back(
      {"slice [5, 6] dim 1 from 1 step 2",
       {{{5, 6}}},
       [](const auto& x) { return slice(x[0], 1, 1, 6, 2); },
       [](const auto& r) {
         return ref::make({5, 3}, [&](const Index& i) { return r[0].at({i[0], 1 + 2 * i[1]}); });
       }});
  cases.push_back(
      {"slice [5, 6] dim 0 from -3",
       {{{5, 6}}},
       [](const auto& x) { return slice(x[0], 0, -3, 100); },
       [](const auto& r) {
         return ref::make({3, 6}, [&](const Index& i) { return r[0].at({i[0] + 2, i[1]}); });
       }});
  cases.push_back(
      {"narrow [5, 6] dim 0 at 1 length 3",
       {{{5, 6}}},
       [](const auto& x) { return narrow(x[0], 0, 1, 3); },
       [](const auto& r) {
         return ref::make({3, 6}, [&](const Index& i) { return r[0].at({i[0] + 1, i[1]}); });
       }});
  cases.push_back({"expand [3, 1] to [2, 3, 4]",
                   {{{3, 1}}},
                   [](const auto& x) {
                     return expand(x[0], {2, 3, 4});
                   },
                   [](const auto& r) {
                     return ref::make({2, 3, 4}, [&](const Index& i) { return r[0].bat(i); });
                   }});
  cases.push_back({"unsqueeze [3, 4] dim 1 then squeeze dim 0 of [1, 3]",
                   {{{3, 4}}, {{1, 3}}},
                   [](const auto& x) {
                     return add(unsqueeze(x[0], 1), unsqueeze(unsqueeze(squeeze(x[1], 0), -1), -1));
                   },
                   [](const auto& r) {
                     return ref::make({3, 1, 4}, [&](const Index& i) {
                       return r[0].at({i[0], i[2]}) + r[1].at({0, i[0]});
                     });
                   }});
  cases.push_back(
      {"contiguous of a transpose",
       {{{3, 5}}},
       [](const auto& x) { return contiguous(transpose(x[0], 0, 1)); },
       [](const auto& r) {
         return ref::make({5, 3}, [&](const Index& i) { return r[0].at({i[1], i[0]}); });
       }});
}

std::vector<OpCase> all_cases() {
  std::vector<OpCase> cases;
  add_unary_cases(cases);
  add_binary_cases(cases);
  add_reduction_cases(cases);
  add_matmul_cases(cases);
  add_softmax_cases(cases);
  add_index_cases(cases);
  add_shape_cases(cases);
  return cases;
}

void run_family(const std::string& prefix) {
  auto cases = all_cases();
  int ran = 0;
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const auto& c = cases[k];
    if (c.name.rfind(prefix, 0) != 0) continue;
    CAPTURE(c.name);
    run_case(c, 1000 + k);
    ++ran;
  }
  REQUIRE_MESSAGE(ran > 0, "no case starts with ", prefix);
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("unary ops match the reference and gradcheck") {
    for (auto op : {"neg", "abs", "sign", "square", "relu", "exp", "log", "sqrt", "rsqrt",
                    "reciprocal", "tanh", "sigmoid", "gelu"}) {
      run_family(cat(op, " "));
    }
  }
  TEST_CASE("binary ops broadcast, match the reference and gradcheck") {
    for (auto op : {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "scalar"}) {
      run_family(cat(op, " "));
    }
  }
  TEST_CASE("comparisons match the reference") {
    for (auto op : {"eq", "lt", "le", "gt", "ge"}) run_family(cat(op, " "));
  }
  TEST_CASE("sum and mean match the reference and gradcheck") {
    run_family("sum ");
    run_family("mean ");
  }
  TEST_CASE("max along a dim matches the reference and gradcheck") { run_family("max "); }
  TEST_CASE("matmul broadcasts batch dims, matches the reference and gradchecks") {
    run_family("matmul ");
  }
  TEST_CASE("softmax and log_softmax match the reference and gradcheck") {
    run_family("softmax ");
    run_family("log_softmax ");
  }
  TEST_CASE("gather and scatter_add match the reference and gradcheck") {
    run_family("gather ");
    run_family("scatter_add ");
  }
  TEST_CASE("index_select and index_add match the reference and gradcheck") {
    run_family("index_select ");
    run_family("index_add ");
  }
  TEST_CASE("concat and split match the reference and gradcheck") {
    run_family("concat ");
    run_family("split ");
  }
  TEST_CASE("views match the reference and gradcheck") {
    for (auto op : {"reshape ", "flatten ", "transpose ", "permute ", "slice ", "narrow ",
                    "expand ", "unsqueeze ", "contiguous "}) {
      run_family(op);
    }
  }
}

}  // namespace longnet
