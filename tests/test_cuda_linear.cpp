// linear on the GPU, where f32 and bf16 with a bias run as one node on cuBLASLt's bias
// epilogues, against the CPU (the oracle) on fresh random inputs: y and the gradients of x,
// weight and bias. f32 runs are compared with the CPU computing in f64 from the same
// inputs, so the error measured is the GPU's own and the tolerance 1e-5 applies as is; bf16
// runs with the CPU on the same bf16 inputs, within 1e-2 (both sum in f32; the CPU rounds
// the product before it adds the bias, the GPU after).
// The cuBLASLt products are also run alone into poisoned outputs, from misaligned views too.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "nn/linear.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/matmul.h"
#include "tensor/elementwise.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"
#include "tensor/view.h"
#include "tests/gpu_check.h"

namespace longnet {
namespace {

using testing::check_close;
using testing::gpu;
using testing::kGpu;
using testing::poisoned;
using testing::tolerance_for;

// The dtype the CPU oracle computes in for GPU inputs of dtype (see the file comment).
DType oracle_dtype(DType dtype) { return dtype == DType::f32 ? DType::f64 : dtype; }

// x (..., in) -> (..., out) with the layer's sizes.
struct Case {
  Shape x;
  std::int64_t out;
};

// The rows are no multiple of any tile; the sizes are a LongNet block's projections and a
// small odd one.
const std::vector<Case> kCases = {{{37, 64}, 48},
                                  {{1000, 3072}, 768},
                                  {{4099, 768}, 2304},
                                  {{3, 37, 64}, 48},
                                  {{2, 500, 768}, 2304}};

// Runs linear forward and backward from the same inputs on the CPU in oracle_dtype(dtype)
// and on the GPU in dtype, and compares y and the gradients of the leaves that need them.
void check_against_cpu(const Case& c, DType dtype, bool with_bias, bool need_w, bool need_b,
                       Generator& gen) {
  std::int64_t in = c.x.back();
  Shape y_shape = c.x;
  y_shape.back() = c.out;
  Tensor x = to(randn(c.x, gen), dtype);
  Tensor w = to(randn({c.out, in}, gen), dtype);
  Tensor b = to(randn({c.out}, gen), dtype);
  Tensor dy = to(randn(y_shape, gen), dtype);
  DType od = oracle_dtype(dtype);

  Variable xc(to(x, od), true);
  Variable wc(to(w, od), need_w);
  Variable bc = with_bias ? Variable(to(b, od), need_b) : Variable();
  Variable yc = linear(xc, wc, bc);
  yc.backward(to(dy, od));

  Variable xg(gpu(x), true);
  Variable wg(gpu(w), need_w);
  Variable bg = with_bias ? Variable(gpu(b), need_b) : Variable();
  Variable yg = linear(xg, wg, bg);
  CHECK(yg.dtype() == dtype);
  CHECK(yg.shape() == y_shape);
  yg.backward(gpu(dy));

  double tol = tolerance_for(dtype);
  check_close(yg.data(), yc.data(), tol, "y");
  check_close(xg.grad(), xc.grad(), tol, "dx");
  if (need_w) {
    CHECK(wg.grad().dtype() == dtype);
    check_close(wg.grad(), wc.grad(), tol, "dweight");
  }
  if (with_bias && need_b) {
    CHECK(bg.grad().dtype() == dtype);
    check_close(bg.grad(), bc.grad(), tol, "dbias");
  }
}

TEST_SUITE("gpu") {
  TEST_CASE("linear on the GPU matches the CPU: y and the gradients of x, weight and bias") {
    Generator gen(301);
    for (const Case& c : kCases) {
      for (DType dtype : {DType::f32, DType::bf16}) {
        for (bool with_bias : {true, false}) {
          CAPTURE(str(c.x));
          CAPTURE(c.out);
          CAPTURE(name(dtype));
          CAPTURE(with_bias);
          check_against_cpu(c, dtype, with_bias, true, true, gen);
        }
      }
    }
  }

  TEST_CASE("linear on the GPU with a frozen weight or bias gives the other gradients") {
    Generator gen(302);
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (const auto& needs : {std::pair{false, true}, std::pair{true, false}}) {
        const bool need_w = needs.first;
        const bool need_b = needs.second;
        CAPTURE(name(dtype));
        CAPTURE(need_w);
        CAPTURE(need_b);
        check_against_cpu({{2, 37, 64}, 48}, dtype, true, need_w, need_b, gen);
      }
    }
  }

  TEST_CASE("linear on the GPU outside the fused node (f64, no rows) matches the CPU") {
    Generator gen(303);
    check_against_cpu({{3, 37, 64}, 48}, DType::f64, true, true, true, gen);
    check_against_cpu({{0, 64}, 48}, DType::bf16, true, true, true, gen);
  }

  TEST_CASE("Linear on the GPU with f32 parameters and a bf16 input: f32 gradients as on the CPU") {
    Generator gen(304);
    for (const Case& c : kCases) {
      CAPTURE(str(c.x));
      CAPTURE(c.out);
      std::int64_t in = c.x.back();
      Shape y_shape = c.x;
      y_shape.back() = c.out;
      Linear cpu_layer(in, c.out, gen);
      Linear gpu_layer(in, c.out, gen, true, {DType::f32, kGpu});
      copy_(cpu_layer.bias().data(), randn({c.out}, gen));
      copy_(gpu_layer.weight().data(), cpu_layer.weight().data());
      copy_(gpu_layer.bias().data(), cpu_layer.bias().data());
      Tensor x = to(randn(c.x, gen), DType::bf16);
      Tensor dy = to(randn(y_shape, gen), DType::bf16);

      Variable xc(x, true);
      Variable yc = cpu_layer.forward(xc);
      yc.backward(dy);
      Variable xg(gpu(x), true);
      Variable yg = gpu_layer.forward(xg);
      CHECK(yg.dtype() == DType::bf16);
      yg.backward(gpu(dy));

      check_close(yg.data(), yc.data(), testing::kGpuBf16, "y");
      CHECK(xg.grad().dtype() == DType::bf16);
      check_close(xg.grad(), xc.grad(), testing::kGpuBf16, "dx");
      REQUIRE(gpu_layer.weight().grad().dtype() == DType::f32);
      REQUIRE(gpu_layer.bias().grad().dtype() == DType::f32);
      check_close(gpu_layer.weight().grad(), cpu_layer.weight().grad(), testing::kGpuBf16,
                  "dweight");
      check_close(gpu_layer.bias().grad(), cpu_layer.bias().grad(), testing::kGpuBf16, "dbias");
    }
  }

  TEST_CASE("cuBLASLt bias products write every output; aligned operands always take them") {
    Generator gen(305);
    for (const Case& c : kCases) {
      std::int64_t in = c.x.back();
      std::int64_t rows = numel(c.x) / in;
      std::int64_t out = c.out;
      for (DType dtype : {DType::f32, DType::bf16}) {
        // Each operand starts `offset` elements into a buffer: 0 is aligned as allocated, 1
        // is aligned to the element alone, which cuBLASLt may decline.
        for (std::int64_t offset : {0, 1}) {
          CAPTURE(rows);
          CAPTURE(in);
          CAPTURE(out);
          CAPTURE(name(dtype));
          CAPTURE(offset);
          auto poisoned_view = [&](const Shape& shape) {
            Tensor buffer = poisoned({numel(shape) + offset}, {dtype, kGpu});
            return reshape(narrow(buffer, 0, offset, numel(shape)), shape);
          };
          auto on_gpu = [&](const Tensor& t) {
            Tensor view = poisoned_view(t.shape());
            copy_(view, gpu(to(t, dtype)));
            return view;
          };
          // The oracle is f64 on the same (rounded) inputs.
          Tensor x = to(to(randn({rows, in}, gen), dtype), DType::f64);
          Tensor w = to(to(randn({out, in}, gen), dtype), DType::f64);
          Tensor b = to(to(randn({out}, gen), dtype), DType::f64);
          Tensor g = to(to(randn({rows, out}, gen), dtype), DType::f64);
          double tol = tolerance_for(dtype);

          Tensor y = poisoned_view({rows, out});
          bool fused = cuda::matmul_bias(on_gpu(x), on_gpu(w), on_gpu(b), y);
          CHECK((fused || offset != 0));
          if (fused) check_close(y, add(matmul(x, transpose(w, 0, 1)), b), tol, "y");

          Tensor dw = poisoned_view({out, in});
          Tensor db = poisoned_view({out});
          fused = cuda::matmul_bias_grad(on_gpu(g), on_gpu(x), dw, db);
          CHECK((fused || offset != 0));
          if (fused) {
            check_close(dw, matmul(transpose(g, 0, 1), x), tol, "dweight");
            check_close(db, sum(g, {0}), tol, "dbias");
          }
        }
      }
    }
  }

  TEST_CASE("a bias aligned to less than 16 bytes takes the unfused path") {
    Generator gen(306);
    for (DType dtype : {DType::f32, DType::bf16}) {
      CAPTURE(name(dtype));
      Tensor x = gpu(to(randn({40, 24}, gen), dtype));
      Tensor w = gpu(to(randn({16, 24}, gen), dtype));
      Tensor g = gpu(to(randn({40, 16}, gen), dtype));
      // x, w and the outputs as allocated; the bias one element into its buffer.
      Tensor bias = narrow(gpu(to(randn({17}, gen), dtype)), 0, 1, 16);
      CHECK_FALSE(cuda::matmul_bias(x, w, bias, poisoned({40, 16}, {dtype, kGpu})));
      Tensor dbias = narrow(poisoned({17}, {dtype, kGpu}), 0, 1, 16);
      CHECK_FALSE(cuda::matmul_bias_grad(g, x, poisoned({16, 24}, {dtype, kGpu}), dbias));
    }
  }

  TEST_CASE("cuBLASLt bias products stay right past the plan cache's size") {
    // A new row count each call, as generation makes: more shapes than the cache keeps.
    Generator gen(307);
    Tensor w = to(to(randn({8, 16}, gen), DType::bf16), DType::f64);
    Tensor b = to(to(randn({8}, gen), DType::bf16), DType::f64);
    Tensor wg = gpu(to(w, DType::bf16));
    Tensor bg = gpu(to(b, DType::bf16));
    int fused = 0;
    for (std::int64_t rows = 1; rows <= 300; ++rows) {
      CAPTURE(rows);
      Tensor x = to(to(randn({rows, 16}, gen), DType::bf16), DType::f64);
      Tensor y = poisoned({rows, 8}, {DType::bf16, kGpu});
      if (!cuda::matmul_bias(gpu(to(x, DType::bf16)), wg, bg, y)) continue;
      ++fused;
      check_close(y, add(matmul(x, transpose(w, 0, 1)), b), testing::kGpuBf16, "y");
    }
    CHECK(fused >= 280);  // aligned operands: cuBLASLt may decline a few odd shapes at most
  }
}

}  // namespace
}  // namespace longnet
