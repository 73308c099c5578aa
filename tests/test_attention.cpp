// Attention against brute-force references written literally from DESIGN.md section 5,
// gradients by gradcheck, and causality.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/block_sparse.h"
#include "attention/dilated.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"

namespace longnet {
namespace {

struct Qkv {
  Tensor q, k, v;
};

Qkv draw_qkv(std::int64_t b, std::int64_t nq, std::int64_t nk, std::int64_t h, std::int64_t d,
             std::uint64_t seed, DType dtype = DType::f64) {
  Generator gen(seed);
  return {randn({b, nq, h, d}, gen, {dtype}), randn({b, nk, h, d}, gen, {dtype}),
          randn({b, nk, h, d}, gen, {dtype})};
}

// For query p of head h: the multiset of key positions, straight from the definition.
std::vector<std::int64_t> key_multiset(const DilatedAttentionConfig& c, std::int64_t heads,
                                       std::int64_t h, std::int64_t p, std::int64_t nk) {
  auto m = static_cast<std::int64_t>(c.segment_lengths.size());
  std::vector<std::pair<std::int64_t, std::int64_t>> branches;  // (branch, offset)
  if (c.mode == DilatedMode::paper) {
    for (std::int64_t i = 0; i < m; ++i) branches.emplace_back(i, h % c.dilation_rates[i]);
  } else {
    // Group sizes floor(H/m), the first H mod m one larger.
    std::int64_t start = 0;
    for (std::int64_t g = 0; g < m; ++g) {
      std::int64_t size = heads / m + (g < heads % m ? 1 : 0);
      if (h >= start && h < start + size) branches.emplace_back(g, g % c.dilation_rates[g]);
      start += size;
    }
  }
  std::vector<std::int64_t> keys;
  for (auto [i, j] : branches) {
    std::int64_t w = c.segment_lengths[i];
    std::int64_t r = c.dilation_rates[i];
    std::int64_t t0 = p / w * w;
    if (p - t0 < j || (p - t0 - j) % r != 0) continue;  // this branch does not select p
    for (std::int64_t key = t0 + j; key < std::min(t0 + w, nk); key += r) {
      if (!c.causal || key <= p) keys.push_back(key);
    }
  }
  return keys;
}

// Output and lse by brute force in f64.
std::pair<std::vector<double>, std::vector<double>> brute_force(const Qkv& x,
                                                                const DilatedAttentionConfig& c) {
  auto q = x.q.to_vector<double>();
  auto k = x.k.to_vector<double>();
  auto v = x.v.to_vector<double>();
  std::int64_t b_n = x.q.size(0), nq = x.q.size(1), nk = x.k.size(1), heads = x.q.size(2),
               d = x.q.size(3);
  double scale = c.scale ? *c.scale : 1 / std::sqrt(double(d));
  double divide = c.mode == DilatedMode::grouped ? double(c.segment_lengths.size()) : 1.0;
  std::vector<double> out(q.size(), 0.0);
  std::vector<double> lse(static_cast<std::size_t>(b_n * heads * nq));
  for (std::int64_t b = 0; b < b_n; ++b) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t p = 0; p < nq; ++p) {
        auto keys = key_multiset(c, heads, h, p, nk);
        double denom = 0;
        std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
        for (auto key : keys) {
          double s = 0;
          for (std::int64_t e = 0; e < d; ++e) {
            s += q[((b * nq + p) * heads + h) * d + e] * k[((b * nk + key) * heads + h) * d + e];
          }
          double weight = std::exp(scale * s);
          denom += weight;
          for (std::int64_t e = 0; e < d; ++e)
            acc[e] += weight * v[((b * nk + key) * heads + h) * d + e];
        }
        for (std::int64_t e = 0; e < d; ++e) {
          out[((b * nq + p) * heads + h) * d + e] = keys.empty() ? 0.0 : acc[e] / denom / divide;
        }
        lse[(b * heads + h) * nq + p] =
            keys.empty() ? -std::numeric_limits<double>::infinity() : std::log(denom);
      }
    }
  }
  return {out, lse};
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                 const std::string& what) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    bool ok = (std::isinf(want[i]) && got[i] == want[i]) ||
              std::abs(got[i] - want[i]) <= tol * (1 + std::abs(want[i]));
    if (!ok) {
      FAIL_CHECK(what, ": element ", i, " is ", got[i], ", reference ", want[i]);
      return;
    }
  }
}

struct Case {
  const char* name;
  std::int64_t b, nq, nk, h, d;
  DilatedAttentionConfig config;
};

std::vector<Case> cases() {
  using V = std::vector<std::int64_t>;
  std::vector<Case> out;
  for (DilatedMode mode : {DilatedMode::paper, DilatedMode::grouped}) {
    for (bool causal : {false, true}) {
      // N = 37 is a multiple of no segment; 5 heads over 3 branches split unevenly (2, 2, 1).
      out.push_back(
          {"three branches, odd N", 2, 37, 37, 5, 4, {V{8, 16, 5}, V{1, 2, 3}, mode, causal}});
      // r larger than its segment, and a segment longer than N.
      out.push_back({"r above w, w above N", 1, 23, 23, 4, 3, {V{4, 64}, V{6, 3}, mode, causal}});
      out.push_back({"one token", 1, 1, 1, 3, 2, {V{2, 4}, V{1, 2}, mode, causal}});
    }
    out.push_back({"cross-attention, Nq < Nk", 1, 9, 14, 3, 4, {V{4, 8}, V{1, 2}, mode, false}});
  }
  out.push_back({"explicit scale", 1, 10, 10, 2, 3, {V{5}, V{2}, DilatedMode::paper, true, 0.7}});
  return out;
}

std::string label(const Case& c) {
  return cat(c.name, c.config.mode == DilatedMode::paper ? " (paper" : " (grouped",
             c.config.causal ? ", causal)" : ")");
}

// Block-sparse output by brute force from an explicit layout: one softmax over the keys of
// the kept blocks (causal: at or before the query).
std::vector<double> block_brute_force(const Qkv& x, const BlockSparseConfig& c,
                                      const std::vector<std::vector<std::int64_t>>& layout) {
  auto q = x.q.to_vector<double>();
  auto k = x.k.to_vector<double>();
  auto v = x.v.to_vector<double>();
  std::int64_t b_n = x.q.size(0), nq = x.q.size(1), nk = x.k.size(1), heads = x.q.size(2),
               d = x.q.size(3);
  std::int64_t nqb = (nq + c.block_size - 1) / c.block_size;
  double scale = 1 / std::sqrt(double(d));
  std::vector<double> out(q.size(), 0.0);
  for (std::int64_t b = 0; b < b_n; ++b) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t p = 0; p < nq; ++p) {
        double denom = 0;
        std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
        for (auto kb : layout[(b * heads + h) * nqb + p / c.block_size]) {
          for (std::int64_t key = kb * c.block_size; key < std::min((kb + 1) * c.block_size, nk);
               ++key) {
            if (c.causal && key > p) continue;
            double s = 0;
            for (std::int64_t e = 0; e < d; ++e) {
              s += q[((b * nq + p) * heads + h) * d + e] * k[((b * nk + key) * heads + h) * d + e];
            }
            double weight = std::exp(scale * s);
            denom += weight;
            for (std::int64_t e = 0; e < d; ++e) {
              acc[e] += weight * v[((b * nk + key) * heads + h) * d + e];
            }
          }
        }
        for (std::int64_t e = 0; e < d; ++e) {
          out[((b * nq + p) * heads + h) * d + e] = denom > 0 ? acc[e] / denom : 0.0;
        }
      }
    }
  }
  return out;
}

template <class F>
std::string error_of_config(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

std::vector<BlockSparseConfig> block_configs() {
  std::vector<BlockSparseConfig> out;
  for (BlockPattern pattern : {BlockPattern::local_window, BlockPattern::dilated,
                               BlockPattern::global_local, BlockPattern::content_adaptive}) {
    for (bool causal : {false, true}) out.push_back({pattern, 4, 0.4, 1, causal});
  }
  return out;
}

}  // namespace

TEST_SUITE("attention") {
  TEST_CASE("dilated attention equals the brute-force definition in f64 and f32") {
    std::uint64_t seed = 1;
    for (const Case& c : cases()) {
      Qkv x = draw_qkv(c.b, c.nq, c.nk, c.h, c.d, seed++);
      auto [want_out, want_lse] = brute_force(x, c.config);
      AttentionOutput r = dilated_attention_forward(x.q, x.k, x.v, c.config);
      check_close(r.out.to_vector<double>(), want_out, 1e-12, label(c) + " out f64");
      check_close(r.lse.to_vector<double>(), want_lse, 1e-12, label(c) + " lse f64");
      Qkv x32{to(x.q, DType::f32), to(x.k, DType::f32), to(x.v, DType::f32)};
      auto [want32, unused] = brute_force(x32, c.config);
      AttentionOutput r32 = dilated_attention_forward(x32.q, x32.k, x32.v, c.config);
      CHECK(r32.out.dtype() == DType::f32);
      check_close(r32.out.to_vector<double>(), want32, 1e-5, label(c) + " out f32");
    }
  }

  TEST_CASE("dilated attention gradients pass gradcheck") {
    std::uint64_t seed = 100;
    for (const Case& c : cases()) {
      if (c.nq > 23) continue;  // keep the finite differences quick
      Qkv x = draw_qkv(c.b, c.nq, c.nk, c.h, c.d, seed++);
      auto f = [&](const std::vector<Variable>& in) {
        return dilated_attention(in[0], in[1], in[2], c.config);
      };
      GradcheckResult r = gradcheck(f, {x.q, x.k, x.v});
      CHECK_MESSAGE(r.ok, label(c), ": ", r.message);
    }
    Case big = cases()[0];  // odd N, uneven groups: checked on a smaller batch
    Qkv x = draw_qkv(1, 19, 19, 5, 2, 7);
    for (DilatedMode mode : {DilatedMode::paper, DilatedMode::grouped}) {
      big.config.mode = mode;
      big.config.causal = true;
      auto f = [&](const std::vector<Variable>& in) {
        return dilated_attention(in[0], in[1], in[2], big.config);
      };
      GradcheckResult r = gradcheck(f, {x.q, x.k, x.v});
      CHECK_MESSAGE(r.ok, label(big), ": ", r.message);
    }
  }

  TEST_CASE("the backward of a scaled output takes the scale instead of rescaled tensors") {
    // For out' = s * attention, backward(out', dout, out_scale s) is the gradient of out';
    // the same as the plain backward given out and s * dout.
    std::uint64_t seed = 300;
    for (const Case& c : cases()) {
      Qkv x = draw_qkv(c.b, c.nq, c.nk, c.h, c.d, seed++);
      Generator gen(seed++);
      Tensor dout = randn({c.b, c.nq, c.h, c.d}, gen, {DType::f64});
      AttentionOutput o = dilated_attention_forward(x.q, x.k, x.v, c.config);
      for (double s : {1.0 / 3.0, 2.5}) {
        AttentionGrads want =
            dilated_attention_backward(x.q, x.k, x.v, o.out, o.lse, mul(dout, s), c.config);
        AttentionGrads got = dilated_attention_backward(x.q, x.k, x.v, mul(o.out, s), o.lse, dout,
                                                        c.config, ResultDtype::input, s);
        check_close(got.dq.to_vector<double>(), want.dq.to_vector<double>(), 1e-12, label(c));
        check_close(got.dk.to_vector<double>(), want.dk.to_vector<double>(), 1e-12, label(c));
        check_close(got.dv.to_vector<double>(), want.dv.to_vector<double>(), 1e-12, label(c));
      }
    }
  }

  TEST_CASE("causal dilated attention never looks ahead, in values or gradients") {
    using V = std::vector<std::int64_t>;
    for (DilatedMode mode : {DilatedMode::paper, DilatedMode::grouped}) {
      DilatedAttentionConfig c{V{4, 8, 32}, V{1, 2, 4}, mode, true};
      const std::int64_t n = 29;
      const std::int64_t cut = 13;
      Qkv x = draw_qkv(1, n, n, 4, 3, 42);
      Qkv y = draw_qkv(1, n, n, 4, 3, 43);
      // y equals x up to cut and differs after it.
      for (Tensor* t : {&y.q, &y.k, &y.v}) {
        const Tensor& src = t == &y.q ? x.q : (t == &y.k ? x.k : x.v);
        copy_(narrow(*t, 1, 0, cut), narrow(src, 1, 0, cut));
      }
      Generator gen(5);
      Tensor w = randn({1, cut, 4, 3}, gen, {DType::f64});
      auto run = [&](const Qkv& in) {
        Variable q(in.q, true), k(in.k, true), v(in.v, true);
        Variable out = dilated_attention(q, k, v, c);
        Variable loss = sum(mul(narrow(out, 1, 0, cut), Variable(w)));
        loss.backward();
        return std::vector<Tensor>{narrow(out.data(), 1, 0, cut), narrow(q.grad(), 1, 0, cut),
                                   narrow(k.grad(), 1, 0, cut), narrow(v.grad(), 1, 0, cut)};
      };
      auto a = run(x);
      auto b = run(y);
      const std::string names[] = {"out", "dq", "dk", "dv"};
      for (int i = 0; i < 4; ++i) {
        auto av = a[i].to_vector<double>();
        auto bv = b[i].to_vector<double>();
        double worst = 0;
        for (std::size_t e = 0; e < av.size(); ++e)
          worst = std::max(worst, std::abs(av[e] - bv[e]));
        CHECK_MESSAGE(worst == 0, names[i], " before the cut moved by ", worst,
                      " when later tokens changed");
      }
    }
  }

  TEST_CASE("dense attention equals softmax over all (or all earlier) keys") {
    Qkv x = draw_qkv(2, 7, 7, 3, 4, 9);
    for (bool causal : {false, true}) {
      Variable out = dense_attention(Variable(x.q), Variable(x.k), Variable(x.v), causal);
      DilatedAttentionConfig c{{1000}, {1}, DilatedMode::paper, causal};  // one segment
      check_close(out.data().to_vector<double>(), brute_force(x, c).first, 1e-12,
                  causal ? "dense causal" : "dense");
    }
    Qkv small = draw_qkv(1, 5, 6, 2, 3, 10);
    auto f = [](const std::vector<Variable>& in) {
      return dense_attention(in[0], in[1], in[2], false);
    };
    GradcheckResult r = gradcheck(f, {small.q, small.k, small.v});
    CHECK_MESSAGE(r.ok, r.message);
  }

  TEST_CASE("a query no branch selects gets zero output, -inf lse and zero gradient") {
    // Rate 4 and one head: offset 0 selects positions 0, 4, 8; the rest get nothing.
    DilatedAttentionConfig c{{12}, {4}, DilatedMode::paper, false};
    Qkv x = draw_qkv(1, 12, 12, 1, 2, 11);
    Variable q(x.q, true);
    Variable out = dilated_attention(q, Variable(x.k), Variable(x.v), c);
    AttentionOutput r = dilated_attention_forward(x.q, x.k, x.v, c);
    auto o = out.data().to_vector<double>();
    auto lse = r.lse.to_vector<double>();
    sum(out).backward();
    auto dq = q.grad().to_vector<double>();
    for (std::int64_t p = 0; p < 12; ++p) {
      bool selected = p % 4 == 0;
      CHECK(std::isinf(lse[p]) == !selected);
      if (!selected) {
        CHECK(o[2 * p] == 0);
        CHECK(dq[2 * p] == 0);
      }
    }
  }

  TEST_CASE("block-sparse patterns keep the documented key blocks") {
    // 8 blocks of 4: density 0.375 keeps 3 blocks.
    Qkv x = draw_qkv(1, 32, 32, 1, 2, 21);
    auto kept = [&](BlockPattern pattern, double density, bool causal, std::int64_t qb) {
      return block_layout(x.q, x.k, {pattern, 4, density, 1, causal})[qb];
    };
    using V = std::vector<std::int64_t>;
    CHECK(kept(BlockPattern::local_window, 0.375, false, 0) == V{0, 1, 2});
    CHECK(kept(BlockPattern::local_window, 0.375, false, 4) == V{3, 4, 5});
    CHECK(kept(BlockPattern::local_window, 0.375, false, 7) == V{5, 6, 7});
    CHECK(kept(BlockPattern::local_window, 0.375, true, 4) == V{2, 3, 4});
    CHECK(kept(BlockPattern::local_window, 0.375, true, 1) == V{0, 1});
    CHECK(kept(BlockPattern::dilated, 0.25, false, 5) == V{1, 5});
    CHECK(kept(BlockPattern::dilated, 0.25, true, 6) == V{2, 6});
    CHECK(kept(BlockPattern::global_local, 0.375, false, 4) == V{0, 4, 5});
    CHECK(kept(BlockPattern::global_local, 0.375, true, 4) == V{0, 3, 4});
    CHECK(kept(BlockPattern::local_window, 1.0, false, 2).size() == 8);
    // Content-adaptive: the diagonal plus the blocks with the largest pooled q . k.
    auto q = x.q.to_vector<double>();
    auto k = x.k.to_vector<double>();
    auto mean = [](const std::vector<double>& t, std::int64_t blk, std::int64_t e) {
      double total = 0;
      for (std::int64_t p = blk * 4; p < blk * 4 + 4; ++p) total += t[p * 2 + e] / 4;
      return total;
    };
    for (std::int64_t qb : {0, 3, 7}) {
      std::vector<std::pair<double, std::int64_t>> ranked;
      for (std::int64_t kb = 0; kb < 8; ++kb) {
        if (kb == qb) continue;
        ranked.emplace_back(-(mean(q, qb, 0) * mean(k, kb, 0) + mean(q, qb, 1) * mean(k, kb, 1)),
                            kb);
      }
      std::sort(ranked.begin(), ranked.end());
      V want = {qb, ranked[0].second, ranked[1].second};
      std::sort(want.begin(), want.end());
      CHECK(kept(BlockPattern::content_adaptive, 0.375, false, qb) == want);
    }
    CHECK(error_of_config([] {
            BlockSparseConfig{BlockPattern::dilated, 4, 0.0}.validate();
          }).find("density is 0") != std::string::npos);
    CHECK(error_of_config([] { parse_block_pattern("stripes"); }).find("valid: local_window") !=
          std::string::npos);
  }

  TEST_CASE("block-sparse attention equals one softmax over the kept blocks") {
    std::uint64_t seed = 300;
    for (const auto& c : block_configs()) {
      Qkv x = draw_qkv(2, 19, 19, 3, 4, seed++);  // 5 blocks, the last one short
      auto layout = block_layout(x.q, x.k, c);
      AttentionOutput r = block_sparse_attention_forward(x.q, x.k, x.v, c);
      check_close(r.out.to_vector<double>(), block_brute_force(x, c, layout), 1e-12,
                  cat(name(c.pattern), c.causal ? " causal" : ""));
    }
    // Keeping every block is dense attention.
    Qkv x = draw_qkv(1, 13, 13, 2, 3, 5);
    for (bool causal : {false, true}) {
      BlockSparseConfig all{BlockPattern::local_window, 4, 1.0, 0, causal};
      Variable sparse = block_sparse_attention(Variable(x.q), Variable(x.k), Variable(x.v), all);
      Variable dense = dense_attention(Variable(x.q), Variable(x.k), Variable(x.v), causal);
      check_close(sparse.data().to_vector<double>(), dense.data().to_vector<double>(), 1e-12,
                  "density 1");
    }
  }

  TEST_CASE("block-sparse attention gradients pass gradcheck and stay causal") {
    std::uint64_t seed = 400;
    for (const auto& c : block_configs()) {
      Qkv x = draw_qkv(1, 11, 11, 2, 3, seed++);
      auto f = [&](const std::vector<Variable>& in) {
        return block_sparse_attention(in[0], in[1], in[2], c);
      };
      GradcheckResult r = gradcheck(f, {x.q, x.k, x.v});
      CHECK_MESSAGE(r.ok, name(c.pattern), c.causal ? " causal: " : ": ", r.message);
    }
    BlockSparseConfig c{BlockPattern::global_local, 4, 0.5, 1, true};
    Qkv x = draw_qkv(1, 21, 21, 2, 3, 44);
    Qkv y = draw_qkv(1, 21, 21, 2, 3, 45);
    const std::int64_t cut = 10;
    copy_(narrow(y.q, 1, 0, cut), narrow(x.q, 1, 0, cut));
    copy_(narrow(y.k, 1, 0, cut), narrow(x.k, 1, 0, cut));
    copy_(narrow(y.v, 1, 0, cut), narrow(x.v, 1, 0, cut));
    Generator wgen(6);
    Tensor w = randn({1, cut, 2, 3}, wgen, {DType::f64});
    // Outputs before the cut, and the gradients there of a loss on those outputs.
    auto early = [&](const Qkv& in) {
      Variable q(in.q, true), k(in.k, true), v(in.v, true);
      Variable out = block_sparse_attention(q, k, v, c);
      sum(mul(narrow(out, 1, 0, cut), Variable(w))).backward();
      std::vector<std::vector<double>> parts;
      for (const Tensor& t : {out.data(), q.grad(), k.grad(), v.grad()}) {
        parts.push_back(narrow(t, 1, 0, cut).to_vector<double>());
      }
      return parts;
    };
    CHECK(early(x) == early(y));
  }

  TEST_CASE("bad configurations and inputs are errors that name the field") {
    using V = std::vector<std::int64_t>;
    CHECK(error_of_config([] {
            DilatedAttentionConfig{V{}, V{}}.validate();
          }).find("segment_lengths") != std::string::npos);
    CHECK(error_of_config([] {
            DilatedAttentionConfig{V{4, 8}, V{1}}.validate();
          }).find("dilation_rates has 1") != std::string::npos);
    CHECK(error_of_config([] {
            DilatedAttentionConfig{V{4, 0}, V{1, 1}}.validate();
          }).find("segment_lengths[1] is 0") != std::string::npos);
    CHECK(error_of_config([] {
            DilatedAttentionConfig{V{4}, V{-1}}.validate();
          }).find("dilation_rates[0]") != std::string::npos);
    Qkv x = draw_qkv(1, 4, 4, 2, 3, 1);
    DilatedAttentionConfig c{V{4}, V{1}};
    CHECK(error_of_config([&] {
            dilated_attention_forward(x.q, reshape(x.k, {1, 4, 3, 2}), x.v, c);
          }).find("disagree") != std::string::npos);
    AttentionOutput o = dilated_attention_forward(x.q, x.k, x.v, c);
    CHECK(error_of_config([&] {
            dilated_attention_backward(x.q, x.k, x.v, o.out, o.lse, o.out, c, ResultDtype::input,
                                       0);
          }).find("out_scale is 0") != std::string::npos);
  }
}

}  // namespace longnet
