// Dense and dilated attention on the GPU against the CPU implementation, the oracle: values,
// lse and gradients on fresh random inputs, outputs poisoned first. f32 runs are compared
// with the CPU computing in f64 from the same inputs, so the error measured is the GPU's
// own (f32 accumulation and exponentials) and the DESIGN.md tolerance 1e-5 applies as is;
// bf16 runs are compared with the CPU on the same bf16 inputs (both compute in f32 and
// round their outputs to bf16), within 1e-2. bf16 with D == Dv in {32, 64, 128} and aligned
// rows runs on tensor cores, everything else (f32, other head dims, misaligned views) on CUDA
// cores, so the cases below cover both paths.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>

#include "attention/cuda/dilated.h"
#include "attention/dilated.h"
#include "attention/factory.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/elementwise.h"
#include "tensor/view.h"
#include "tests/error_of.h"
#include "tests/gpu_check.h"

namespace longnet {
namespace {

using testing::error_of;
using testing::host_values;
using testing::kGpu;
using testing::Layout;
using testing::place;
using testing::poisoned;
using testing::relative_error;
using testing::tolerance_for;

struct Dims {
  std::int64_t batch, nq, nk, heads, d, dv;
};

struct Inputs {
  Tensor q, k, v, dout;  // on the CPU
};

Inputs draw(const Dims& s, DType dtype, std::uint64_t seed) {
  Generator gen(seed);
  auto r = [&](const Shape& shape) { return to(randn(shape, gen, {DType::f32}), dtype); };
  return {r({s.batch, s.nq, s.heads, s.d}), r({s.batch, s.nk, s.heads, s.d}),
          r({s.batch, s.nk, s.heads, s.dv}), r({s.batch, s.nq, s.heads, s.dv})};
}

DType oracle_dtype(DType dtype) { return dtype == DType::f32 ? DType::f64 : dtype; }

double scale_of(const DilatedAttentionConfig& c, std::int64_t d) {
  return c.scale ? *c.scale : 1.0 / std::sqrt(static_cast<double>(d));
}

std::string describe_case(const Dims& s, const DilatedAttentionConfig& c, DType dtype) {
  std::string w;
  std::string r;
  for (std::size_t i = 0; i < c.segment_lengths.size(); ++i) {
    w += cat(i ? "," : "", c.segment_lengths[i]);
    r += cat(i ? "," : "", c.dilation_rates[i]);
  }
  return cat(name(dtype), " B=", s.batch, " Nq=", s.nq, " Nk=", s.nk, " H=", s.heads, " D=", s.d,
             " Dv=", s.dv, " w={", w, "} r={", r, "} ",
             c.mode == DilatedMode::paper ? "paper" : "grouped", c.causal ? " causal" : "");
}

// Forward and backward through the cuda layer into poisoned outputs, against the CPU.
void check_against_cpu(const Dims& s, const DilatedAttentionConfig& c, DType dtype,
                       std::uint64_t seed, Layout layout = Layout::contiguous) {
  INFO(describe_case(s, c, dtype), " ", testing::name(layout));
  Inputs in = draw(s, dtype, seed);
  DType od = oracle_dtype(dtype);
  Tensor cq = to(in.q, od);
  Tensor ck = to(in.k, od);
  Tensor cv = to(in.v, od);
  AttentionOutput want = dilated_attention_forward(cq, ck, cv, c);
  AttentionGrads want_grads =
      dilated_attention_backward(cq, ck, cv, want.out, want.lse, to(in.dout, od), c);

  Tensor q = place(in.q, layout, true);
  Tensor k = place(in.k, layout, false);
  Tensor v = place(in.v, layout, false);
  double scale = scale_of(c, s.d);
  Tensor out = poisoned({s.batch, s.nq, s.heads, s.dv}, {dtype, kGpu});
  Tensor lse = poisoned({s.batch, s.heads, s.nq}, {DType::f32, kGpu});
  cuda::dilated_attention_forward(q, k, v, c, scale, out, lse);
  double tol = tolerance_for(dtype);
  CHECK(relative_error(out, want.out) < tol);
  CHECK(relative_error(lse, want.lse) < tol);

  Tensor dq = poisoned(q.shape(), {dtype, kGpu});
  Tensor dk = poisoned(k.shape(), {dtype, kGpu});
  Tensor dv = poisoned(v.shape(), {dtype, kGpu});
  cuda::dilated_attention_backward(q, k, v, out, lse, place(in.dout, layout, false), c, scale, 1,
                                   dq, dk, dv);
  CHECK(relative_error(dq, want_grads.dq) < tol);
  CHECK(relative_error(dk, want_grads.dk) < tol);
  CHECK(relative_error(dv, want_grads.dv) < tol);
}

Dims self_attention(std::int64_t batch, std::int64_t n, std::int64_t heads, std::int64_t d) {
  return {batch, n, n, heads, d, d};
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("dense attention on the gpu matches the cpu for head dims 32, 64 and 128") {
    std::uint64_t seed = 100;
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (bool causal : {false, true}) {
        for (std::int64_t d : {32, 64, 128}) {
          Dims s = self_attention(2, 77, 3, d);
          check_against_cpu(s, {{s.nq}, {1}, DilatedMode::paper, causal}, dtype, ++seed);
        }
        // Several query and key tiles per segment.
        Dims s = self_attention(1, 203, 2, 64);
        check_against_cpu(s, {{s.nq}, {1}, DilatedMode::paper, causal}, dtype, ++seed);
      }
    }
  }

  TEST_CASE("paper mode on the gpu matches the cpu: short last segments, rates beyond a segment") {
    std::uint64_t seed = 200;
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (bool causal : {false, true}) {
        // w=4 with r=6: heads with offset 4 or 5 select nothing in that branch.
        check_against_cpu(self_attention(2, 67, 7, 32),
                          {{4, 16, 40}, {6, 3, 2}, DilatedMode::paper, causal}, dtype, ++seed);
        // Segments of several tiles; 333 is a multiple of no segment; w beyond N is one segment.
        check_against_cpu(self_attention(1, 333, 4, 64),
                          {{100, 200, 1000}, {1, 3, 2}, DilatedMode::paper, causal}, dtype, ++seed);
        check_against_cpu(self_attention(1, 150, 3, 128),
                          {{64, 150}, {2, 5}, DilatedMode::paper, causal, 0.3}, dtype, ++seed);
      }
    }
  }

  TEST_CASE("grouped mode on the gpu matches the cpu with uneven head groups") {
    std::uint64_t seed = 300;
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (bool causal : {false, true}) {
        // 7 heads in 3 groups of 3, 2, 2.
        check_against_cpu(self_attention(2, 67, 7, 32),
                          {{4, 16, 40}, {6, 3, 2}, DilatedMode::grouped, causal}, dtype, ++seed);
        check_against_cpu(self_attention(1, 333, 5, 64),
                          {{100, 200, 1000}, {1, 3, 2}, DilatedMode::grouped, causal}, dtype,
                          ++seed);
        // More groups than one launch carries (8): 10 heads in 9 groups.
        check_against_cpu(self_attention(2, 70, 10, 32),
                          {{8, 16, 16, 24, 32, 40, 48, 56, 70},
                           {1, 2, 3, 1, 2, 3, 4, 5, 6},
                           DilatedMode::grouped,
                           causal},
                          dtype, ++seed);
        // More groups than heads: the last group is empty.
        check_against_cpu(self_attention(1, 90, 2, 64),
                          {{16, 32, 64}, {1, 2, 4}, DilatedMode::grouped, causal}, dtype, ++seed);
      }
    }
  }

  TEST_CASE("queries and keys of different lengths, and odd head dims, match the cpu") {
    std::uint64_t seed = 400;
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (bool causal : {false, true}) {
        check_against_cpu({2, 50, 90, 3, 32, 32}, {{32, 64}, {1, 2}, DilatedMode::paper, causal},
                          dtype, ++seed);
        check_against_cpu({1, 90, 50, 3, 32, 32}, {{32, 64}, {1, 2}, DilatedMode::paper, causal},
                          dtype, ++seed);
        // D and Dv differ and are no multiple of 16: the tiles pad them.
        check_against_cpu({1, 70, 70, 2, 40, 24}, {{70}, {1}, DilatedMode::paper, causal}, dtype,
                          ++seed);
        check_against_cpu({1, 70, 70, 2, 100, 128},
                          {{30, 70}, {1, 3}, DilatedMode::grouped, causal}, dtype, ++seed);
      }
    }
  }

  TEST_CASE(
      "bf16 on tensor cores matches the cpu: head dims 32, 64 and 128, tiles cut by segments") {
    std::uint64_t seed = 450;
    for (std::int64_t d : {32, 64, 128}) {
      for (bool causal : {false, true}) {
        // Several 64-row query and 64-key tiles, the last ones partial.
        Dims dense = self_attention(1, 301, 2, d);
        check_against_cpu(dense, {{301}, {1}, DilatedMode::paper, causal}, DType::bf16, ++seed);
        // Segments of 200 (no multiple of a tile), a short last one, rates with several
        // offsets, a segment beyond N.
        check_against_cpu(self_attention(1, 517, 3, d),
                          {{200, 517, 1024}, {1, 2, 5}, DilatedMode::paper, causal, 0.2},
                          DType::bf16, ++seed);
        // 5 heads in groups of 2, 2 and 1, offsets 0, 1, 2.
        check_against_cpu(self_attention(2, 390, 5, d),
                          {{130, 260, 390}, {1, 2, 4}, DilatedMode::grouped, causal}, DType::bf16,
                          ++seed);
        check_against_cpu({1, 260, 190, 2, d, d}, {{128, 260}, {1, 2}, DilatedMode::paper, causal},
                          DType::bf16, ++seed);
        check_against_cpu({1, 190, 260, 2, d, d}, {{128, 260}, {1, 2}, DilatedMode::paper, causal},
                          DType::bf16, ++seed);
        // Grouped, fewer keys than queries: segments from 260 on have no keys at any offset.
        check_against_cpu({2, 390, 131, 3, d, d},
                          {{130, 260, 390}, {1, 2, 4}, DilatedMode::grouped, causal}, DType::bf16,
                          ++seed);
        check_against_cpu({1, 131, 390, 3, d, d},
                          {{130, 260, 390}, {1, 2, 4}, DilatedMode::grouped, causal}, DType::bf16,
                          ++seed);
      }
    }
  }

  TEST_CASE("head dim 64 on tensor cores matches the cpu with wgmma (sm_90) and with mma.sync") {
    // On a compute capability 9.0 device the wgmma kernels take D = 64; LONGNET_NO_WGMMA
    // sends it to the mma.sync kernels, as on other devices (where both runs take those).
    std::uint64_t seed = 460;
    Generator gen(459);
    Tensor q64 = to(to(randn({1, 64, 2, 64}, gen), DType::bf16), kGpu);
    const std::string kernels = cuda::dilated_attention_kernels(q64, q64, q64);
    MESSAGE("head dim 64 in bf16 runs on ", kernels, " on ", cuda::device_name(0));
    CHECK((kernels == "wgmma" || kernels == "mma.sync"));
    for (bool wgmma : {true, false}) {
      CAPTURE(wgmma);
      if (!wgmma) {
        REQUIRE(setenv("LONGNET_NO_WGMMA", "1", 1) == 0);
        CHECK(std::string(cuda::dilated_attention_kernels(q64, q64, q64)) == "mma.sync");
      }
      for (bool causal : {false, true}) {
        // One tile, and tiles cut by the ends of segments and sequences.
        check_against_cpu(self_attention(1, 64, 2, 64), {{64}, {1}, DilatedMode::paper, causal},
                          DType::bf16, ++seed);
        check_against_cpu(self_attention(2, 333, 3, 64),
                          {{100, 200, 333}, {1, 3, 2}, DilatedMode::paper, causal}, DType::bf16,
                          ++seed);
        check_against_cpu(self_attention(1, 700, 5, 64),
                          {{256, 700}, {1, 3}, DilatedMode::grouped, causal}, DType::bf16, ++seed);
        check_against_cpu({1, 130, 200, 2, 64, 64},
                          {{128, 200}, {1, 2}, DilatedMode::paper, causal}, DType::bf16, ++seed);
        // Segments of one, two and three wgmma forward tiles (192 rows, counted from the
        // segment's end) and one row more or less.
        check_against_cpu(self_attention(1, 577, 2, 64),
                          {{191, 384, 577}, {1, 2, 3}, DilatedMode::paper, causal}, DType::bf16,
                          ++seed);
        check_against_cpu(self_attention(1, 577, 4, 64),
                          {{192, 385, 577}, {1, 1, 3}, DilatedMode::grouped, causal}, DType::bf16,
                          ++seed);
      }
      REQUIRE(unsetenv("LONGNET_NO_WGMMA") == 0);
    }
  }

  TEST_CASE("bf16 results, kept in f32 or bf16, are written in full by the tensor-core kernels") {
    // f32 outputs of bf16 inputs are the accumulators themselves, never zeroed first: the
    // first branch's kernels write the rows they select, write_unselected the others (a rate
    // above 1, segments without keys), so any row both missed stays NaN; keys no query sees
    // (Nq < Nk, causal) must get zeros. Against the CPU in f64 on the same bf16 inputs.
    std::uint64_t seed = 470;
    for (bool causal : {true, false}) {
      for (const auto& test :
           {std::pair{self_attention(1, 200, 3, 64),
                      DilatedAttentionConfig{{64, 200}, {1, 2}, DilatedMode::paper, causal}},
            std::pair{Dims{1, 130, 200, 3, 64, 64},
                      DilatedAttentionConfig{{128, 200}, {1, 2}, DilatedMode::paper, causal}},
            std::pair{Dims{2, 200, 130, 2, 64, 64},
                      DilatedAttentionConfig{{128, 200}, {1, 2}, DilatedMode::paper, causal}},
            std::pair{self_attention(1, 300, 4, 64),
                      DilatedAttentionConfig{{300}, {1}, DilatedMode::grouped, causal}},
            std::pair{self_attention(1, 200, 3, 64),
                      DilatedAttentionConfig{{64, 200}, {2, 1}, DilatedMode::paper, causal}},
            std::pair{Dims{1, 300, 140, 3, 64, 64},
                      DilatedAttentionConfig{{100, 300}, {2, 3}, DilatedMode::paper, causal}},
            std::pair{
                Dims{2, 300, 140, 3, 64, 64},
                DilatedAttentionConfig{{100, 200, 300}, {1, 2, 3}, DilatedMode::grouped, causal}},
            // One branch, offsets by head: segments of 100 at rate 3 (34 rows at offset 0, 33
            // at 1 and 2), a short last one.
            std::pair{self_attention(2, 250, 3, 64),
                      DilatedAttentionConfig{{100}, {3}, DilatedMode::paper, causal}}}) {
        const Dims& dims = test.first;
        const DilatedAttentionConfig& c = test.second;
        INFO(describe_case(dims, c, DType::bf16));
        Inputs in = draw(dims, DType::bf16, ++seed);
        Tensor cq = to(in.q, DType::f64);
        Tensor ck = to(in.k, DType::f64);
        Tensor cv = to(in.v, DType::f64);
        AttentionOutput want = dilated_attention_forward(cq, ck, cv, c);
        AttentionGrads want_grads =
            dilated_attention_backward(cq, ck, cv, want.out, want.lse, to(in.dout, DType::f64), c);
        Tensor q = to(in.q, kGpu);
        Tensor k = to(in.k, kGpu);
        Tensor v = to(in.v, kGpu);
        const double scale = scale_of(c, dims.d);
        Tensor out = poisoned({dims.batch, dims.nq, dims.heads, dims.dv}, {DType::f32, kGpu});
        Tensor lse = poisoned({dims.batch, dims.heads, dims.nq}, {DType::f32, kGpu});
        cuda::dilated_attention_forward(q, k, v, c, scale, out, lse);
        CHECK(relative_error(out, want.out) < testing::kGpuBf16);
        CHECK(relative_error(lse, want.lse) < testing::kGpuBf16);
        // Gradients in f32, and in bf16: where each head has one branch (grouped mode, one
        // branch) dq is then rounded from its accumulator at the selected rows only, and the
        // others get zeros.
        for (DType grad_dtype : {DType::f32, DType::bf16}) {
          CAPTURE(name(grad_dtype));
          Tensor dq = poisoned(q.shape(), {grad_dtype, kGpu});
          Tensor dk = poisoned(k.shape(), {grad_dtype, kGpu});
          Tensor dv = poisoned(v.shape(), {grad_dtype, kGpu});
          cuda::dilated_attention_backward(q, k, v, to(out, DType::bf16), lse, to(in.dout, kGpu), c,
                                           scale, 1, dq, dk, dv);
          CHECK(relative_error(dq, want_grads.dq) < testing::kGpuBf16);
          CHECK(relative_error(dk, want_grads.dk) < testing::kGpuBf16);
          CHECK(relative_error(dv, want_grads.dv) < testing::kGpuBf16);
        }
      }
    }
  }

  TEST_CASE("bf16 views are read in place, aligned ones on tensor cores, misaligned ones not") {
    std::uint64_t seed = 480;
    for (Layout layout : {Layout::strided, Layout::misaligned}) {
      for (bool causal : {false, true}) {
        check_against_cpu(self_attention(2, 150, 3, 64),
                          {{64, 150}, {1, 2}, DilatedMode::paper, causal}, DType::bf16, ++seed,
                          layout);
        check_against_cpu(self_attention(1, 150, 3, 32),
                          {{48, 150}, {2, 3}, DilatedMode::grouped, causal}, DType::bf16, ++seed,
                          layout);
      }
    }
  }

  TEST_CASE("which layouts take the tensor cores") {
    Inputs in = draw(self_attention(1, 40, 3, 64), DType::bf16, 470);
    auto on_tc = [](const Tensor& q, const Tensor& k, const Tensor& v) {
      return cuda::dilated_attention_on_tensor_cores(q, k, v);
    };
    Tensor q = place(in.q, Layout::contiguous, false);
    Tensor k = place(in.k, Layout::strided, false);
    Tensor v = place(in.v, Layout::strided, true);
    CHECK(on_tc(q, k, v));
    CHECK_FALSE(on_tc(q, place(in.k, Layout::misaligned, false), v));
    CHECK_FALSE(on_tc(to(q, DType::f32), to(k, DType::f32), to(v, DType::f32)));
    // A projection's output reshaped into heads, as the model makes them: a view whose
    // batch dim of size 1 has stride 1, which steps nowhere.
    Generator gen(471);
    Tensor rows = to(to(randn({40, 192}, gen), DType::bf16), kGpu);
    Tensor heads = reshape(rows, {1, 40, 3, 64});
    REQUIRE(heads.stride(0) % 8 != 0);
    CHECK(on_tc(heads, heads, heads));
    CHECK(cuda::dilated_attention_on_tensor_cores(heads, heads, heads, heads));
    CHECK_FALSE(on_tc(narrow(to(in.q, kGpu), 3, 0, 48), narrow(to(in.k, kGpu), 3, 0, 48),
                      narrow(to(in.v, kGpu), 3, 0, 48)));
  }

  TEST_CASE("on tensor cores out, lse, dk and dv are the same bits in every run") {
    Inputs in = draw(self_attention(1, 700, 4, 64), DType::bf16, 490);
    for (DilatedMode mode : {DilatedMode::paper, DilatedMode::grouped}) {
      DilatedAttentionConfig c{{256, 700}, {1, 2}, mode, true};
      Tensor q = to(in.q, kGpu);
      Tensor k = to(in.k, kGpu);
      Tensor v = to(in.v, kGpu);
      Tensor dout = to(in.dout, kGpu);
      AttentionOutput a = dilated_attention_forward(q, k, v, c);
      AttentionOutput b = dilated_attention_forward(q, k, v, c);
      CHECK(host_values(a.out) == host_values(b.out));
      CHECK(host_values(a.lse) == host_values(b.lse));
      AttentionGrads ga = dilated_attention_backward(q, k, v, a.out, a.lse, dout, c);
      AttentionGrads gb = dilated_attention_backward(q, k, v, a.out, a.lse, dout, c);
      CHECK(host_values(ga.dk) == host_values(gb.dk));
      CHECK(host_values(ga.dv) == host_values(gb.dv));
      // dq is summed by atomics in no fixed order: equal up to rounding.
      CHECK(relative_error(ga.dq, gb.dq) < testing::kGpuBf16);
    }
  }

  TEST_CASE("bf16 results kept in f32 round to the bf16 results, on tensor cores and off") {
    // Tensor cores (D 64) and CUDA cores (D 48); one branch, and paper mode's merged branches.
    for (std::int64_t d : {64, 48}) {
      Inputs in = draw(self_attention(1, 300, 4, d), DType::bf16, 495 + d);
      Tensor q = to(in.q, kGpu);
      Tensor k = to(in.k, kGpu);
      Tensor v = to(in.v, kGpu);
      Tensor dout = to(in.dout, kGpu);
      for (const DilatedAttentionConfig& c :
           {DilatedAttentionConfig{{128}, {1}, DilatedMode::paper, true},
            DilatedAttentionConfig{{64, 300}, {1, 3}, DilatedMode::paper, true}}) {
        CAPTURE(d);
        CAPTURE(c.segment_lengths.size());
        AttentionOutput rounded = dilated_attention_forward(q, k, v, c);
        AttentionOutput kept = dilated_attention_forward(q, k, v, c, ResultDtype::compute);
        REQUIRE(kept.out.dtype() == DType::f32);
        CHECK(host_values(to(kept.out, DType::bf16)) == host_values(rounded.out));
        CHECK(host_values(kept.lse) == host_values(rounded.lse));
        AttentionGrads g = dilated_attention_backward(q, k, v, rounded.out, rounded.lse, dout, c);
        AttentionGrads gf = dilated_attention_backward(q, k, v, rounded.out, rounded.lse, dout, c,
                                                       ResultDtype::compute);
        REQUIRE(gf.dq.dtype() == DType::f32);
        REQUIRE(gf.dk.dtype() == DType::f32);
        // dq (and off tensor cores dk and dv) are summed by atomics in no fixed order: equal
        // up to rounding there.
        if (d == 64) {
          CHECK(host_values(to(gf.dk, DType::bf16)) == host_values(g.dk));
          CHECK(host_values(to(gf.dv, DType::bf16)) == host_values(g.dv));
        } else {
          CHECK(relative_error(gf.dk, g.dk) < testing::kGpuBf16);
          CHECK(relative_error(gf.dv, g.dv) < testing::kGpuBf16);
        }
        CHECK(relative_error(gf.dq, g.dq) < testing::kGpuBf16);
      }
    }
  }

  TEST_CASE("the backward of a scaled output matches the cpu, on tensor cores and off") {
    // out' = s * attention: the GPU's backward with out_scale s against the CPU's in f64.
    const double s = 1.0 / 3.0;
    for (DType dtype : {DType::bf16, DType::f32}) {
      Dims dims = self_attention(1, 200, 4, 64);
      Inputs in = draw(dims, dtype, 611);
      for (const DilatedAttentionConfig& c :
           {DilatedAttentionConfig{{128}, {2}, DilatedMode::paper, true},
            DilatedAttentionConfig{{64, 200}, {1, 2}, DilatedMode::grouped, false}}) {
        INFO(describe_case(dims, c, dtype));
        Tensor q64 = to(in.q, DType::f64);
        Tensor k64 = to(in.k, DType::f64);
        Tensor v64 = to(in.v, DType::f64);
        AttentionOutput o = dilated_attention_forward(q64, k64, v64, c);
        AttentionGrads want = dilated_attention_backward(q64, k64, v64, o.out, o.lse,
                                                         mul(to(in.dout, DType::f64), s), c);
        Tensor scaled = to(to(mul(o.out, s), dtype), kGpu);
        AttentionGrads got = dilated_attention_backward(
            to(in.q, kGpu), to(in.k, kGpu), to(in.v, kGpu), scaled, to(to(o.lse, DType::f32), kGpu),
            to(in.dout, kGpu), c, ResultDtype::input, s);
        double tol = tolerance_for(dtype);
        CHECK(relative_error(got.dq, want.dq) < tol);
        CHECK(relative_error(got.dk, want.dk) < tol);
        CHECK(relative_error(got.dv, want.dv) < tol);
      }
    }
  }

  TEST_CASE("strided q, k and v are read in place") {
    Generator gen(500);
    DilatedAttentionConfig c{{16, 48}, {1, 3}, DilatedMode::paper, true};
    // q as a transpose of (B, H, N, D); k and v as halves of a (B, N, H, 2D) tensor.
    Tensor q_bhnd = randn({2, 3, 50, 32}, gen);
    Tensor kv = randn({2, 50, 3, 64}, gen);
    Tensor dout = randn({2, 50, 3, 32}, gen);
    auto pieces = [](const Tensor& t) { return split(t, {32, 32}, 3); };
    Tensor q_cpu = contiguous(transpose(q_bhnd, 1, 2));
    auto kv_cpu = pieces(kv);
    Tensor q64 = to(q_cpu, DType::f64);
    Tensor k64 = to(contiguous(kv_cpu[0]), DType::f64);
    Tensor v64 = to(contiguous(kv_cpu[1]), DType::f64);
    AttentionOutput want = dilated_attention_forward(q64, k64, v64, c);
    AttentionGrads want_grads =
        dilated_attention_backward(q64, k64, v64, want.out, want.lse, to(dout, DType::f64), c);

    Tensor q = transpose(to(q_bhnd, kGpu), 1, 2);
    auto kv_gpu = pieces(to(kv, kGpu));
    REQUIRE(!q.is_contiguous());
    REQUIRE(!kv_gpu[0].is_contiguous());
    AttentionOutput got = dilated_attention_forward(q, kv_gpu[0], kv_gpu[1], c);
    CHECK(relative_error(got.out, want.out) < testing::kGpuF32);
    CHECK(relative_error(got.lse, want.lse) < testing::kGpuF32);
    AttentionGrads grads =
        dilated_attention_backward(q, kv_gpu[0], kv_gpu[1], got.out, got.lse, to(dout, kGpu), c);
    CHECK(relative_error(grads.dq, want_grads.dq) < testing::kGpuF32);
    CHECK(relative_error(grads.dk, want_grads.dk) < testing::kGpuF32);
    CHECK(relative_error(grads.dv, want_grads.dv) < testing::kGpuF32);
  }

  TEST_CASE("the public functions dispatch to the gpu and keep tensors there") {
    Inputs in = draw(self_attention(1, 40, 2, 32), DType::bf16, 600);
    DilatedAttentionConfig c{{16, 40}, {1, 2}, DilatedMode::grouped, true};
    AttentionOutput got =
        dilated_attention_forward(to(in.q, kGpu), to(in.k, kGpu), to(in.v, kGpu), c);
    CHECK(got.out.device() == kGpu);
    CHECK(got.out.dtype() == DType::bf16);
    CHECK(got.lse.device() == kGpu);
    CHECK(got.lse.dtype() == DType::f32);
    AttentionOutput want = dilated_attention_forward(in.q, in.k, in.v, c);
    CHECK(relative_error(got.out, want.out) < testing::kGpuBf16);
    AttentionGrads grads = dilated_attention_backward(
        to(in.q, kGpu), to(in.k, kGpu), to(in.v, kGpu), got.out, got.lse, to(in.dout, kGpu), c);
    CHECK(grads.dk.device() == kGpu);
    CHECK(grads.dk.dtype() == DType::bf16);
    // f64 has no GPU kernel; the error says what to do.
    Tensor q64 = to(to(in.q, DType::f64), kGpu);
    CHECK(error_of([&] { dilated_attention_forward(q64, q64, q64, c); }).find("f32 or bf16") !=
          std::string::npos);
  }

  TEST_CASE("on the gpu, changing future tokens never changes past outputs") {
    Dims s = self_attention(1, 200, 4, 64);
    for (DilatedMode mode : {DilatedMode::paper, DilatedMode::grouped}) {
      DilatedAttentionConfig c{{32, 64, 128}, {1, 2, 4}, mode, true};
      Inputs a = draw(s, DType::f32, 700);
      Inputs b = draw(s, DType::f32, 701);
      const std::int64_t p = 97;  // positions after p come from b
      auto mix = [&](const Tensor& x, const Tensor& y) {
        return concat({narrow(x, 1, 0, p + 1), narrow(y, 1, p + 1, s.nq - p - 1)}, 1);
      };
      AttentionOutput ra =
          dilated_attention_forward(to(a.q, kGpu), to(a.k, kGpu), to(a.v, kGpu), c);
      AttentionOutput rb = dilated_attention_forward(
          to(mix(a.q, b.q), kGpu), to(mix(a.k, b.k), kGpu), to(mix(a.v, b.v), kGpu), c);
      auto past = [&](const Tensor& t, std::int64_t dim) {
        return to(narrow(to(t, Device::cpu()), dim, 0, p + 1), DType::f64).to_vector<double>();
      };
      CHECK(past(ra.out, 1) == past(rb.out, 1));
      CHECK(past(ra.lse, 2) == past(rb.lse, 2));
      CHECK(past(ra.out, 1) != std::vector<double>(past(ra.out, 1).size(), 0.0));
    }
  }

  TEST_CASE("the factory builds gpu kernels for dense, dilated, auto and block_sparse") {
    Inputs in = draw(self_attention(1, 45, 2, 32), DType::f32, 800);
    Variable q(to(in.q, kGpu));
    Variable k(to(in.k, kGpu));
    Variable v(to(in.v, kGpu));
    DilatedAttentionConfig d{{16, 32}, {1, 2}, DilatedMode::paper, true};
    for (const AttentionConfig& config :
         {AttentionConfig{DenseAttentionConfig{true}}, AttentionConfig{d},
          AttentionConfig{AutoAttentionConfig{d}}}) {
      auto gpu = make_attention(config, kGpu);
      CHECK(gpu->describe().find("cuda") != std::string::npos);
      Tensor got = gpu->forward(q, k, v).data();
      CHECK(got.device() == kGpu);
      Tensor want = make_attention(config)
                        ->forward(Variable(to(in.q, DType::f64)), Variable(to(in.k, DType::f64)),
                                  Variable(to(in.v, DType::f64)))
                        .data();
      CHECK(relative_error(got, want) < testing::kGpuF32);
    }
    // Block-sparse attention runs bf16 on the gpu, against the cpu on the same bf16 inputs.
    BlockSparseConfig sparse{BlockPattern::global_local, 16, 0.5, 1, true};
    auto gpu = make_attention(sparse, kGpu);
    CHECK(gpu->describe().find("cuda") != std::string::npos);
    Tensor got = gpu->forward(Variable(to(to(in.q, DType::bf16), kGpu)),
                              Variable(to(to(in.k, DType::bf16), kGpu)),
                              Variable(to(to(in.v, DType::bf16), kGpu)))
                     .data();
    CHECK(got.device() == kGpu);
    Tensor want = make_attention(sparse)
                      ->forward(Variable(to(in.q, DType::bf16)), Variable(to(in.k, DType::bf16)),
                                Variable(to(in.v, DType::bf16)))
                      .data();
    CHECK(relative_error(got, want) < testing::kGpuBf16);
  }
}

}  // namespace longnet
