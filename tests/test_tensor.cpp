// The tensor layer: storage and views, creation and random numbers, casts, errors, and
// the parallel paths of the kernels on sizes the op harness does not reach.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <limits>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"
#include "tensor/softmax.h"
#include "tensor/view.h"
#include "tests/error_of.h"

namespace longnet {
namespace {

using testing::error_of;

std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

}  // namespace

TEST_SUITE("tensor") {
  TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
    using W = std::array<std::uint32_t, 4>;
    CHECK(philox4x32({0, 0, 0, 0}, 0) == W{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
    CHECK(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, 0xffffffffffffffffULL) ==
          W{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
    CHECK(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0x299f31d0a4093822ULL) ==
          W{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
  }

  TEST_CASE("random draws depend only on the seed, not on the thread count") {
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    Generator one(42);
    auto a = values(randn({300001}, one));
    omp_set_num_threads(std::max(threads, 2));
    Generator two(42);
    auto b = values(randn({300001}, two));
    omp_set_num_threads(threads);
    CHECK(a == b);
    Generator other(43);
    CHECK(values(randn({8}, other)) != std::vector<float>(a.begin(), a.begin() + 8));
  }

  TEST_CASE("a generator's offset resumes its stream") {
    Generator gen(9);
    randn({10}, gen);
    std::uint64_t offset = gen.offset();
    auto next = values(uniform({7}, -1, 1, gen));
    Generator again(9);
    again.set_offset(offset);
    CHECK(values(uniform({7}, -1, 1, again)) == next);
  }

  TEST_CASE("randn, uniform and randint have the right distribution and range") {
    Generator gen(1);
    auto n = randn({200000}, gen, {DType::f64}).to_vector<double>();
    double mean = 0;
    double sq = 0;
    for (double v : n) mean += v / double(n.size());
    for (double v : n) sq += (v - mean) * (v - mean) / double(n.size());
    CHECK(std::abs(mean) < 0.01);
    CHECK(std::abs(std::sqrt(sq) - 1) < 0.01);
    auto u = values(uniform({100000}, 2, 3, gen));
    double umean = 0;
    for (float v : u) {
      REQUIRE(v >= 2.0f);
      REQUIRE(v < 3.0f);
      umean += v / double(u.size());
    }
    CHECK(std::abs(umean - 2.5) < 0.01);
    auto r = randint(-3, 4, {10000}, gen).to_vector<std::int64_t>();
    std::vector<int> seen(7, 0);
    for (auto v : r) {
      REQUIRE(v >= -3);
      REQUIRE(v < 4);
      seen[v + 3]++;
    }
    for (int c : seen) CHECK(c > 1200);
  }

  TEST_CASE("creation functions fill the requested values") {
    CHECK(values(zeros({2, 2})) == std::vector<float>{0, 0, 0, 0});
    CHECK(values(ones({3})) == std::vector<float>{1, 1, 1});
    CHECK(values(full({2}, -2.5)) == std::vector<float>{-2.5, -2.5});
    CHECK(values(arange(0, 5)) == std::vector<float>{0, 1, 2, 3, 4});
    CHECK(values(arange(3, 0, -1.5)) == std::vector<float>{3, 1.5});
    CHECK(arange(0, 4, 1, {DType::i64}).to_vector<std::int64_t>() ==
          std::vector<std::int64_t>{0, 1, 2, 3});
    CHECK(scalar(7).dim() == 0);
    CHECK(scalar(7).item() == 7);
    CHECK(error_of([] {
            from_data<float>({1, 2, 3}, {2, 2});
          }).find("3 values for shape [2, 2]") != std::string::npos);
  }

  TEST_CASE("views share storage with their base") {
    Tensor base = arange(0, 12);
    Tensor m = reshape(base, {3, 4});
    CHECK(m.storage() == base.storage());
    Tensor t = transpose(m, 0, 1);
    CHECK(t.shape() == Shape{4, 3});
    CHECK(t.strides() == Strides{1, 4});
    CHECK(!t.is_contiguous());
    fill_(narrow(t, 0, 1, 1), -1);  // column 1 of m
    CHECK(values(base) == std::vector<float>{0, -1, 2, 3, 4, -1, 6, 7, 8, -1, 10, 11});
    Tensor e = expand(reshape(arange(0, 3), {3, 1}), {2, 3, 4});
    CHECK(e.strides() == Strides{0, 1, 0});
    CHECK(values(contiguous(e))[5] == 1);
  }

  TEST_CASE("reshape views when it can and copies when it must") {
    Tensor m = reshape(arange(0, 24), {2, 3, 4});
    CHECK(reshape(m, {6, 4}).storage() == m.storage());
    CHECK(reshape(m, {2, 12}).storage() == m.storage());
    Tensor t = transpose(m, 1, 2);  // (2, 4, 3)
    Tensor flat = reshape(t, {24});
    CHECK(flat.storage() != m.storage());
    CHECK(values(flat)[1] == 4);
    CHECK(reshape(t, {2, 4, 3, 1}).storage() == m.storage());
    CHECK(error_of([&] { reshape(m, {5, -1}); }).find("cannot infer") != std::string::npos);
    CHECK(error_of([&] { reshape(m, {5, 5}); }).find("[2, 3, 4]") != std::string::npos);
  }

  TEST_CASE("slice clamps like Python and narrow rejects out-of-range windows") {
    Tensor x = arange(0, 10);
    CHECK(values(slice(x, 0, -3, 100)) == std::vector<float>{7, 8, 9});
    CHECK(values(slice(x, 0, 1, 8, 3)) == std::vector<float>{1, 4, 7});
    CHECK(slice(x, 0, 8, 2).numel() == 0);
    CHECK(error_of([&] { narrow(x, 0, 8, 3); }).find("[8, 11) is outside [0, 10)") !=
          std::string::npos);
    CHECK(error_of([&] { squeeze(x, 0); }).find("has size 10, not 1") != std::string::npos);
    CHECK(error_of([&] { transpose(x, 0, 1); }).find("valid: -1 to 0") != std::string::npos);
  }

  TEST_CASE("mismatched shapes, dtypes and devices are errors that show them") {
    Tensor a = zeros({2, 3});
    std::string shapes = error_of([&] { add(a, zeros({4})); });
    CHECK(shapes.find("[2, 3]") != std::string::npos);
    CHECK(shapes.find("[4]") != std::string::npos);
    std::string dtypes = error_of([&] { mul(a, zeros({2, 3}, {DType::f64})); });
    CHECK(dtypes.find("f32[2, 3]") != std::string::npos);
    CHECK(dtypes.find("f64[2, 3]") != std::string::npos);
    CHECK(error_of([&] {
            matmul(a, zeros({2, 3}));
          }).find("inner dims differ") != std::string::npos);
    CHECK(error_of([&] { exp(zeros({2}, {DType::i64})); }).find("floating") != std::string::npos);
    CHECK(error_of([&] { concat({a, zeros({2, 4})}, 0); }).find("[2, 4]") != std::string::npos);
    CHECK(error_of([&] {
            gather(a, 1, full({2, 1}, 3, {DType::i64}));
          }).find("index 3 is out of range for dim 1 of size 3") != std::string::npos);
    CHECK(error_of([&] { index_select(a, 0, full({1}, -1, {DType::i64})); }).find("index -1") !=
          std::string::npos);
  }

  TEST_CASE("a tensor on an absent CUDA device is a clear error") {
    if (cuda::device_count() > 0) return;
    std::string e = error_of([] { zeros({2}, {DType::f32, Device::cuda(0)}); });
    CHECK((e.find("no CUDA support") != std::string::npos ||
           e.find("is not available") != std::string::npos));
    CHECK(error_of([] { parse_device("gpu"); }).find("valid: cpu, cuda, cuda:N") !=
          std::string::npos);
  }

  TEST_CASE("outputs written in place overwrite every element and nothing else") {
    Generator gen(3);
    Tensor a = randn({4, 5}, gen);
    Tensor b = randn({5}, gen);
    Tensor out = full({4, 5}, std::nan(""));
    binary_out(BinaryOp::mul, a, b, out);
    auto av = values(a);
    auto bv = values(b);
    auto ov = values(out);
    for (int k = 0; k < 20; ++k) CHECK(ov[k] == av[k] * bv[k % 5]);
    Tensor buffer = full({4, 10}, std::nan(""));
    copy_(slice(buffer, 1, 0, 10, 2), a);
    auto buf = values(buffer);
    for (int k = 0; k < 40; ++k) CHECK(std::isnan(buf[k]) == (k % 2 == 1));
  }

  TEST_CASE("index_add_ adds into a strided view in place, repeated indices accumulating") {
    Generator gen(4);
    Tensor base = randn({3, 8}, gen);
    Tensor before = clone(base);
    Tensor view = slice(base, 1, 1, 8, 2);  // columns 1, 3, 5, 7
    Tensor src = randn({3, 3}, gen);
    index_add_(view, 1, from_data(std::vector<std::int64_t>{2, 0, 2}, {3}), src);
    auto got = values(base);
    auto was = values(before);
    auto add = values(src);
    for (int row = 0; row < 3; ++row) {
      for (int col = 0; col < 8; ++col) {
        double want = was[row * 8 + col];
        if (col == 1) want += add[row * 3 + 1];
        if (col == 5) want += add[row * 3] + add[row * 3 + 2];
        CHECK(got[row * 8 + col] == doctest::Approx(want).epsilon(1e-6));
      }
    }
  }

  TEST_CASE("casts round to nearest even and truncate toward zero") {
    float tie = 1.0f + std::ldexp(1.0f, -8);        // halfway between two bf16 values
    float above = 1.0f + 3 * std::ldexp(1.0f, -9);  // above the halfway point
    auto b = to(to(from_data<float>({tie, above, -2.75f, NAN}, {4}), DType::bf16), DType::f32);
    auto v = values(b);
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == 1.0f + std::ldexp(1.0f, -7));
    CHECK(v[2] == -2.75f);
    CHECK(std::isnan(v[3]));
    CHECK(to(from_data<float>({2.9f, -2.9f}, {2}), DType::i32).to_vector<std::int32_t>() ==
          std::vector<std::int32_t>{2, -2});
    Tensor i = from_data<std::int64_t>({5, -7}, {2});
    CHECK(add(i, i).to_vector<std::int64_t>() == std::vector<std::int64_t>{10, -14});
  }

  TEST_CASE("reductions handle integers, NaN, ties and empty dims") {
    Tensor i = from_data<std::int32_t>({1, 2, 3, 4}, {2, 2});
    CHECK(sum(i, {1}).to_vector<std::int32_t>() == std::vector<std::int32_t>{3, 7});
    Tensor x = from_data<float>({1, NAN, 3, 5, 5, 2}, {2, 3});
    MaxResult m = max(x, 1);
    auto mv = values(m.values);
    CHECK(std::isnan(mv[0]));
    CHECK(mv[1] == 5);
    CHECK(m.indices.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0});
    CHECK(values(sum(zeros({3, 0}), {1})) == std::vector<float>{0, 0, 0});
    CHECK(sum(ones({1000, 1000})).item() == 1e6);
  }

  TEST_CASE("softmax stays finite for large and infinite logits") {
    float inf = std::numeric_limits<float>::infinity();
    Tensor x = from_data<float>({1000, 1001, -inf, -inf, -inf, 0}, {2, 3});
    auto s = values(softmax(x, 1));
    CHECK(s[0] == doctest::Approx(1 / (1 + std::exp(1.0))));
    CHECK(s[2] == 0);
    CHECK(s[5] == 1);
    auto l = values(log_softmax(x, 1));
    CHECK(l[1] == doctest::Approx(-std::log1p(std::exp(-1.0))));
    CHECK(l[5] == 0);
  }

  TEST_CASE("large matmuls match a naive product on the parallel paths") {
    Generator gen(5);
    for (auto [batch, m, k, n] :
         std::vector<std::array<std::int64_t, 4>>{{1, 130, 257, 67}, {6, 17, 33, 9}}) {
      Tensor a = randn({batch, m, k}, gen, {DType::f64});
      Tensor b = randn({batch, k, n}, gen, {DType::f64});
      auto got = matmul(to(a, DType::f32), to(b, DType::f32)).to_vector<double>();
      auto av = a.to_vector<double>();
      auto bv = b.to_vector<double>();
      for (std::int64_t p = 0; p < batch; ++p) {
        for (std::int64_t i = 0; i < m; ++i) {
          for (std::int64_t j = 0; j < n; ++j) {
            double want = 0;
            for (std::int64_t q = 0; q < k; ++q) {
              want += av[(p * m + i) * k + q] * bv[(p * k + q) * n + j];
            }
            REQUIRE(got[(p * m + i) * n + j] == doctest::Approx(want).epsilon(1e-4).scale(1));
          }
        }
      }
    }
  }

  TEST_CASE("large elementwise ops and reductions match plain loops on the parallel paths") {
    Generator gen(6);
    Tensor a = randn({301, 517}, gen);
    Tensor b = randn({517}, gen);
    auto av = values(a);
    auto bv = values(b);
    auto s = values(add(a, b));
    auto t = values(transpose(contiguous(transpose(a, 0, 1)), 0, 1));
    auto col = values(sum(a, {0}));
    for (std::int64_t k = 0; k < 301 * 517; ++k) {
      REQUIRE(s[k] == av[k] + bv[k % 517]);
      REQUIRE(t[k] == av[k]);
    }
    for (std::int64_t j = 0; j < 517; ++j) {
      double want = 0;
      for (std::int64_t i = 0; i < 301; ++i) want += av[i * 517 + j];
      REQUIRE(col[j] == doctest::Approx(want).epsilon(1e-6));
    }
  }
}

}  // namespace longnet
