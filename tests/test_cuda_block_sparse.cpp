// Block-sparse attention on the GPU against the CPU implementation, the oracle: out, lse and
// gradients on fresh random bf16 inputs, outputs poisoned first. Both sides read the same bf16
// values, compute in f32 and round out and the gradients to bf16, so the DESIGN.md tolerance
// for bf16 (1e-2) applies. The cases cover every pattern, causal or not, head dims 32, 64 and
// 128, batches and several heads, sequences that are no multiple of block_size, block sizes
// below, at and above the kernels' 64-row tiles, lists longer than the kernels' window of
// entries, and queries and keys of different lengths.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "attention/block_sparse.h"
#include "attention/cuda/block_sparse.h"
#include "attention/factory.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/error_of.h"
#include "tests/gpu_check.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;
using testing::host_values;
using testing::kGpu;
using testing::kGpuBf16;
using testing::Layout;
using testing::place;
using testing::poisoned;
using testing::relative_error;

struct Case {
  std::int64_t batch, nq, nk, heads, d;
  BlockSparseConfig config;
};

struct Inputs {
  Tensor q, k, v, dout;  // bf16 on the CPU
};

Inputs draw(const Case& c, std::uint64_t seed) {
  Generator gen(seed);
  auto r = [&](Shape shape) { return to(randn(shape, gen, {DType::f32}), DType::bf16); };
  return {r({c.batch, c.nq, c.heads, c.d}), r({c.batch, c.nk, c.heads, c.d}),
          r({c.batch, c.nk, c.heads, c.d}), r({c.batch, c.nq, c.heads, c.d})};
}

std::string describe_case(const Case& c) {
  const BlockSparseConfig& b = c.config;
  return cat("B=", c.batch, " Nq=", c.nq, " Nk=", c.nk, " H=", c.heads, " D=", c.d, " ",
             name(b.pattern), " block_size=", b.block_size, " density=", b.density,
             " global_blocks=", b.global_blocks, b.causal ? " causal" : "");
}

// Forward and backward through the cuda layer into poisoned outputs, against the CPU.
void check_against_cpu(const Case& c, std::uint64_t seed, Layout layout = Layout::contiguous) {
  INFO(describe_case(c));
  Inputs in = draw(c, seed);
  AttentionOutput want = block_sparse_attention_forward(in.q, in.k, in.v, c.config);
  AttentionGrads want_grads =
      block_sparse_attention_backward(in.q, in.k, in.v, want.out, want.lse, in.dout, c.config);

  Tensor q = place(in.q, layout, true);
  Tensor k = place(in.k, layout, false);
  Tensor v = place(in.v, layout, false);
  Tensor dout = place(in.dout, layout, true);
  double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  Tensor out = poisoned({c.batch, c.nq, c.heads, c.d}, {DType::bf16, kGpu});
  Tensor lse = poisoned({c.batch, c.heads, c.nq}, {DType::f32, kGpu});
  cuda::block_sparse_attention_forward(q, k, v, c.config, scale, out, lse);
  CHECK(relative_error(out, want.out) < kGpuBf16);
  CHECK(relative_error(lse, want.lse) < kGpuBf16);

  Tensor dq = poisoned(q.shape(), {DType::bf16, kGpu});
  Tensor dk = poisoned(k.shape(), {DType::bf16, kGpu});
  Tensor dv = poisoned(v.shape(), {DType::bf16, kGpu});
  cuda::block_sparse_attention_backward(q, k, v, out, lse, dout, c.config, scale, dq, dk, dv);
  CHECK(relative_error(dq, want_grads.dq) < kGpuBf16);
  CHECK(relative_error(dk, want_grads.dk) < kGpuBf16);
  CHECK(relative_error(dv, want_grads.dv) < kGpuBf16);
}

constexpr BlockPattern kPatterns[] = {BlockPattern::local_window, BlockPattern::dilated,
                                      BlockPattern::global_local, BlockPattern::content_adaptive};

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE(
      "block-sparse attention on the gpu matches the cpu: every pattern, head dims 32, 64 "
      "and 128") {
    std::uint64_t seed = 1000;
    for (BlockPattern pattern : kPatterns) {
      for (bool causal : {false, true}) {
        for (std::int64_t d : {32, 64, 128}) {
          // 6 blocks of 64, the last of 13 positions; 3 key blocks kept of 6.
          check_against_cpu({2, 333, 333, 3, d, {pattern, 64, 0.5, 1, causal}}, ++seed);
        }
      }
    }
  }

  TEST_CASE("block sizes below, at and above the kernels' 64-row tiles match the cpu") {
    std::uint64_t seed = 1100;
    for (BlockPattern pattern : kPatterns) {
      for (bool causal : {false, true}) {
        for (std::int64_t bs : {16, 24, 48, 80, 128, 192}) {
          check_against_cpu({1, 517, 517, 2, 64, {pattern, bs, 0.3, 2, causal}}, ++seed);
        }
      }
    }
  }

  TEST_CASE(
      "block-sparse extremes match the cpu: one block longer than the sequence, one or "
      "every key block kept") {
    std::uint64_t seed = 1150;
    for (bool causal : {false, true}) {
      check_against_cpu({1, 333, 333, 2, 64, {BlockPattern::local_window, 512, 0.5, 1, causal}},
                        ++seed);
      for (double density : {0.01, 1.0}) {
        for (BlockPattern pattern : kPatterns) {
          check_against_cpu({2, 300, 300, 2, 32, {pattern, 32, density, 0, causal}}, ++seed);
        }
      }
    }
  }

  TEST_CASE("lists longer than the kernels' window of 128 blocks match the cpu") {
    std::uint64_t seed = 1200;
    // 300 blocks of 16: every query block keeps all (dilated, rate 1) or 180 of them.
    for (bool causal : {false, true}) {
      check_against_cpu({1, 4790, 4790, 1, 32, {BlockPattern::dilated, 16, 1.0, 1, causal}},
                        ++seed);
      check_against_cpu(
          {1, 4790, 4790, 1, 32, {BlockPattern::content_adaptive, 16, 0.6, 1, causal}}, ++seed);
    }
  }

  TEST_CASE("queries and keys of different lengths match the cpu, blocks without keys included") {
    std::uint64_t seed = 1300;
    for (BlockPattern pattern : kPatterns) {
      for (bool causal : {false, true}) {
        check_against_cpu({2, 200, 130, 2, 64, {pattern, 32, 0.4, 1, causal}}, ++seed);
        check_against_cpu({1, 130, 200, 3, 32, {pattern, 32, 0.4, 1, causal}}, ++seed);
      }
    }
    // Causal with Nq > Nk and one key block kept: query blocks 2.. keep none (0 and lse -inf).
    check_against_cpu({1, 230, 64, 2, 64, {BlockPattern::local_window, 32, 0.01, 0, true}}, ++seed);
  }

  TEST_CASE("block-sparse attention reads strided views in place and copies misaligned ones") {
    std::uint64_t seed = 1400;
    for (Layout layout : {Layout::strided, Layout::misaligned}) {
      for (bool causal : {false, true}) {
        check_against_cpu({2, 150, 150, 3, 64, {BlockPattern::global_local, 32, 0.5, 1, causal}},
                          ++seed, layout);
        check_against_cpu(
            {1, 150, 150, 2, 128, {BlockPattern::content_adaptive, 64, 0.5, 1, causal}}, ++seed,
            layout);
      }
    }
  }

  TEST_CASE("block-sparse out, lse, dk and dv on the gpu are the same bits in every run") {
    Case c{1, 700, 700, 4, 64, {BlockPattern::content_adaptive, 64, 0.4, 1, true}};
    Inputs in = draw(c, 1500);
    Tensor q = to(in.q, kGpu);
    Tensor k = to(in.k, kGpu);
    Tensor v = to(in.v, kGpu);
    Tensor dout = to(in.dout, kGpu);
    AttentionOutput a = block_sparse_attention_forward(q, k, v, c.config);
    AttentionOutput b = block_sparse_attention_forward(q, k, v, c.config);
    CHECK(host_values(a.out) == host_values(b.out));
    CHECK(host_values(a.lse) == host_values(b.lse));
    AttentionGrads ga = block_sparse_attention_backward(q, k, v, a.out, a.lse, dout, c.config);
    AttentionGrads gb = block_sparse_attention_backward(q, k, v, a.out, a.lse, dout, c.config);
    CHECK(host_values(ga.dk) == host_values(gb.dk));
    CHECK(host_values(ga.dv) == host_values(gb.dv));
    // dq is summed by atomics in no fixed order: equal up to rounding.
    CHECK(relative_error(ga.dq, gb.dq) < kGpuBf16);
  }

  TEST_CASE("the differentiable block-sparse op runs on the gpu and keeps tensors there") {
    Case c{1, 100, 100, 2, 32, {BlockPattern::dilated, 16, 0.5, 1, true}};
    Inputs in = draw(c, 1600);
    Variable q(to(in.q, kGpu));
    Variable k(to(in.k, kGpu));
    Variable v(to(in.v, kGpu));
    Variable out = block_sparse_attention(q, k, v, c.config);
    CHECK(out.data().device() == kGpu);
    CHECK(out.data().dtype() == DType::bf16);
    CHECK(
        relative_error(out.data(), block_sparse_attention_forward(in.q, in.k, in.v, c.config).out) <
        kGpuBf16);
  }

  TEST_CASE("block-sparse attention on the gpu says what it takes") {
    Case c{1, 40, 40, 2, 64, {}};
    Inputs in = draw(c, 1700);
    Tensor q = to(to(in.q, DType::f32), kGpu);
    CHECK(contains(error_of([&] { block_sparse_attention_forward(q, q, q, c.config); }),
                   "bf16 q, k and v with one head dim of 32, 64 or 128"));
    Tensor narrow_heads = to(narrow(in.q, 3, 0, 48), kGpu);
    CHECK(contains(error_of([&] {
                     block_sparse_attention_forward(narrow_heads, narrow_heads, narrow_heads,
                                                    c.config);
                   }),
                   "head dim of 32, 64 or 128"));
  }
}

}  // namespace longnet
