// Multihead attention, Transformer layers and the LongNet models.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "models/longnet.h"
#include "nn/loss.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/error_of.h"

namespace longnet {
namespace {

using testing::error_of;

LongNetConfig tiny_config() {
  LongNetConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.num_heads = 2;
  c.encoder_layers = 1;
  c.decoder_layers = 2;
  c.d_ff = 16;
  c.attention = DilatedAttentionConfig{{4, 8}, {1, 2}};
  return c;
}

// Next-token inputs (batch, n) and targets of random tokens.
struct LmBatch {
  Tensor inputs, targets;
};
LmBatch lm_batch(std::int64_t vocab, std::int64_t batch, std::int64_t n, std::uint64_t seed) {
  Generator gen(seed);
  Tensor tokens = randint(0, vocab, {batch, n + 1}, gen);
  return {narrow(tokens, 1, 0, n), contiguous(narrow(tokens, 1, 1, n))};
}

}  // namespace

TEST_SUITE("models") {
  TEST_CASE("MAGNETO gamma follows the formulas for the layer counts") {
    CHECK(magneto_gamma(12, 0).encoder == doctest::Approx(std::sqrt(std::log(24.0))));
    CHECK(magneto_gamma(0, 12).decoder == doctest::Approx(std::sqrt(std::log(24.0))));
    MagnetoGamma both = magneto_gamma(6, 12);
    CHECK(both.encoder == doctest::Approx(std::sqrt(std::log(36.0) * std::log(12.0) / 3)));
    CHECK(both.decoder == doctest::Approx(std::sqrt(std::log(36.0))));
  }

  TEST_CASE("multihead attention configs are validated with the field named") {
    MultiheadAttentionConfig c;
    c.embed_dim = 10;
    c.num_heads = 4;
    CHECK(error_of([&] { c.validate(); }).find("divisible by num_heads") != std::string::npos);
    c.num_heads = 2;
    c.dropout = 1;
    CHECK(error_of([&] { c.validate(); }).find("dropout is 1") != std::string::npos);
    c.dropout = 0;
    c.attention = BlockSparseConfig{BlockPattern::local_window, 0};
    CHECK(error_of([&] { c.validate(); }).find("block_size is 0") != std::string::npos);
    CHECK(error_of([] { parse_position_encoding("alibi"); }).find("valid: none, rope, xpos") !=
          std::string::npos);
  }

  TEST_CASE("the factory builds every kind, auto picks the dilated kernel on the cpu") {
    Generator gen(1);
    Variable q(randn({1, 9, 2, 4}, gen, {DType::f64}));
    Variable k(randn({1, 9, 2, 4}, gen, {DType::f64}));
    Variable v(randn({1, 9, 2, 4}, gen, {DType::f64}));
    DilatedAttentionConfig d{{4, 8}, {1, 2}, DilatedMode::paper, true};
    auto a = make_attention(AutoAttentionConfig{d})->forward(q, k, v).data().to_vector<double>();
    auto b = make_attention(d)->forward(q, k, v).data().to_vector<double>();
    CHECK(a == b);
    CHECK(make_attention(AutoAttentionConfig{d})->describe().find("auto") != std::string::npos);
    CHECK(make_attention(DenseAttentionConfig{})->forward(q, k, v).shape() == Shape{1, 9, 2, 4});
    CHECK(make_attention(BlockSparseConfig{})->forward(q, k, v).shape() == Shape{1, 9, 2, 4});
    CHECK(std::string(kind_name(AttentionConfig{BlockSparseConfig{}})) == "block_sparse");
    CHECK(error_of([&] {
            make_attention(BlockSparseConfig{}, Device::cuda(1024));
          }).find("no implementation on cuda:1024") != std::string::npos);
  }

  TEST_CASE("multihead attention: sub-LayerNorm, gamma gain and gradients") {
    Generator gen(2);
    MultiheadAttentionConfig c;
    c.embed_dim = 8;
    c.num_heads = 2;
    c.attention = DilatedAttentionConfig{{4, 8}, {1, 2}, DilatedMode::grouped, true};
    c.position = PositionEncoding::rope;
    c.gamma_init = 3.0;
    MultiheadDilatedAttention mha(c, gen, {DType::f64});
    std::vector<std::string> names;
    for (const auto& [n, p] : mha.named_parameters()) names.push_back(n);
    CHECK(names == std::vector<std::string>{"q_proj.weight", "q_proj.bias", "k_proj.weight",
                                            "k_proj.bias", "v_proj.weight", "v_proj.bias",
                                            "out_proj.weight", "out_proj.bias",
                                            "inner_attn_ln.weight", "inner_attn_ln.bias"});
    // gamma 3 makes v_proj's weights about three times wider than q_proj's.
    auto spread = [&](const std::string& name) {
      for (const auto& [n, p] : mha.named_parameters()) {
        if (n == name) {
          double total = 0;
          for (double w : p.data().to_vector<double>()) total += w * w;
          return std::sqrt(total / double(p.numel()));
        }
      }
      return 0.0;
    };
    CHECK(spread("v_proj.weight") / spread("q_proj.weight") == doctest::Approx(3.0).epsilon(0.3));
    Tensor x = randn({2, 7, 8}, gen, {DType::f64});
    auto f = [&](const std::vector<Variable>& in) { return mha.forward(in[0], in[0], gen); };
    GradcheckResult r = gradcheck(f, {x});
    CHECK_MESSAGE(r.ok, r.message);
    Tensor memory = randn({2, 5, 8}, gen, {DType::f64});
    MultiheadAttentionConfig cross = c;
    cross.attention = DenseAttentionConfig{};
    cross.position = PositionEncoding::none;
    MultiheadDilatedAttention cross_mha(cross, gen, {DType::f64});
    CHECK(cross_mha.forward(Variable(x), Variable(memory), gen).shape() == Shape{2, 7, 8});
  }

  TEST_CASE("LongNetLM is causal: later tokens never change earlier logits") {
    Generator gen(3);
    LongNetConfig c = tiny_config();
    LongNetLM lm(c, gen);
    Tensor a = randint(0, 11, {1, 13}, gen);
    Tensor b = clone(a);
    copy_(narrow(b, 1, 9, 4), randint(0, 11, {1, 4}, gen));
    auto early = [&](const Tensor& tokens) {
      return narrow(lm.forward(tokens, gen).data(), 1, 0, 9).to_vector<float>();
    };
    CHECK(early(a) == early(b));
    CHECK(lm.forward(a, gen).shape() == Shape{1, 13, 11});
    CHECK(error_of([&] { lm.forward(zeros({13}, {DType::i64}), gen); }).find("(batch, seq)") !=
          std::string::npos);
  }

  TEST_CASE("LongNet encoder-decoder: shapes, names and a causal decoder") {
    Generator gen(4);
    LongNet model(tiny_config(), gen);
    Tensor source = randint(0, 11, {2, 6}, gen);
    Tensor target = randint(0, 11, {2, 9}, gen);
    Variable logits = model.forward(source, target, gen);
    CHECK(logits.shape() == Shape{2, 9, 11});
    bool cross = false;
    for (const auto& [n, p] : model.named_parameters()) {
      cross = cross || n == "decoder_layers.0.encoder_attn.q_proj.weight";
    }
    CHECK(cross);
    Tensor changed = clone(target);
    copy_(narrow(changed, 1, 5, 4), randint(0, 11, {2, 4}, gen));
    auto early = [&](const Tensor& t) {
      return narrow(model.forward(source, t, gen).data(), 1, 0, 5).to_vector<float>();
    };
    CHECK(early(target) == early(changed));
    LongNetConfig paper = LongNetConfig::paper();
    CHECK(paper.d_model == 768);
    CHECK(paper.encoder_layers == 12);
    CHECK(std::get<DilatedAttentionConfig>(paper.attention).segment_lengths.back() == 32768);
  }

  TEST_CASE("LongNetLM in bf16 mixed precision follows the f32 model: loss and gradients") {
    LongNetConfig c = tiny_config();
    c.vocab_size = 40;
    c.d_model = 32;
    c.num_heads = 4;
    c.d_ff = 64;
    c.attention = DilatedAttentionConfig{{8, 16}, {1, 2}};
    Generator init(31);
    LongNetLM f32_model(c, init);
    c.compute_dtype = DType::bf16;
    LongNetLM bf16_model(c, init);
    bf16_model.load_state_dict(f32_model.state_dict());
    Generator gen(32);
    auto [inputs, targets] = lm_batch(c.vocab_size, 2, 36, 33);

    Variable want_logits = f32_model.forward(inputs, gen);
    Variable want = cross_entropy(want_logits, targets);
    want.backward();
    Variable logits = bf16_model.forward(inputs, gen);
    CHECK(logits.dtype() == DType::bf16);
    Variable loss = cross_entropy(logits, targets);
    CHECK(loss.dtype() == DType::f32);
    loss.backward();
    CHECK(loss.data().item() == doctest::Approx(want.data().item()).epsilon(1e-2));

    auto named = bf16_model.named_parameters();
    auto want_named = f32_model.named_parameters();
    REQUIRE(named.size() == want_named.size());
    for (std::size_t i = 0; i < named.size(); ++i) {
      CAPTURE(named[i].first);
      const Variable& p = named[i].second;
      CHECK(p.dtype() == DType::f32);
      REQUIRE(p.grad().defined());
      CHECK(p.grad().dtype() == DType::f32);
      auto got = to(p.grad(), DType::f64).to_vector<double>();
      auto expected = to(want_named[i].second.grad(), DType::f64).to_vector<double>();
      double diff = 0;
      double scale = 0;
      for (std::size_t j = 0; j < got.size(); ++j) {
        diff = std::max(diff, std::abs(got[j] - expected[j]));
        scale = std::max(scale, std::abs(expected[j]));
      }
      // bf16 keeps 8 significant bits; through two layers the gradients stay within a few
      // percent of the f32 model's.
      CHECK(diff <= 0.05 * scale);
    }
  }

  TEST_CASE("LongNetLM with recomputation gives the same loss and gradients, dropout included") {
    LongNetConfig c = tiny_config();
    c.dropout = 0.2;
    Generator init(41);
    LongNetLM plain(c, init);
    c.recompute = true;
    LongNetLM recomputed(c, init);
    recomputed.load_state_dict(plain.state_dict());
    auto [inputs, targets] = lm_batch(c.vocab_size, 2, 16, 42);
    Generator gen_a(43);
    Generator gen_b(43);
    Variable want = cross_entropy(plain.forward(inputs, gen_a), targets);
    want.backward();
    Variable got = cross_entropy(recomputed.forward(inputs, gen_b), targets);
    got.backward();
    CHECK(got.data().item() == want.data().item());
    auto a = plain.named_parameters();
    auto b = recomputed.named_parameters();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      CAPTURE(a[i].first);
      REQUIRE(b[i].second.grad().defined());
      CHECK(b[i].second.grad().to_vector<float>() == a[i].second.grad().to_vector<float>());
    }
  }

  TEST_CASE("a chunked feed-forward gives the loss and gradients of the whole one") {
    LongNetConfig c = tiny_config();
    Generator init(44);
    LongNetLM plain(c, init);
    auto [inputs, targets] = lm_batch(c.vocab_size, 2, 16, 45);
    Generator gen(46);
    Variable want = cross_entropy(plain.forward(inputs, gen), targets);
    want.backward();
    for (bool recompute : {false, true}) {
      CAPTURE(recompute);
      c.ffn_chunk = 5;  // chunks of 5, 5, 5 and 1 positions
      c.recompute = recompute;
      LongNetLM chunked(c, init);
      chunked.load_state_dict(plain.state_dict());
      Variable got = cross_entropy(chunked.forward(inputs, gen), targets);
      got.backward();
      CHECK(got.data().item() == doctest::Approx(want.data().item()).epsilon(1e-6));
      auto a = plain.named_parameters();
      auto b = chunked.named_parameters();
      for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(a[i].first);
        auto g = b[i].second.grad().to_vector<double>();
        auto w = a[i].second.grad().to_vector<double>();
        double diff = 0;
        double scale = 1e-30;
        for (std::size_t j = 0; j < w.size(); ++j) {
          diff = std::max(diff, std::abs(g[j] - w[j]));
          scale = std::max(scale, std::abs(w[j]));
        }
        CHECK(diff <= 1e-5 * scale);
      }
    }
    c.ffn_chunk = -1;
    CHECK(error_of([&] { LongNetLM bad(c, init); }).find("ffn_chunk is -1") != std::string::npos);
  }

  TEST_CASE("LongNetLM trains forward and backward at 16K tokens on the cpu") {
    Generator gen(5);
    LongNetConfig c;
    c.vocab_size = 256;
    c.d_model = 32;
    c.num_heads = 4;
    c.decoder_layers = 2;
    c.d_ff = 64;
    c.attention = DilatedAttentionConfig{{512, 2048, 16384}, {1, 4, 16}};
    LongNetLM lm(c, gen);
    const std::int64_t n = 16384;
    Tensor tokens = randint(0, 256, {1, n + 1}, gen);
    auto start = std::chrono::steady_clock::now();
    Variable logits = lm.forward(narrow(tokens, 1, 0, n), gen);
    Variable loss = cross_entropy(logits, contiguous(narrow(tokens, 1, 1, n)));
    loss.backward();
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    MESSAGE("LongNetLM 16K tokens forward+backward: ", seconds, " s");
    // Untrained logits are near uniform: the loss is close to log(256).
    CHECK(loss.data().item() == doctest::Approx(std::log(256.0)).epsilon(0.1));
    for (const auto& p : lm.parameters()) {
      REQUIRE(p.grad().defined());
      double total = 0;
      for (float g : p.grad().to_vector<float>()) total += double(g) * g;
      CHECK(std::isfinite(total));
    }
  }
}

}  // namespace longnet
