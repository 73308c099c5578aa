// The nn layer's fused ops and the optimizer on the GPU: LayerNorm, cross-entropy,
// embedding, dropout, RoPE/XPOS, AdamW and clip_grad_norm. Each is run on the CPU (the
// oracle) and the GPU from the same fresh random inputs and compared in values and
// gradients with the tolerances of tests/gpu_check.h; the kernels' launchers are also run
// into poisoned outputs, so an element left unwritten shows up as NaN.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "autograd/ops.h"
#include "nn/cuda/cross_entropy.h"
#include "nn/cuda/dropout.h"
#include "nn/cuda/embedding.h"
#include "nn/cuda/layer_norm.h"
#include "nn/cuda/positional.h"
#include "nn/dropout.h"
#include "nn/embedding.h"
#include "nn/layer_norm.h"
#include "nn/loss.h"
#include "nn/positional.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/error_of.h"
#include "tests/gpu_check.h"
#include "train/optim.h"

namespace longnet {
namespace {

using testing::check_close;
using testing::error_of;
using testing::gpu;
using testing::host_values;
using testing::kGpu;
using testing::poisoned;
using testing::tolerance_for;

// Random values scaled by scale, created on the cpu in dtype.
Tensor random_tensor(const Shape& shape, Generator& gen, DType dtype, double scale = 1.0) {
  Tensor t = randn(shape, gen, {DType::f64});
  auto v = t.to_vector<double>();
  for (double& x : v) x *= scale;
  return to(from_data(v, shape), dtype);
}

TEST_SUITE("gpu") {
  // --- LayerNorm -----------------------------------------------------------------------------

  TEST_CASE("layer_norm on the GPU matches the CPU in values and all gradients") {
    Generator gen(101);
    // 20000 rows: many row blocks in the backward's column walk; 70001 rows: more than its
    // block cap at 32 rows a block, so 35 a block and a last block of one; 768 and 3072: the
    // model's widths; 9000 and 20001 are wider than the forward keeps in registers (20001 in
    // chunks of one element), 70 narrower than a warp's chunks.
    for (Shape shape :
         {Shape{3, 37, 96}, Shape{20000, 64}, Shape{70001, 8}, Shape{5, 1000}, Shape{2, 33, 768},
          Shape{40, 3072}, Shape{3, 9000}, Shape{3, 20001}, Shape{35, 70}}) {
      // bf16 with f32 parameters is mixed precision.
      // (Named copies, not structured bindings: lambdas, CAPTURE's included, cannot take
      // those before C++20 compilers caught up, clang 14's among them.)
      for (const auto& types :
           {std::pair{DType::f32, DType::f32}, std::pair{DType::bf16, DType::bf16},
            std::pair{DType::bf16, DType::f32}}) {
        const DType dtype = types.first;
        const DType param_dtype = types.second;
        for (bool affine : {true, false}) {
          if (!affine && param_dtype != dtype) continue;
          CAPTURE(str(shape));
          CAPTURE(name(dtype));
          CAPTURE(name(param_dtype));
          CAPTURE(affine);
          std::int64_t dim = shape.back();
          Tensor x = random_tensor(shape, gen, dtype, 2.0);
          Tensor dy = random_tensor(shape, gen, dtype);
          Tensor w = random_tensor({dim}, gen, param_dtype);
          Tensor b = random_tensor({dim}, gen, param_dtype);
          double tol = tolerance_for(dtype);

          Variable xc(x, true);
          Variable wc = affine ? Variable(w, true) : Variable();
          Variable bc = affine ? Variable(b, true) : Variable();
          Variable yc = layer_norm(xc, wc, bc, 1e-5);
          yc.backward(dy);

          Variable xg(gpu(x), true);
          Variable wg = affine ? Variable(gpu(w), true) : Variable();
          Variable bg = affine ? Variable(gpu(b), true) : Variable();
          Variable yg = layer_norm(xg, wg, bg, 1e-5);
          CHECK(yg.device() == kGpu);
          CHECK(yg.dtype() == dtype);
          yg.backward(gpu(dy));

          check_close(yg.data(), yc.data(), tol, "y");
          check_close(xg.grad(), xc.grad(), tol, "dx");
          if (affine) {
            CHECK(wg.grad().dtype() == param_dtype);
            check_close(wg.grad(), wc.grad(), tolerance_for(param_dtype), "dweight");
            check_close(bg.grad(), bc.grad(), tolerance_for(param_dtype), "dbias");
          }
        }
      }
    }
  }

  TEST_CASE("layer_norm from f32 into bf16 on the GPU matches the CPU") {
    Generator gen(103);
    for (Shape shape : {Shape{2, 33, 768}, Shape{7, 100}, Shape{3, 9000}}) {
      CAPTURE(str(shape));
      std::int64_t dim = shape.back();
      Tensor x = random_tensor(shape, gen, DType::f32, 2.0);
      Tensor dy = random_tensor(shape, gen, DType::bf16);
      Tensor w = random_tensor({dim}, gen, DType::f32);
      Tensor b = random_tensor({dim}, gen, DType::f32);
      std::vector<Variable> cpu_side = {Variable(x, true), Variable(w, true), Variable(b, true)};
      std::vector<Variable> gpu_side = {Variable(gpu(x), true), Variable(gpu(w), true),
                                        Variable(gpu(b), true)};
      Variable yc = layer_norm(cpu_side[0], cpu_side[1], cpu_side[2], 1e-5, DType::bf16);
      yc.backward(dy);
      Variable yg = layer_norm(gpu_side[0], gpu_side[1], gpu_side[2], 1e-5, DType::bf16);
      REQUIRE(yg.dtype() == DType::bf16);
      yg.backward(gpu(dy));
      check_close(yg.data(), yc.data(), tolerance_for(DType::bf16), "y");
      for (std::size_t i = 0; i < 3; ++i) {
        CAPTURE(i);
        CHECK(gpu_side[i].grad().dtype() == DType::f32);
        check_close(gpu_side[i].grad(), cpu_side[i].grad(), 1e-4, "gradient");
      }
    }
  }

  TEST_CASE("gelu_layer_norm on the GPU matches gelu then layer_norm on the CPU") {
    Generator gen(104);
    for (const auto& c : {std::tuple{Shape{2, 33, 3072}, DType::bf16, DType::f32},
                          std::tuple{Shape{3, 9000}, DType::bf16, DType::f32},
                          std::tuple{Shape{5, 100}, DType::f32, DType::f32},
                          std::tuple{Shape{40, 96}, DType::bf16, DType::bf16}}) {
      const Shape& shape = std::get<0>(c);
      const DType dtype = std::get<1>(c);
      const DType param_dtype = std::get<2>(c);
      CAPTURE(str(shape));
      CAPTURE(name(dtype));
      std::int64_t dim = shape.back();
      Tensor x = random_tensor(shape, gen, dtype, 2.0);
      Tensor dy = random_tensor(shape, gen, dtype);
      Tensor w = random_tensor({dim}, gen, param_dtype);
      Tensor b = random_tensor({dim}, gen, param_dtype);
      std::vector<Variable> cpu_side = {Variable(x, true), Variable(w, true), Variable(b, true)};
      std::vector<Variable> gpu_side = {Variable(gpu(x), true), Variable(gpu(w), true),
                                        Variable(gpu(b), true)};
      Variable yc = layer_norm(gelu(cpu_side[0]), cpu_side[1], cpu_side[2], 1e-5);
      yc.backward(dy);
      Variable yg = gelu_layer_norm(gpu_side[0], gpu_side[1], gpu_side[2], 1e-5);
      REQUIRE(yg.dtype() == dtype);
      yg.backward(gpu(dy));
      double tol = tolerance_for(dtype);
      check_close(yg.data(), yc.data(), tol, "y");
      check_close(gpu_side[0].grad(), cpu_side[0].grad(), tol, "dx");
      check_close(gpu_side[1].grad(), cpu_side[1].grad(), tol, "dweight");
      check_close(gpu_side[2].grad(), cpu_side[2].grad(), tol, "dbias");
    }
  }

  TEST_CASE("layer_norm GPU kernels write every output; weight and bias sums repeat exactly") {
    Generator gen(102);
    std::int64_t rows = 300;
    std::int64_t dim = 70;
    Tensor x = gpu(random_tensor({rows, dim}, gen, DType::f32));
    Tensor g = gpu(random_tensor({rows, dim}, gen, DType::f32));
    Tensor w = gpu(random_tensor({dim}, gen, DType::f32));
    Tensor b = gpu(random_tensor({dim}, gen, DType::f32));
    Tensor y = poisoned({rows, dim}, {DType::f32, kGpu});
    Tensor mean = poisoned({rows}, {DType::f32, kGpu});
    Tensor rstd = poisoned({rows}, {DType::f32, kGpu});
    cuda::layer_norm_forward(x, w, b, 1e-5, false, y, mean, rstd);

    Variable xc(to(x, Device::cpu()));
    Tensor y_cpu =
        layer_norm(xc, Variable(to(w, Device::cpu())), Variable(to(b, Device::cpu()))).data();
    check_close(y, y_cpu, 1e-5, "y");
    for (const Tensor& t : {mean, rstd}) {
      for (double v : host_values(t)) REQUIRE(std::isfinite(v));
    }

    std::vector<double> first_dw;
    std::vector<double> first_db;
    for (int run = 0; run < 2; ++run) {
      Tensor dx = poisoned({rows, dim}, {DType::f32, kGpu});
      Tensor dw = poisoned({dim}, {DType::f32, kGpu});
      Tensor db = poisoned({dim}, {DType::f32, kGpu});
      cuda::layer_norm_backward(g, x, false, w, mean, rstd, dx, dw, db);
      for (const Tensor& t : {dx, dw, db}) {
        for (double v : host_values(t)) REQUIRE(std::isfinite(v));
      }
      if (run == 0) {
        first_dw = host_values(dw);
        first_db = host_values(db);
      } else {
        CHECK(host_values(dw) == first_dw);
        CHECK(host_values(db) == first_db);
      }
    }
  }

  TEST_CASE("layer_norm backward asked for dx alone or the sums alone gives the same bits") {
    Generator gen(105);
    // f32 rows of 70 (one-element chunks), bf16 rows of 3072 through the GELU (16-byte
    // chunks), 1001 rows: a last row block shorter than the others and than the unrolling.
    for (const auto& c : {std::tuple{DType::f32, 70, false}, std::tuple{DType::bf16, 3072, true}}) {
      const DType dtype = std::get<0>(c);
      const std::int64_t dim = std::get<1>(c);
      const bool gelu_first = std::get<2>(c);
      CAPTURE(name(dtype));
      std::int64_t rows = 1001;
      Tensor x = gpu(random_tensor({rows, dim}, gen, dtype, 2.0));
      Tensor g = gpu(random_tensor({rows, dim}, gen, dtype));
      Tensor w = gpu(random_tensor({dim}, gen, DType::f32));
      Tensor y = poisoned({rows, dim}, {dtype, kGpu});
      Tensor mean = poisoned({rows}, {DType::f32, kGpu});
      Tensor rstd = poisoned({rows}, {DType::f32, kGpu});
      cuda::layer_norm_forward(x, w, Tensor(), 1e-5, gelu_first, y, mean, rstd);
      auto backward = [&](bool want_dx, bool want_sums) {
        Tensor dx = want_dx ? poisoned({rows, dim}, {dtype, kGpu}) : Tensor();
        Tensor dw = want_sums ? poisoned({dim}, {DType::f32, kGpu}) : Tensor();
        Tensor db = want_sums ? poisoned({dim}, {DType::f32, kGpu}) : Tensor();
        cuda::layer_norm_backward(g, x, gelu_first, w, mean, rstd, dx, dw, db);
        return std::vector<Tensor>{dx, dw, db};
      };
      std::vector<Tensor> all = backward(true, true);
      std::vector<Tensor> dx_only = backward(true, false);
      std::vector<Tensor> sums_only = backward(false, true);
      for (double v : host_values(all[0])) REQUIRE(std::isfinite(v));
      CHECK(host_values(dx_only[0]) == host_values(all[0]));
      CHECK(host_values(sums_only[1]) == host_values(all[1]));
      CHECK(host_values(sums_only[2]) == host_values(all[2]));
    }
  }

  // --- Cross-entropy -------------------------------------------------------------------------

  // Targets in [0, classes) with every fifth row set to ignore_index.
  Tensor targets_with_ignored(std::int64_t rows, std::int64_t classes, std::int64_t ignore_index,
                              Generator & gen, DType dtype) {
    auto t = randint(0, classes, {rows}, gen).to_vector<std::int64_t>();
    for (std::size_t r = 0; r < t.size(); r += 5) t[r] = ignore_index;
    return to(from_data(t, {rows}), dtype);
  }

  TEST_CASE("cross_entropy on the GPU matches the CPU with ignored rows and chunks") {
    Generator gen(201);
    // 301 classes leave rows off 16-byte boundaries: the kernels' unaligned heads and tails.
    for (std::int64_t classes : {std::int64_t{300}, std::int64_t{301}}) {
      for (DType dtype : {DType::f32, DType::bf16}) {
        for (DType target_dtype : {DType::i64, DType::i32}) {
          for (std::int64_t chunk : {std::int64_t{37}, std::int64_t{4096}}) {
            CAPTURE(classes);
            CAPTURE(name(dtype));
            CAPTURE(name(target_dtype));
            CAPTURE(chunk);
            Tensor logits = random_tensor({4, 50, classes}, gen, dtype, 3.0);
            Tensor targets =
                reshape(targets_with_ignored(200, classes, -100, gen, target_dtype), {4, 50});
            double tol = tolerance_for(dtype);

            Variable xc(logits, true);
            Variable lc = cross_entropy(xc, targets, -100, chunk);
            lc.backward();
            Variable xg(gpu(logits), true);
            Variable lg = cross_entropy(xg, gpu(targets), -100, chunk);
            CHECK(lg.device() == kGpu);
            CHECK(lg.dtype() == DType::f32);
            CHECK(lg.shape() == Shape{});
            lg.backward();
            // The loss is accumulated in f64 from f32 terms on both devices.
            check_close(lg.data(), lc.data(), 1e-5, "loss");
            check_close(xg.grad(), xc.grad(), tol, "dlogits");
          }
        }
      }
    }
  }

  TEST_CASE("cross_entropy on the GPU with every target ignored is 0 with a zero gradient") {
    Generator gen(202);
    Variable x(gpu(random_tensor({3, 4}, gen, DType::f32)), true);
    Variable loss = cross_entropy(x, gpu(from_data<std::int64_t>({7, 7, 7}, {3})), 7);
    CHECK(loss.data().item() == 0.0);
    loss.backward();
    for (double v : host_values(x.grad())) CHECK(v == 0.0);
  }

  TEST_CASE("cross_entropy on the GPU rejects an out-of-range target with the CPU's message") {
    Generator gen(203);
    Tensor logits = random_tensor({6, 5}, gen, DType::f32);
    for (const std::vector<std::int64_t>& t : {std::vector<std::int64_t>{0, 5, 1, 9, -100, 1},
                                               std::vector<std::int64_t>{0, 1, -100, -2, 1, 1}}) {
      for (DType dtype : {DType::i64, DType::i32}) {
        Tensor targets = to(from_data(t, {6}), dtype);
        std::string on_cpu = error_of([&] { cross_entropy(Variable(logits), targets); });
        std::string on_gpu = error_of([&] { cross_entropy(Variable(gpu(logits)), gpu(targets)); });
        CHECK(on_cpu.find("is outside [0, 5)") != std::string::npos);
        CHECK(on_gpu == on_cpu);
      }
    }
  }

  TEST_CASE("cross_entropy GPU kernels write every row: lse, row losses and the gradient") {
    Generator gen(204);
    std::int64_t rows = 45;
    std::int64_t classes = 70;
    // A view one element into its storage: its rows and dx's are aligned differently.
    Tensor storage = gpu(random_tensor({rows * classes + 1}, gen, DType::f32, 2.0));
    Tensor logits = reshape(narrow(storage, 0, 1, rows * classes), {rows, classes});
    Tensor targets = gpu(targets_with_ignored(rows, classes, -1, gen, DType::i64));
    CHECK(cuda::cross_entropy_count(targets, classes, -1) == rows - 9);
    Tensor lse = poisoned({rows}, {DType::f32, kGpu});
    Tensor row_loss = poisoned({rows}, {DType::f64, kGpu});
    Tensor loss = poisoned({}, {DType::f32, kGpu});
    Tensor dx = poisoned({rows, classes}, {DType::f32, kGpu});
    // Two chunks, as nn/loss.cpp walks them.
    for (std::int64_t r0 : {std::int64_t{0}, std::int64_t{20}}) {
      std::int64_t n = r0 == 0 ? 20 : rows - 20;
      cuda::cross_entropy_forward(narrow(logits, 0, r0, n), targets, r0, -1, lse, row_loss);
    }
    cuda::cross_entropy_loss(row_loss, rows - 9, loss);
    for (std::int64_t r0 : {std::int64_t{0}, std::int64_t{20}}) {
      std::int64_t n = r0 == 0 ? 20 : rows - 20;
      cuda::cross_entropy_backward(narrow(logits, 0, r0, n), targets, r0, -1, lse, gpu(scalar(1.0)),
                                   rows - 9, dx);
    }
    for (const Tensor& t : {lse, row_loss, loss, dx}) {
      for (double v : host_values(t)) REQUIRE(std::isfinite(v));
    }
    auto g = host_values(dx);
    for (std::int64_t c = 0; c < classes; ++c) CHECK(g[static_cast<std::size_t>(c)] == 0.0);
    Variable xc(to(logits, Device::cpu()), true);
    Variable lc = cross_entropy(xc, to(targets, Device::cpu()), -1);
    lc.backward();
    check_close(loss, lc.data(), 1e-5, "loss");
    check_close(dx, xc.grad(), 1e-5, "dlogits");
  }

  // --- Embedding -----------------------------------------------------------------------------

  TEST_CASE("embedding on the GPU gathers rows and sums repeated indices like the CPU") {
    Generator gen(301);
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (DType index_dtype : {DType::i64, DType::i32}) {
        CAPTURE(name(dtype));
        CAPTURE(name(index_dtype));
        // 350 lookups into the first 40 of 300 rows: many repeats, many rows never used.
        Tensor weight = random_tensor({300, 48}, gen, dtype);
        Tensor index = to(randint(0, 40, {7, 50}, gen), index_dtype);
        Tensor dy = random_tensor({7, 50, 48}, gen, dtype);

        Variable wc(weight, true);
        Variable yc = embedding(index, wc);
        yc.backward(dy);
        Variable wg(gpu(weight), true);
        Variable yg = embedding(gpu(index), wg);
        CHECK(yg.shape() == Shape{7, 50, 48});
        yg.backward(gpu(dy));
        CHECK(host_values(yg.data()) == host_values(yc.data()));
        // Same additions in the same order: the sums agree bit for bit.
        CHECK(host_values(wg.grad()) == host_values(wc.grad()));
      }
    }
  }

  TEST_CASE("embedding GPU backward writes every row and repeats exactly, hot rows included") {
    Generator gen(302);
    // About 1000 lookups of each of rows 0 to 2: sums longer than the kernel's staging tile.
    Tensor index_cpu = randint(0, 3, {3000}, gen);
    Tensor g_cpu = random_tensor({3000, 33}, gen, DType::f32);
    Tensor index = gpu(index_cpu);
    Tensor g = gpu(g_cpu);
    Variable wc(zeros({64, 33}), true);
    embedding(index_cpu, wc).backward(g_cpu);
    std::vector<double> first;
    for (int run = 0; run < 2; ++run) {
      Tensor dw = poisoned({64, 33}, {DType::f32, kGpu});
      cuda::embedding_backward(index, g, dw);
      auto v = host_values(dw);
      for (double x : v) REQUIRE(std::isfinite(x));
      for (std::size_t i = std::size_t{3} * 33; i < v.size(); ++i) REQUIRE(v[i] == 0.0);
      if (run == 0) first = v;
      if (run == 1) CHECK(v == first);
    }
    CHECK(first == host_values(wc.grad()));
    Tensor out = poisoned({3000, 33}, {DType::f32, kGpu});
    Tensor weight = gpu(random_tensor({64, 33}, gen, DType::f32));
    cuda::embedding_forward(index, weight, out);
    for (double x : host_values(out)) REQUIRE(std::isfinite(x));
  }

  TEST_CASE("embedding on the GPU rejects an out-of-range index with the CPU's message") {
    Generator gen(303);
    Variable weight(random_tensor({6, 4}, gen, DType::f32));
    for (const std::vector<std::int64_t>& idx :
         {std::vector<std::int64_t>{0, 6, 2, 7}, std::vector<std::int64_t>{1, 2, -1, 3}}) {
      Tensor index = from_data(idx, {2, 2});
      std::string on_cpu = error_of([&] { embedding(index, weight); });
      std::string on_gpu = error_of([&] { embedding(gpu(index), Variable(gpu(weight.data()))); });
      CHECK(on_cpu.find("is out of range for a table of 6") != std::string::npos);
      CHECK(on_gpu == on_cpu);
    }
  }

  // --- Dropout -------------------------------------------------------------------------------

  TEST_CASE("dropout masks on the GPU equal the CPU's bit for bit, values and gradients") {
    Generator data_gen(401);
    // Offsets around 2^32 counters exercise the counter's high word.
    for (std::uint64_t offset :
         {std::uint64_t{0}, std::uint64_t{5}, (std::uint64_t{1} << 32) - 3}) {
      for (DType dtype : {DType::f32, DType::bf16}) {
        for (double p : {0.1, 0.5, 0.9}) {
          CAPTURE(offset);
          CAPTURE(name(dtype));
          CAPTURE(p);
          Tensor x =
              random_tensor({7, 143}, data_gen, dtype);  // 1001 elements: a partial last block
          Tensor dy = random_tensor({7, 143}, data_gen, dtype);
          Generator cpu_gen(77);
          Generator gpu_gen(77);
          cpu_gen.set_offset(offset);
          gpu_gen.set_offset(offset);
          Variable xc(x, true);
          Variable yc = dropout(xc, p, cpu_gen, true);
          yc.backward(dy);
          Variable xg(gpu(x), true);
          Variable yg = dropout(xg, p, gpu_gen, true);
          yg.backward(gpu(dy));
          CHECK(gpu_gen.offset() == cpu_gen.offset());
          CHECK(host_values(yg.data()) == host_values(yc.data()));
          CHECK(host_values(xg.grad()) == host_values(xc.grad()));
        }
      }
    }
  }

  TEST_CASE("dropout GPU kernel writes every element") {
    Generator gen(402);
    Tensor x = gpu(random_tensor({1001}, gen, DType::f32));
    Tensor out = poisoned({1001}, {DType::f32, kGpu});
    cuda::dropout_mask(x, 9, 3, std::uint64_t{1} << 31, 2.0, out);
    std::int64_t zeros = 0;
    for (double v : host_values(out)) {
      REQUIRE(std::isfinite(v));
      zeros += v == 0.0 ? 1 : 0;
    }
    CHECK(zeros > 400);
    CHECK(zeros < 600);
  }

  // --- RoPE and XPOS -------------------------------------------------------------------------

  TEST_CASE("rope and xpos on the GPU match the CPU: values and gradients") {
    Generator gen(501);
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (std::int64_t offset : {std::int64_t{0}, std::int64_t{7}, std::int64_t{100000}}) {
        for (int kind = 0; kind < 4; ++kind) {
          CAPTURE(name(dtype));
          CAPTURE(offset);
          CAPTURE(kind);
          // XPOS scales under/overflow far out; keep it to modest positions.
          if (kind >= 2 && offset > 1000) continue;
          Tensor x = random_tensor({2, 67, 3, 32}, gen, dtype);
          Tensor dy = random_tensor({2, 67, 3, 32}, gen, dtype);
          auto apply = [&](const Variable& v) {
            switch (kind) {
              case 0:
                return apply_rope(v, offset);
              case 1:
                return apply_rope(v, offset, 500.0);
              case 2:
                return apply_xpos(v, offset, false);
              default:
                return apply_xpos(v, offset, true, 64);
            }
          };
          Variable xc(x, true);
          Variable yc = apply(xc);
          yc.backward(dy);
          Variable xg(gpu(x), true);
          Variable yg = apply(xg);
          yg.backward(gpu(dy));
          double tol = tolerance_for(dtype);
          check_close(yg.data(), yc.data(), tol, "y");
          check_close(xg.grad(), xc.grad(), tol, "dx");
        }
      }
      // A contiguous view that starts mid-pair (one element into its storage).
      Tensor x = random_tensor({2, 67, 3, 32}, gen, dtype);
      Tensor flat = gpu(random_tensor({x.numel() + 1}, gen, dtype));
      Tensor shifted = reshape(narrow(flat, 0, 1, x.numel()), x.shape());
      copy_(shifted, gpu(x));
      Tensor expected = apply_rope(Variable(x), 5).data();
      check_close(apply_rope(Variable(shifted), 5).data(), expected, tolerance_for(dtype),
                  "view at an odd element");
    }
  }

  TEST_CASE("rotary GPU kernel writes every element") {
    Generator gen(502);
    Tensor x = gpu(random_tensor({1, 5, 2, 6}, gen, DType::f32));
    Tensor out = poisoned({1, 5, 2, 6}, {DType::f32, kGpu});
    cuda::rotary(x, 3, 10000.0, 1.0, 512.0, false, out);
    for (double v : host_values(out)) REQUIRE(std::isfinite(v));
  }

  // --- AdamW and clip_grad_norm --------------------------------------------------------------

  // Parameters of a small model on device: a matrix (decayed), a vector, a bf16 matrix, one
  // spanning several blocks of the fused update, and enough more (f32 and bf16, matrices and
  // vectors) that each dtype's fused update takes several launches.
  std::vector<std::pair<std::string, Variable>> model(Device device) {
    Generator gen(601);
    auto make = [&](const Shape& shape, DType dtype) {
      return Variable(to(random_tensor(shape, gen, dtype), device), true);
    };
    std::vector<std::pair<std::string, Variable>> params = {{"w", make({33, 17}, DType::f32)},
                                                            {"b", make({17}, DType::f32)},
                                                            {"h", make({9, 40}, DType::bf16)},
                                                            {"big", make({70, 130}, DType::f32)}};
    for (int i = 0; i < 100; ++i) {
      Shape shape = i % 3 == 0 ? Shape{i % 7 + 1} : Shape{i % 7 + 1, (i * 13) % 50 + 1};
      params.emplace_back(cat("t", i), make(shape, i % 2 == 0 ? DType::f32 : DType::bf16));
    }
    return params;
  }

  TEST_CASE("AdamW with clipping on the GPU matches the CPU over several steps") {
    auto on_cpu = model(Device::cpu());
    auto on_gpu = model(kGpu);
    AdamWConfig config{0.05, 0.9, 0.95, 1e-8, 0.1};
    AdamW cpu_opt(on_cpu, config);
    AdamW gpu_opt(on_gpu, config);
    Generator grad_gen(602);
    for (int step = 0; step < 6; ++step) {
      CAPTURE(step);
      std::vector<Variable> cpu_params;
      std::vector<Variable> gpu_params;
      for (std::size_t i = 0; i < on_cpu.size(); ++i) {
        const Variable& p = on_cpu[i].second;
        Tensor g = random_tensor(p.shape(), grad_gen, p.dtype(), 0.5);
        p.set_grad(g);
        on_gpu[i].second.set_grad(gpu(g));
        cpu_params.push_back(p);
        gpu_params.push_back(on_gpu[i].second);
      }
      // max_norm 1 clips every step (the norms are around 10).
      double cpu_norm = clip_grad_norm(cpu_params, 1.0);
      double gpu_norm = clip_grad_norm(gpu_params, 1.0);
      CHECK(gpu_norm == doctest::Approx(cpu_norm).epsilon(1e-12));
      double lr = scheduled_lr(0.05, Schedule::cosine, 2, 6, 0.1, step);
      cpu_opt.step(lr);
      gpu_opt.step(lr);
    }
    for (std::size_t i = 0; i < on_cpu.size(); ++i) {
      const Variable& pc = on_cpu[i].second;
      const Variable& pg = on_gpu[i].second;
      CHECK(pg.device() == kGpu);
      // bf16 parameters round once per step: a last-bit flip is a 2^-8 relative step.
      check_close(pg.data(), pc.data(), pc.dtype() == DType::bf16 ? 1e-2 : 1e-6, on_cpu[i].first);
    }
    NamedTensors cpu_state = cpu_opt.state();
    NamedTensors gpu_state = gpu_opt.state();
    REQUIRE(cpu_state.size() == gpu_state.size());
    for (std::size_t i = 1; i < cpu_state.size(); ++i) {
      CHECK(gpu_state[i].second.device() == kGpu);
      check_close(gpu_state[i].second, cpu_state[i].second, 1e-6, cpu_state[i].first);
    }
  }

  TEST_CASE("AdamW state saved on the GPU loads on the CPU and back") {
    auto on_gpu = model(kGpu);
    AdamW gpu_opt(on_gpu, {});
    Generator grad_gen(603);
    for (int step = 0; step < 2; ++step) {
      for (auto& [name, p] : on_gpu) p.set_grad(gpu(random_tensor(p.shape(), grad_gen, p.dtype())));
      gpu_opt.step(1e-3);
    }
    auto on_cpu = model(Device::cpu());
    AdamW cpu_opt(on_cpu, {});
    cpu_opt.load_state(gpu_opt.state());
    CHECK(cpu_opt.steps() == 2);
    NamedTensors loaded = cpu_opt.state();
    NamedTensors saved = gpu_opt.state();
    for (std::size_t i = 0; i < saved.size(); ++i) {
      CHECK(loaded[i].second.device() == Device::cpu());
      CHECK(host_values(loaded[i].second) == host_values(saved[i].second));
    }
    AdamW back(model(kGpu), {});
    back.load_state(loaded);
    NamedTensors round_trip = back.state();
    for (std::size_t i = 1; i < saved.size(); ++i) {
      CHECK(round_trip[i].second.device() == kGpu);
      CHECK(host_values(round_trip[i].second) == host_values(saved[i].second));
    }
  }

  TEST_CASE("clip_grad_norm on the GPU is the same run to run and equals the CPU's") {
    Generator gen(604);
    std::vector<Tensor> grads = {random_tensor({1000003}, gen, DType::f32),
                                 random_tensor({77}, gen, DType::bf16),
                                 random_tensor({300, 301}, gen, DType::f32)};
    std::vector<Variable> cpu_params;
    for (const Tensor& g : grads) {
      Variable p(zeros(g.shape(), {g.dtype()}), true);
      p.set_grad(clone(g));
      cpu_params.push_back(p);
    }
    double cpu_norm = clip_grad_norm(cpu_params, 1e9);  // no clipping
    double first = 0;
    for (int run = 0; run < 3; ++run) {
      std::vector<Variable> gpu_params;
      for (const Tensor& g : grads) {
        Variable p(zeros(g.shape(), {g.dtype(), kGpu}), true);
        p.set_grad(gpu(g));
        gpu_params.push_back(p);
      }
      double norm = clip_grad_norm(gpu_params, 1e9);
      if (run == 0) first = norm;
      CHECK(norm == first);
      CHECK(norm == doctest::Approx(cpu_norm).epsilon(1e-12));
      if (run == 2) {
        // Clipping scales every gradient as the CPU does.
        double clipped = clip_grad_norm(gpu_params, 1.0);
        CHECK(clipped == first);
        clip_grad_norm(cpu_params, 1.0);
        for (std::size_t i = 0; i < grads.size(); ++i) {
          check_close(gpu_params[i].grad(), cpu_params[i].grad(), tolerance_for(grads[i].dtype()),
                      "clipped gradient");
        }
      }
    }
  }
}

}  // namespace
}  // namespace longnet
