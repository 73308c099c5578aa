// Sequence-parallel dilated attention (attention/sequence_parallel.h) against dilated
// attention of the whole sequence on one process. Built into test-dist (one rank) and
// test-dist-mpi (mpirun -np 2 and -np 3): every rank draws the whole sequence from the same
// seed, runs the reference on all of it and the sequence-parallel op on its slice, and the
// worst error of any rank is checked.
#include <doctest/doctest.h>

#include "attention/sequence_parallel.h"
#include "autograd/ops.h"
#include "models/longnet.h"
#include "nn/loss.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/dist_world.h"
#include "tests/error_of.h"
#include "tests/gpu_check.h"

namespace longnet {
namespace {

using testing::contains;
using testing::CountingCommunicator;
using testing::error_of;
using testing::everywhere;
using testing::gpus;
using testing::my_gpu;
using testing::relative_error;
using testing::tolerance_for;
using testing::too_few_gpus;
using testing::world;
using testing::worst;

struct Sizes {
  std::int64_t batch, n, heads, d, dv;
};

struct Case {
  const char* name;
  Sizes sizes;
  DilatedAttentionConfig config;
};

// Segments that cross the slice boundaries of 2 and 3 ranks (and some that do not), odd n,
// rates above a segment's length, w beyond n, uneven head groups.
std::vector<Case> cases() {
  using enum DilatedMode;
  return {
      {"paper, causal, crossing and local branches",
       {2, 37, 4, 8, 8},
       {{4, 8, 64}, {1, 2, 3}, paper, true}},
      {"paper, not causal, Dv != D", {1, 41, 3, 6, 5}, {{5, 12, 20}, {1, 3, 2}, paper, false}},
      {"grouped, causal, uneven groups", {2, 45, 5, 4, 4}, {{6, 16, 40}, {1, 2, 4}, grouped, true}},
      {"grouped, not causal, rate above segment length",
       {1, 30, 4, 4, 4},
       {{3, 10}, {4, 2}, grouped, false}},
      {"dense (one segment over everything)", {1, 23, 2, 8, 8}, {{23}, {1}, paper, true}},
      {"every segment inside a slice on 1, 2 and 3 ranks (nothing travels)",
       {2, 48, 4, 4, 4},
       {{4, 8}, {1, 2}, paper, true}},
  };
}

// Rows [begin, end) of dim `dim`.
Tensor rows(const Tensor& t, std::int64_t dim, SequenceSlice s) {
  return contiguous(narrow(t, dim, s.begin, s.end - s.begin));
}

TEST_SUITE("dist") {
  TEST_CASE("sequence-parallel attention equals whole-sequence attention, values and gradients") {
    Communicator& comm = world();
    for (const Case& c : cases()) {
      for (DType dtype : {DType::f64, DType::f32}) {
        CAPTURE(c.name);
        CAPTURE(dtype);
        Generator gen(77);  // the same whole sequence on every rank
        const Sizes& z = c.sizes;
        Tensor q = randn({z.batch, z.n, z.heads, z.d}, gen, {dtype});
        Tensor k = randn({z.batch, z.n, z.heads, z.d}, gen, {dtype});
        Tensor v = randn({z.batch, z.n, z.heads, z.dv}, gen, {dtype});
        Tensor dout = randn({z.batch, z.n, z.heads, z.dv}, gen, {dtype});
        AttentionOutput want = dilated_attention_forward(q, k, v, c.config);
        AttentionGrads want_grads =
            dilated_attention_backward(q, k, v, want.out, want.lse, dout, c.config);

        SequenceSlice mine = sequence_slice(c.sizes.n, comm.rank(), comm.size());
        Tensor ql = rows(q, 1, mine);
        Tensor kl = rows(k, 1, mine);
        Tensor vl = rows(v, 1, mine);
        AttentionOutput got =
            sequence_parallel_attention_forward(ql, kl, vl, c.config, c.sizes.n, comm);
        AttentionGrads grads = sequence_parallel_attention_backward(
            ql, kl, vl, got.out, got.lse, rows(dout, 1, mine), c.config, c.sizes.n, comm);

        double tol = dtype == DType::f64 ? 1e-12 : 1e-5;
        CHECK(worst(relative_error(got.out, rows(want.out, 1, mine))) < tol);
        CHECK(worst(relative_error(got.lse, rows(want.lse, 2, mine))) < tol);
        CHECK(worst(relative_error(grads.dq, rows(want_grads.dq, 1, mine))) < tol);
        CHECK(worst(relative_error(grads.dk, rows(want_grads.dk, 1, mine))) < tol);
        CHECK(worst(relative_error(grads.dv, rows(want_grads.dv, 1, mine))) < tol);
      }
    }
  }

  TEST_CASE("in bf16, sequence-parallel attention rounds once, as whole-sequence attention does") {
    // Each piece's output and gradients stay in f32 until the result is rounded: then nearly
    // every element has the whole-sequence result's bits (the f32 sums differ in order only).
    // Rounding each piece to bf16 first changes a large share of them by an ulp.
    Communicator& comm = world();
    for (const Case& c : cases()) {
      INFO(std::string(c.name));
      Generator gen(78);
      const Sizes& z = c.sizes;
      auto draw = [&](std::int64_t x) {
        return to(randn({z.batch, z.n, z.heads, x}, gen), DType::bf16);
      };
      Tensor q = draw(z.d);
      Tensor k = draw(z.d);
      Tensor v = draw(z.dv);
      Tensor dout = draw(z.dv);
      AttentionOutput want = dilated_attention_forward(q, k, v, c.config);
      AttentionGrads want_grads =
          dilated_attention_backward(q, k, v, want.out, want.lse, dout, c.config);
      SequenceSlice mine = sequence_slice(z.n, comm.rank(), comm.size());
      Tensor ql = rows(q, 1, mine);
      Tensor kl = rows(k, 1, mine);
      Tensor vl = rows(v, 1, mine);
      AttentionOutput got = sequence_parallel_attention_forward(ql, kl, vl, c.config, z.n, comm);
      // The whole-sequence out, so that the gradients compare the backward alone.
      Tensor out = rows(want.out, 1, mine);
      AttentionGrads grads = sequence_parallel_attention_backward(
          ql, kl, vl, out, rows(want.lse, 2, mine), rows(dout, 1, mine), c.config, z.n, comm);
      // The share of elements whose bits differ.
      auto differing = [](const Tensor& a, const Tensor& b) {
        std::vector<float> x = to(a, DType::f32).to_vector<float>();
        std::vector<float> y = to(b, DType::f32).to_vector<float>();
        std::size_t n = 0;
        for (std::size_t i = 0; i < x.size(); ++i) n += x[i] != y[i] ? 1 : 0;
        return x.empty() ? 0.0 : static_cast<double>(n) / static_cast<double>(x.size());
      };
      CHECK(worst(differing(got.out, out)) < 0.01);
      // Grouped mode with 3 branches scales each by 1/3, which bf16 cannot hold exactly: the
      // kernels take the scale, so out and dout are not rescaled and rounded again.
      CHECK(worst(differing(grads.dq, rows(want_grads.dq, 1, mine))) < 0.01);
      CHECK(worst(differing(grads.dk, rows(want_grads.dk, 1, mine))) < 0.01);
      CHECK(worst(differing(grads.dv, rows(want_grads.dv, 1, mine))) < 0.01);
    }
  }

  TEST_CASE("the sequence-parallel op's gradients reach q, k and v") {
    Communicator& comm = world();
    DilatedAttentionConfig config{{4, 16}, {1, 4}, DilatedMode::paper, true};
    std::int64_t n = 29;
    Generator gen(5);
    Tensor q = randn({1, n, 4, 4}, gen, {DType::f64});
    Tensor k = randn({1, n, 4, 4}, gen, {DType::f64});
    Tensor v = randn({1, n, 4, 4}, gen, {DType::f64});
    Tensor w = randn({1, n, 4, 4}, gen, {DType::f64});
    Variable qa(q, true);
    Variable ka(k, true);
    Variable va(v, true);
    sum(dilated_attention(qa, ka, va, config) * Variable(w)).backward();

    SequenceSlice mine = sequence_slice(n, comm.rank(), comm.size());
    Variable ql(rows(q, 1, mine), true);
    Variable kl(rows(k, 1, mine), true);
    Variable vl(rows(v, 1, mine), true);
    Variable out = sequence_parallel_dilated_attention(ql, kl, vl, config, n, comm);
    sum(out * Variable(rows(w, 1, mine))).backward();
    CHECK(worst(relative_error(ql.grad(), rows(qa.grad(), 1, mine))) < 1e-12);
    CHECK(worst(relative_error(kl.grad(), rows(ka.grad(), 1, mine))) < 1e-12);
    CHECK(worst(relative_error(vl.grad(), rows(va.grad(), 1, mine))) < 1e-12);
  }

  TEST_CASE("a LongNetLM over sequence-parallel ranks equals one process: logits and gradients") {
    Communicator& comm = world();
    for (bool recompute : {false, true}) {
      CAPTURE(recompute);
      LongNetConfig c;
      c.vocab_size = 13;
      c.d_model = 16;
      c.num_heads = 4;
      c.encoder_layers = 0;
      c.decoder_layers = 2;
      c.d_ff = 32;
      c.attention = DilatedAttentionConfig{{4, 8, 32}, {1, 2, 4}, DilatedMode::paper};
      c.recompute = recompute;
      std::int64_t n = 31;
      Generator data_gen(11);
      Tensor tokens = randint(0, c.vocab_size, {2, n + 1}, data_gen);
      Tensor inputs = contiguous(narrow(tokens, 1, 0, n));
      Tensor targets = contiguous(narrow(tokens, 1, 1, n));

      Generator gen(4);
      LongNetLM whole(c, gen, {DType::f64});
      Generator same_gen(4);
      LongNetLM sliced(c, same_gen, {DType::f64});
      Variable logits = whole.forward(inputs, gen);
      cross_entropy(logits, targets).backward();

      // Each rank's mean loss weighted by its share of the tokens: the ranks' gradients then
      // sum to the gradient of the mean over the whole sequence.
      sliced.use_sequence_parallel(n, comm);
      SequenceSlice mine = sequence_slice(n, comm.rank(), comm.size());
      Variable mine_logits = sliced.forward(rows(inputs, 1, mine), gen);
      double share = static_cast<double>(mine.end - mine.begin) / static_cast<double>(n);
      mul(cross_entropy(mine_logits, rows(targets, 1, mine)), share).backward();
      CHECK(worst(relative_error(mine_logits.data(), rows(logits.data(), 1, mine))) < 1e-12);
      auto want = whole.named_parameters();
      auto got = sliced.named_parameters();
      double error = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        Tensor g = clone(got[i].second.grad());
        comm.all_reduce(g, ReduceOp::sum);
        error = std::max(error, relative_error(g, want[i].second.grad()));
      }
      CHECK(worst(error) < 1e-12);
    }
  }

  TEST_CASE(
      "only the dilated K/V rows of crossing branches travel, and nothing when none crosses") {
    Communicator& comm = world();
    // n = 96 on P ranks: w = 96 (one segment over everything, r = 4) crosses every slice
    // boundary; w = 8 stays inside slices for P = 2, 3 and 4 (slice starts 48; 32, 64; ...).
    std::int64_t n = 96;
    std::int64_t heads = 4;
    std::int64_t d = 8;
    Generator gen(21);
    SequenceSlice mine = sequence_slice(n, comm.rank(), comm.size());
    std::int64_t local = mine.end - mine.begin;
    Shape shape{1, local, heads, d};
    Tensor q = randn(shape, gen);
    Tensor k = randn(shape, gen);
    Tensor v = randn(shape, gen);
    CountingCommunicator counting(comm);
    sequence_parallel_attention_forward(q, k, v, {{8, 96}, {1, 4}, DilatedMode::paper, true}, n,
                                        counting);
    // On other rank counts (5, 7, ...) w = 8 crosses too: nothing to check here.
    bool aligned = true;
    for (int r = 1; r < comm.size(); ++r) {
      aligned = aligned && sequence_slice(n, r, comm.size()).begin % 8 == 0;
    }
    // Per head about local / 4 rows of K and of V (one more where a slice starts mid-stride).
    std::int64_t dilated_rows = (local + 3) / 4 + 1;
    bool bounded = comm.size() == 1
                       ? counting.elements == 0
                       : counting.elements > 0 && counting.elements <= 2 * dilated_rows * heads * d;
    CHECK(everywhere(!aligned || bounded));
    // One all-gather per crossing (branch, offset) class, K and V together, started ahead:
    // w = 96, r = 4 in paper mode has 4 classes (a head each).
    CHECK(everywhere(comm.size() == 1 || (counting.calls == 4 && counting.async_calls == 4) ||
                     !aligned));
    CountingCommunicator idle(comm);
    sequence_parallel_attention_forward(q, k, v, {{8}, {1}, DilatedMode::paper, true}, n, idle);
    CHECK(everywhere(!aligned || idle.calls == 0));
  }

  TEST_CASE("sequence slices cover the sequence in order, sizes within one") {
    for (int ranks : {1, 2, 3, 7}) {
      std::int64_t n = 23;
      std::int64_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        SequenceSlice s = sequence_slice(n, r, ranks);
        CHECK(s.begin == next);
        CHECK((s.end - s.begin == n / ranks || s.end - s.begin == n / ranks + 1));
        next = s.end;
      }
      CHECK(next == n);
    }
    CHECK(contains(error_of([] { sequence_slice(2, 0, 3); }), "need 0 <= rank < ranks <= n"));
  }

  TEST_CASE("sequence-parallel attention names a slice of the wrong length") {
    Communicator& comm = world();
    DilatedAttentionConfig config{{8}, {1}, DilatedMode::paper, true};
    Tensor t = zeros({1, 100, 2, 4}, {DType::f32});
    std::string error =
        error_of([&] { sequence_parallel_attention_forward(t, t, t, config, 1000, comm); });
    CHECK(everywhere(contains(error, "holds positions [")));
    CHECK(everywhere(contains(error, "so q, k and v need")));
  }
}

TEST_SUITE("gpu") {
  TEST_CASE("sequence-parallel attention on GPUs equals whole-sequence attention on the CPU" *
            doctest::skip(too_few_gpus())) {
    Communicator& comm = gpus();
    std::vector<Case> all = cases();
    // Head dim 64 in bf16: the tensor-core kernels.
    all.push_back({"paper, causal, D 64 (tensor cores)",
                   {1, 301, 4, 64, 64},
                   {{64, 128, 512}, {1, 2, 4}, DilatedMode::paper, true}});
    all.push_back({"grouped, not causal, D 64 (tensor cores)",
                   {2, 203, 3, 64, 64},
                   {{32, 256}, {1, 2}, DilatedMode::grouped, false}});
    for (const Case& c : all) {
      for (DType dtype : {DType::f32, DType::bf16}) {
        CAPTURE(c.name);
        CAPTURE(dtype);
        Generator gen(78);
        const Sizes& z = c.sizes;
        // The inputs in dtype; the reference works in f64 on exactly those values.
        auto draw = [&](std::int64_t width) {
          return to(randn({z.batch, z.n, z.heads, width}, gen, {DType::f64}), dtype);
        };
        Tensor q = draw(z.d);
        Tensor k = draw(z.d);
        Tensor v = draw(z.dv);
        Tensor dout = draw(z.dv);
        auto f64 = [](const Tensor& t) { return to(t, DType::f64); };
        AttentionOutput want = dilated_attention_forward(f64(q), f64(k), f64(v), c.config);
        AttentionGrads want_grads = dilated_attention_backward(f64(q), f64(k), f64(v), want.out,
                                                               want.lse, f64(dout), c.config);

        SequenceSlice mine = sequence_slice(z.n, comm.rank(), comm.size());
        auto on_gpu = [&](const Tensor& t) { return to(rows(t, 1, mine), my_gpu()); };
        Tensor ql = on_gpu(q);
        Tensor kl = on_gpu(k);
        Tensor vl = on_gpu(v);
        AttentionOutput got = sequence_parallel_attention_forward(ql, kl, vl, c.config, z.n, comm);
        AttentionGrads grads = sequence_parallel_attention_backward(
            ql, kl, vl, got.out, got.lse, on_gpu(dout), c.config, z.n, comm);

        double tol = tolerance_for(dtype);
        CHECK(everywhere(got.out.device() == my_gpu() && grads.dk.device() == my_gpu()));
        CHECK(worst(relative_error(got.out, rows(want.out, 1, mine))) < tol);
        CHECK(worst(relative_error(got.lse, rows(want.lse, 2, mine))) < tol);
        CHECK(worst(relative_error(grads.dq, rows(want_grads.dq, 1, mine))) < tol);
        CHECK(worst(relative_error(grads.dk, rows(want_grads.dk, 1, mine))) < tol);
        CHECK(worst(relative_error(grads.dv, rows(want_grads.dv, 1, mine))) < tol);
      }
    }
  }
}

}  // namespace
}  // namespace longnet
