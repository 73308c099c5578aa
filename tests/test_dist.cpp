// The communicator (dist/communicator.h). tests/meson.build builds this file twice:
// test-dist runs without a launcher and checks the single-process communicator;
// test-dist-mpi (LONGNET_TEST_MPIRUN) runs under mpirun -np 2 and -np 3 and checks the MPI
// backend against values every rank computes locally from the same seeds.
//
// Under mpirun only rank 0 writes the results file, so every assertion goes through
// everywhere() or worst(): each then has the same outcome on every rank, and a failure on
// any rank fails rank 0's test case too.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "autograd/ops.h"
#include "dist/communicator.h"
#include "dist/compression.h"
#include "dist/data_parallel.h"
#include "nn/linear.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/view.h"
#include "tests/dist_world.h"
#include "tests/error_of.h"
#include "train/optim.h"
#include "train/trainer.h"

namespace longnet {
namespace {

using nlohmann::json;
using testing::contains;
using testing::CountingCommunicator;
using testing::data_of;
using testing::error_of;
using testing::everywhere;
using testing::excess;
using testing::Expected;
using testing::gpus;
using testing::my_gpu;
using testing::reduction;
using testing::too_few_gpus;
using testing::world;
using testing::worst;

const std::vector<DType> kDTypes{DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};
const std::vector<ReduceOp> kOps{ReduceOp::sum, ReduceOp::avg, ReduceOp::max};

bool same_values(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         a.to_vector<double>() == b.to_vector<double>();
}

// The largest |a - b| relative to the largest |b| (NaN counts as infinity).
double gap(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>();
  auto y = b.to_vector<double>();
  if (x.size() != y.size()) return std::numeric_limits<double>::infinity();
  double diff = 0;
  double scale = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    double d = std::abs(x[i] - y[i]);
    diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(diff, d);
    scale = std::max(scale, std::abs(y[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

#ifdef LONGNET_TEST_MPIRUN
// How far step a's loss and gradient norm are from b's, relative to b's.
double step_gap(const StepStats& a, const StepStats& b) {
  return std::max(std::abs(a.loss - b.loss) / b.loss,
                  std::abs(a.grad_norm - b.grad_norm) / b.grad_norm);
}

// The largest gap between two trainers' parameters.
double parameter_gap(Trainer& a, Trainer& b) {
  double most = 0;
  for (std::size_t i = 0; i < a.model().parameters().size(); ++i) {
    most = std::max(most, gap(a.model().parameters()[i].data(), b.model().parameters()[i].data()));
  }
  return most;
}
#endif

// Linear layers 6 -> 16 -> 16 -> 3 with tanh between, weights drawn from seed.
struct Stack {
  std::vector<std::shared_ptr<Linear>> layers;

  explicit Stack(std::uint64_t seed) {
    Generator gen(seed);
    const std::vector<std::int64_t> width{6, 16, 16, 3};
    for (std::size_t i = 0; i + 1 < width.size(); ++i) {
      layers.push_back(std::make_shared<Linear>(width[i], width[i + 1], gen));
    }
  }

  std::vector<std::pair<std::string, Variable>> named_parameters() const {
    std::vector<std::pair<std::string, Variable>> named;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      for (const auto& [name, p] : layers[i]->named_parameters()) {
        named.emplace_back(cat(i, '.', name), p);
      }
    }
    return named;
  }

  std::vector<Variable> parameters() const {
    std::vector<Variable> out;
    for (const auto& [name, p] : named_parameters()) out.push_back(p);
    return out;
  }

  // The mean squared error of the stack's output for x's rows against y.
  Variable loss(const Tensor& x, const Tensor& y) const {
    Variable h(x);
    for (std::size_t i = 0; i < layers.size(); ++i) {
      h = layers[i]->forward(h);
      if (i + 1 < layers.size()) h = tanh(h);
    }
    return mean(square(sub(h, Variable(y))));
  }
};

// Rank r's share of a batch: rows [r n / ranks, (r + 1) n / ranks).
Tensor share(const Tensor& batch, int rank, int ranks) {
  std::int64_t rows = batch.size(0) / ranks;
  return contiguous(narrow(batch, 0, rank * rows, rows));
}

// Bucket caps in bytes, as DataParallelConfig's MB (2^20 bytes).
double mb(double bytes) { return bytes / (1 << 20); }

#ifdef LONGNET_TEST_MPIRUN
// A small LongNetLM run without dropout (so that ranks and micro-batches see the same
// model), with grad_accum micro-batches per step, over a fixed byte corpus in memory.
TrainConfig tiny_config(std::int64_t grad_accum) {
  json j = json::parse(R"({
    "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32,
              "segment_lengths": [8], "dilation_rates": [1]},
    "data": {"train_path": "in memory", "seq_len": 8, "batch_size": 2},
    "optim": {"lr": 0.01},
    "train": {"steps": 10, "out_dir": "unused"}
  })");
  j["train"]["grad_accum"] = grad_accum;
  return parse_train_config(j, "tiny");
}

CorpusSplit tiny_data() {
  CorpusSplit data;
  std::uint32_t state = 7;
  for (int i = 0; i < 3000; ++i) {
    state = state * 1664525U + 1013904223U;
    data.train.tokens.push_back(static_cast<std::uint16_t>('a' + (state >> 16) % 8));
  }
  data.val.tokens.assign(data.train.tokens.begin(), data.train.tokens.begin() + 200);
  return data;
}
#endif

// Values with many ties in magnitude (levels 0, 0.5, 1, 2, 3 and both signs, -0 too), a
// NaN and infinities: what top-k's tie and NaN rules are about. In dtype on device.
Tensor tie_heavy(std::int64_t n, std::uint64_t seed, DType dtype, Device device = Device::cpu()) {
  Generator gen(seed);
  auto level = randint(0, 5, {n}, gen).to_vector<std::int64_t>();
  auto sign = randint(0, 2, {n}, gen).to_vector<std::int64_t>();
  const double levels[] = {0, 0.5, 1, 2, 3};
  std::vector<double> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = (sign[i] != 0 ? -1 : 1) * levels[level[i]];
  x[x.size() / 3] = std::nan("");
  x[x.size() / 2] = -std::numeric_limits<double>::infinity();
  x.back() = std::numeric_limits<double>::infinity();
  return to(to(from_data(x, {n}), dtype), device);
}

// Top-k by the definition: indices ordered by magnitude (NaN largest), ties by index; the
// first k, ascending.
std::vector<std::int32_t> top_k_by_sorting(const std::vector<double>& x, std::int64_t k) {
  auto key = [&](std::int32_t i) {
    return std::isnan(x[i]) ? std::numeric_limits<double>::infinity() : std::abs(x[i]);
  };
  std::vector<std::int32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return key(a) > key(b); });
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

// Equal dtype, shape and bits (NaN equals NaN).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor x = contiguous(to(a, Device::cpu()));
  Tensor y = contiguous(to(b, Device::cpu()));
  return std::memcmp(x.raw_data(), y.raw_data(),
                     static_cast<std::size_t>(x.numel()) * element_size(x.dtype())) == 0;
}

}  // namespace

// Top-k on the GPU against the CPU: the same elements, values and residuals, bit for bit.
TEST_SUITE("gpu") {
  TEST_CASE("take_top_k on the GPU takes exactly what the CPU takes" *
            doctest::skip(too_few_gpus())) {
    for (DType dtype : {DType::f32, DType::f64}) {
      // Several blocks of 4096, ties across their boundaries, k at and between ties; 5M
      // elements make 1221 blocks, more than the plan kernel's 1024 threads take at once.
      for (std::int64_t n : {1, 300, 4096, 10000, 70001, 5000000}) {
        for (std::int64_t k : {std::int64_t{1}, n / 100 + 1, n / 3 + 1, n}) {
          CAPTURE(dtype);
          CAPTURE(n);
          CAPTURE(k);
          Tensor cpu_acc = tie_heavy(n, 1700 + n + k, dtype);
          Tensor gpu_acc = to(cpu_acc, my_gpu());
          Tensor cpu_index = empty({k}, {DType::i32});
          Tensor cpu_values = empty({k}, {dtype});
          take_top_k(cpu_acc, k, cpu_index, cpu_values);
          Tensor gpu_index = full({k}, -7, {DType::i32, my_gpu()});
          Tensor gpu_values = full({k}, std::nan(""), {dtype, my_gpu()});
          take_top_k(gpu_acc, k, gpu_index, gpu_values);
          CHECK(everywhere(same_bits(gpu_index, cpu_index)));
          CHECK(everywhere(same_bits(gpu_values, cpu_values)));
          CHECK(everywhere(same_bits(gpu_acc, cpu_acc)));
        }
      }
    }
  }

  TEST_CASE("top-k compression of GPU gradients over NCCL equals it on the CPU" *
            doctest::skip(too_few_gpus())) {
    Communicator& comm = gpus();
    auto on_gpu = make_gradient_reducer({Compression::topk, 0.05}, comm);
    auto on_cpu = make_gradient_reducer({Compression::topk, 0.05}, world());
    const std::vector<Shape> shapes{{50, 70}, {130}};
    bool ok = true;
    for (int step = 0; step < 3; ++step) {
      std::vector<Tensor> cpu_grads;
      std::vector<Tensor> gpu_grads;
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        cpu_grads.push_back(data_of(comm.rank(), DType::f32, shapes[j], 300 + 10 * step + j));
        gpu_grads.push_back(to(cpu_grads.back(), my_gpu()));
      }
      std::vector<Tensor> want = on_cpu->start({0, 1}, cpu_grads)->finish();
      std::vector<Tensor> got = on_gpu->start({0, 1}, gpu_grads)->finish();
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        ok = ok && got[j].device() == my_gpu() && same_bits(got[j], want[j]) &&
             same_bits(on_gpu->residual(j), on_cpu->residual(j));
      }
      ok = ok && on_gpu->bytes_sent() == on_cpu->bytes_sent();
    }
    CHECK(everywhere(ok));
  }
}

TEST_SUITE("dist") {
  TEST_CASE("every backend rejects the same invalid arguments before moving data") {
    Communicator& comm = world();
    int p = comm.size();
    Tensor x = zeros({2, 3});
    Tensor gathered = zeros({p, 2, 3});
    // out, and an in that overlaps it one element in (p + 1 slots of storage).
    const std::int64_t slot = 6;
    Tensor slots = zeros({(p + 1) * slot});
    Tensor out = reshape(narrow(slots, 0, 0, p * slot), {p, 2, 3});
    Tensor shifted = reshape(narrow(slots, 0, 1, slot), {2, 3});
    auto rejects = [](const std::function<void()>& call, const char* expected) {
      std::string error = error_of(call);
      CAPTURE(error);
      CHECK_MESSAGE(everywhere(contains(error, expected)), "expected ", expected);
    };
    rejects([&] { comm.all_reduce(Tensor(), ReduceOp::sum); }, "got an undefined tensor");
    rejects([&] { comm.all_reduce(transpose(x, 0, 1), ReduceOp::sum); },
            "needs a contiguous tensor");
    rejects([&] { comm.all_reduce(zeros({3}, {DType::i32}), ReduceOp::avg); },
            "avg needs a floating dtype");
    rejects([&] { comm.all_gather(x, zeros({p, 3, 2})); }, "out must have shape");
    rejects([&] { comm.all_gather(x, zeros({p, 2, 3}, {DType::f64})); }, "dtype mismatch");
    rejects([&] { comm.all_gather(shifted, out); }, "in overlaps out");
    rejects(
        [&] {
          comm.reduce_scatter(zeros({p + 1, 2}), zeros({2}), ReduceOp::sum);
        },
        "in must have shape");
    rejects(
        [&] {
          comm.reduce_scatter(gathered, squeeze(narrow(gathered, 0, 0, 1), 0), ReduceOp::sum);
        },
        "in and out overlap");
    rejects([&] { comm.broadcast(x, p); }, "is not a rank");
    rejects([&] { comm.broadcast(x, -1); }, "is not a rank");
    rejects([&] { comm.send(x, p, 0); }, "is not a rank");
    rejects([&] { comm.recv(x, comm.rank(), 0); }, "cannot send to or receive from itself");
    rejects([&] { comm.send(x, (comm.rank() + 1) % p, -1); },
            p > 1 ? "tag -1 is outside" : "cannot send to or receive from itself");
    // Nothing moved, and the communicator still works.
    Tensor t = ones({4});
    comm.all_reduce(t, ReduceOp::sum);
    CHECK(everywhere(same_values(t, full({4}, p))));
  }

#ifndef LONGNET_TEST_MPIRUN
  TEST_CASE("without a launcher make_communicator gives the single-process communicator") {
    REQUIRE(std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr);
    auto comm = make_communicator();
    CHECK(comm->backend() == "single-process");
    CHECK(comm->rank() == 0);
    CHECK(comm->size() == 1);
  }

  TEST_CASE("the single-process collectives are the identity in every dtype") {
    Communicator& comm = world();
    for (DType dtype : kDTypes) {
      INFO("dtype ", name(dtype));
      Tensor data = data_of(0, dtype, {3, 5}, 1);
      for (ReduceOp op : kOps) {
        if (op == ReduceOp::avg && !is_floating(dtype)) continue;
        Tensor t = clone(data);
        comm.all_reduce(t, op);
        CHECK(same_values(t, data));
        Tensor piece = zeros({3, 5}, {dtype});
        comm.reduce_scatter(reshape(data, {1, 3, 5}), piece, op);
        CHECK(same_values(piece, data));
      }
      Tensor gathered = zeros({1, 3, 5}, {dtype});
      comm.all_gather(data, gathered);
      CHECK(same_values(gathered, reshape(data, {1, 3, 5})));
      Tensor in_place = clone(gathered);
      comm.all_gather(squeeze(in_place, 0), in_place);
      CHECK(same_values(in_place, gathered));
      Tensor t = clone(data);
      comm.broadcast(t, 0);
      CHECK(same_values(t, data));
    }
    comm.barrier();
  }

  TEST_CASE("a timeout must be positive") {
    CHECK(contains(error_of([] { make_communicator()->set_timeout(0); }), "valid: seconds > 0"));
  }

  TEST_CASE("the single-process communicator has no peer to send to or receive from") {
    Communicator& comm = world();
    Tensor t = zeros({2});
    CHECK(
        contains(error_of([&] { comm.send(t, 1, 0); }), "send: rank 1 is not a rank (ranks 0..0)"));
    CHECK(contains(error_of([&] { comm.recv(t, 0, 0); }), "cannot send to or receive from itself"));
  }

  TEST_CASE("under a launcher, a build without MPI says how to get it" *
            doctest::skip(built_with_mpi())) {
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    std::string error = error_of([] { make_communicator(); });
    unsetenv("OMPI_COMM_WORLD_SIZE");
    CHECK(contains(error, "this build has no MPI support"));
    CHECK(contains(error, "apt-get install libopenmpi-dev openmpi-bin"));
  }
#else
  TEST_CASE("under mpirun make_communicator gives the MPI backend with the launcher's ranks") {
    Communicator& comm = world();
    const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
    REQUIRE(size != nullptr);
    REQUIRE(rank != nullptr);
    CHECK(everywhere(comm.backend() == "mpi"));
    CHECK(everywhere(comm.size() == std::atoi(size) && comm.rank() == std::atoi(rank)));
    CHECK(everywhere(comm.size() >= 2));
    Tensor ranks = zeros({comm.size()}, {DType::i32});
    comm.all_gather(full({}, comm.rank(), {DType::i32}), ranks);
    CHECK(everywhere(same_values(ranks, arange(0, comm.size(), 1, {DType::i32}))));
  }

  TEST_CASE("all_reduce sums, averages and takes the max of every rank's data in every dtype") {
    Communicator& comm = world();
    std::uint64_t seed = 10;
    for (const Shape& shape : {Shape{}, Shape{0}, Shape{7, 13}, Shape{300001}}) {
      for (DType dtype : kDTypes) {
        for (ReduceOp op : kOps) {
          if (op == ReduceOp::avg && !is_floating(dtype)) continue;
          INFO("dtype ", name(dtype));
          INFO("op ", name(op));
          INFO("shape ", str(shape));
          ++seed;
          Tensor t = data_of(comm.rank(), dtype, shape, seed);
          comm.all_reduce(t, op);
          CHECK(everywhere(t.dtype() == dtype && t.shape() == shape));
          CHECK(worst(excess(t, reduction(op, dtype, shape, seed, comm.size()))) <= 0);
        }
      }
    }
  }

  TEST_CASE("all_reduce gives every rank the same bits") {
    Communicator& comm = world();
    for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      INFO("dtype ", name(dtype));
      Tensor t = data_of(comm.rank(), dtype, {300001}, 3);
      comm.all_reduce(t, ReduceOp::sum);
      Tensor all = zeros({comm.size(), 300001}, {dtype});
      comm.all_gather(t, all);
      std::size_t bytes = 300001 * element_size(dtype);
      bool same = true;
      for (int r = 0; r < comm.size(); ++r) {
        same = same && std::memcmp(narrow(all, 0, r, 1).raw_data(), t.raw_data(), bytes) == 0;
      }
      CHECK(everywhere(same));
    }
  }

  TEST_CASE("bf16 all_reduce accumulates in f32 and rounds once") {
    // 256 + 1 + 1 in bf16 steps (8 significant bits) rounds back to 256 at each step; in
    // f32 it is 258, which bf16 holds. So from 3 ranks on, the f32 sum shows.
    Communicator& comm = world();
    int p = comm.size();
    Tensor t = full({3}, comm.rank() == 0 ? 256 : 1, {DType::bf16});
    comm.all_reduce(t, ReduceOp::sum);
    double expected = static_cast<float>(bf16(256.0F + static_cast<float>(p - 1)));
    CHECK(everywhere(t.to_vector<double>() == std::vector<double>(3, expected)));
    Tensor mean = full({3}, comm.rank() == 0 ? 256 : 1, {DType::bf16});
    comm.all_reduce(mean, ReduceOp::avg);
    double expected_mean = static_cast<float>(bf16((256.0F + static_cast<float>(p - 1)) / p));
    CHECK(everywhere(mean.to_vector<double>() == std::vector<double>(3, expected_mean)));
  }

  TEST_CASE("all_gather stacks every rank's tensor in rank order, also in place") {
    Communicator& comm = world();
    int p = comm.size();
    for (DType dtype : kDTypes) {
      INFO("dtype ", name(dtype));
      Tensor out = zeros({p, 4, 5}, {dtype});
      comm.all_gather(data_of(comm.rank(), dtype, {4, 5}, 20), out);
      Tensor in_place = zeros({p, 4, 5}, {dtype});
      Tensor mine = squeeze(narrow(in_place, 0, comm.rank(), 1), 0);
      copy_(mine, data_of(comm.rank(), dtype, {4, 5}, 20));
      comm.all_gather(mine, in_place);
      bool ok = true;
      for (int r = 0; r < p; ++r) {
        Tensor expected = data_of(r, dtype, {4, 5}, 20);
        ok = ok && same_values(squeeze(narrow(out, 0, r, 1), 0), expected) &&
             same_values(squeeze(narrow(in_place, 0, r, 1), 0), expected);
      }
      CHECK(everywhere(ok));
    }
  }

  TEST_CASE("reduce_scatter gives rank r the reduction of every rank's piece r") {
    Communicator& comm = world();
    int p = comm.size();
    std::uint64_t seed = 30;
    for (DType dtype : kDTypes) {
      for (ReduceOp op : kOps) {
        if (op == ReduceOp::avg && !is_floating(dtype)) continue;
        INFO("dtype ", name(dtype));
        INFO("op ", name(op));
        ++seed;
        Tensor out = zeros({6, 7}, {dtype});
        comm.reduce_scatter(data_of(comm.rank(), dtype, {p, 6, 7}, seed), out, op);
        Expected whole = reduction(op, dtype, {p, 6, 7}, seed, p);
        auto begin = static_cast<std::ptrdiff_t>(comm.rank()) * 42;
        Expected piece{{whole.value.begin() + begin, whole.value.begin() + begin + 42},
                       {whole.bound.begin() + begin, whole.bound.begin() + begin + 42}};
        CHECK(worst(excess(out, piece)) <= 0);
      }
    }
  }

  TEST_CASE("broadcast copies the root's tensor to every rank, from a non-zero root") {
    Communicator& comm = world();
    int root = comm.size() - 1;
    for (DType dtype : kDTypes) {
      INFO("dtype ", name(dtype));
      Tensor expected = data_of(root, dtype, {5, 3}, 40);
      Tensor t = comm.rank() == root ? clone(expected) : zeros({5, 3}, {dtype});
      comm.broadcast(t, root);
      CHECK(everywhere(same_values(t, expected)));
    }
  }

  TEST_CASE("send and recv pass every dtype around a ring, in order per source and tag") {
    Communicator& comm = world();
    int p = comm.size();
    int next = (comm.rank() + 1) % p;
    int prev = (comm.rank() + p - 1) % p;
    for (DType dtype : kDTypes) {
      INFO("dtype ", name(dtype));
      // Rank 0 sends first and every other rank receives first, so the sends form no cycle.
      Tensor first = zeros({9, 2}, {dtype});
      Tensor second = zeros({9, 2}, {dtype});
      auto pass = [&] {
        comm.send(data_of(comm.rank(), dtype, {9, 2}, 50), next, 7);
        comm.send(data_of(comm.rank(), dtype, {9, 2}, 51), next, 7);
      };
      if (comm.rank() == 0) pass();
      comm.recv(first, prev, 7);
      comm.recv(second, prev, 7);
      if (comm.rank() != 0) pass();
      CHECK(everywhere(same_values(first, data_of(prev, dtype, {9, 2}, 50)) &&
                       same_values(second, data_of(prev, dtype, {9, 2}, 51))));
    }
  }

  TEST_CASE("a recv of another size fails and discards the message; the channel still works") {
    Communicator& comm = world();
    std::string error = "not involved";
    Tensor got = zeros({4});
    if (comm.rank() == 0) {
      comm.send(zeros({5}), 1, 3);
      comm.send(arange(0, 4), 1, 3);
    } else if (comm.rank() == 1) {
      error = error_of([&] { comm.recv(got, 0, 3); });
      comm.recv(got, 0, 3);
    }
    CHECK(everywhere(comm.rank() != 1 ||
                     contains(error, "recv: rank 0 sent 20 bytes with tag 3, but f32[4]")));
    CHECK(everywhere(comm.rank() != 1 || same_values(got, arange(0, 4))));
  }

  TEST_CASE("ranks that disagree on call, dtype, shape, op or root all get an error naming each") {
    Communicator& comm = world();
    bool first = comm.rank() == 0;
    std::string shape = error_of([&] { comm.all_reduce(zeros({first ? 4 : 5}), ReduceOp::sum); });
    CHECK(everywhere(contains(shape,
                              "all_reduce: ranks disagree (rank 0 has f32[4] sum, rank 1 "
                              "has f32[5] sum")));
    std::string dtype = error_of([&] {
      comm.all_gather(zeros({2}, {first ? DType::f64 : DType::f32}),
                      zeros({comm.size(), 2}, {first ? DType::f64 : DType::f32}));
    });
    CHECK(everywhere(contains(dtype,
                              "all_gather: ranks disagree (rank 0 has f64[2], rank 1 has "
                              "f32[2]")));
    std::string op =
        error_of([&] { comm.all_reduce(zeros({3}), first ? ReduceOp::max : ReduceOp::sum); });
    CHECK(everywhere(contains(op, "rank 0 has f32[3] max, rank 1 has f32[3] sum")));
    std::string root = error_of([&] { comm.broadcast(zeros({3}), first ? 0 : 1); });
    CHECK(everywhere(
        contains(root, "rank 0 has f32[3] root 0, rank 1 has f32[3] root 1") &&
        contains(root, "every rank must make the same call with the same dtype, shape and root")));
    // Different collectives over the same shape: caught, not paired up.
    Tensor same = zeros({3});
    std::string calls = error_of([&] {
      if (first) {
        comm.all_reduce(same, ReduceOp::sum);
      } else {
        comm.broadcast(same, 0);
      }
    });
    CHECK(everywhere(contains(calls, "rank 0 has all_reduce f32[3]") &&
                     contains(calls, "rank 1 has broadcast f32[3]")));
    Tensor t = ones({3});
    comm.all_reduce(t, ReduceOp::sum);
    CHECK(everywhere(same_values(t, full({3}, comm.size()))));
  }

  TEST_CASE("invalid arguments on one rank make every rank throw instead of hanging") {
    Communicator& comm = world();
    Tensor x = zeros({2, 3});
    Tensor arg = comm.rank() == 1 ? transpose(x, 0, 1) : x;
    std::string error = error_of([&] { comm.all_reduce(arg, ReduceOp::sum); });
    CHECK(everywhere(comm.rank() == 1
                         ? contains(error, "needs a contiguous tensor")
                         : contains(error, "all_reduce: rank 1 passed invalid arguments")));
    std::string root = error_of([&] { comm.broadcast(x, comm.rank() == 1 ? 7 : 0); });
    CHECK(everywhere(contains(
        root, comm.rank() == 1 ? "root 7 is not a rank" : "rank 1 passed invalid arguments")));
  }

  TEST_CASE("a second communicator's messages never meet the first's") {
    Communicator& comm = world();
    auto other = make_communicator();
    Tensor a = zeros({2});
    Tensor b = zeros({2});
    if (comm.rank() == 0) {
      comm.send(full({2}, 1), 1, 0);
      other->send(full({2}, 2), 1, 0);
    } else if (comm.rank() == 1) {
      other->recv(b, 0, 0);
      comm.recv(a, 0, 0);
    }
    CHECK(everywhere(comm.rank() != 1 ||
                     (same_values(a, full({2}, 1)) && same_values(b, full({2}, 2)))));
    other->barrier();
  }
#endif

  TEST_CASE(
      "async all_reduce, all_gather and reduce_scatter give the blocking results, several in "
      "flight") {
    Communicator& comm = world();
    int p = comm.size();
    Tensor sum = data_of(comm.rank(), DType::f32, {30001}, 60);
    Tensor avg = data_of(comm.rank(), DType::bf16, {7, 5}, 61);
    Tensor max = data_of(comm.rank(), DType::f64, {9}, 62);
    Tensor gathered = full({p, 3, 4}, std::nan(""), {DType::f64});  // poisoned
    auto sum_work = comm.all_reduce_async(sum, ReduceOp::sum);
    auto avg_work = comm.all_reduce_async(avg, ReduceOp::avg);
    auto gather_work =
        comm.all_gather_async(data_of(comm.rank(), DType::f64, {3, 4}, 63), gathered);
    Tensor scattered = full({6}, std::nan(""), {DType::bf16});  // poisoned
    auto scatter_work = comm.reduce_scatter_async(data_of(comm.rank(), DType::bf16, {p, 6}, 65),
                                                  scattered, ReduceOp::avg);
    Tensor blocking = data_of(comm.rank(), DType::i64, {5}, 64);
    comm.all_reduce(blocking, ReduceOp::sum);  // a blocking call while others are in flight
    auto max_work = comm.all_reduce_async(max, ReduceOp::max);
    max_work->wait();
    gather_work->wait();
    while (!avg_work->test()) {
    }
    avg_work->wait();  // returns at once after test() said done
    sum_work->wait();
    scatter_work->wait();
    Expected whole = reduction(ReduceOp::avg, DType::bf16, {p, 6}, 65, p);
    auto begin = static_cast<std::ptrdiff_t>(comm.rank()) * 6;
    Expected piece{{whole.value.begin() + begin, whole.value.begin() + begin + 6},
                   {whole.bound.begin() + begin, whole.bound.begin() + begin + 6}};
    CHECK(worst(excess(scattered, piece)) <= 0);
    CHECK(worst(excess(sum, reduction(ReduceOp::sum, DType::f32, {30001}, 60, p))) <= 0);
    CHECK(worst(excess(avg, reduction(ReduceOp::avg, DType::bf16, {7, 5}, 61, p))) <= 0);
    CHECK(worst(excess(max, reduction(ReduceOp::max, DType::f64, {9}, 62, p))) <= 0);
    CHECK(worst(excess(blocking, reduction(ReduceOp::sum, DType::i64, {5}, 64, p))) <= 0);
    bool ok = true;
    for (int r = 0; r < p; ++r) {
      ok = ok &&
           same_values(squeeze(narrow(gathered, 0, r, 1), 0), data_of(r, DType::f64, {3, 4}, 63));
    }
    CHECK(everywhere(ok));
    std::string error =
        error_of([&] { comm.all_reduce_async(zeros({3}, {DType::i32}), ReduceOp::avg); });
    CHECK(everywhere(contains(error, "all_reduce: avg needs a floating dtype")));
#ifdef LONGNET_TEST_MPIRUN
    std::string mismatch =
        error_of([&] { comm.all_reduce_async(zeros({comm.rank() == 0 ? 4 : 5}), ReduceOp::sum); });
    CHECK(everywhere(contains(
        mismatch, "all_reduce: ranks disagree (rank 0 has f32[4] sum, rank 1 has f32[5] sum")));
#endif
  }

  TEST_CASE("data parallel on P ranks equals one process on the whole batch after 5 AdamW steps") {
    Communicator& comm = world();
    int p = comm.size();
    const int rows = 4;
    Stack replica(100 + static_cast<std::uint64_t>(comm.rank()));  // rank 0's weights must win
    DataParallel dp(replica.parameters(), comm, {mb(100), mb(1000), 2});
    Stack whole(100);
    AdamWConfig adam{1e-2, 0.9, 0.95, 1e-8, 0.1};
    AdamW replica_optimizer(replica.named_parameters(), adam);
    AdamW whole_optimizer(whole.named_parameters(), adam);
    for (int step = 0; step < 5; ++step) {
      Generator gen(200 + static_cast<std::uint64_t>(step));
      Tensor x = randn({p * rows, 6}, gen);
      Tensor y = randn({p * rows, 3}, gen);
      replica.loss(share(x, comm.rank(), p), share(y, comm.rank(), p)).backward();
      dp.synchronize();
      replica_optimizer.step(adam.lr);
      for (const Variable& v : replica.parameters()) v.zero_grad();
      whole.loss(x, y).backward();
      whole_optimizer.step(adam.lr);
      for (const Variable& v : whole.parameters()) v.zero_grad();
    }
    double most = 0;
    for (std::size_t i = 0; i < replica.parameters().size(); ++i) {
      most = std::max(most, gap(replica.parameters()[i].data(), whole.parameters()[i].data()));
    }
    CHECK(worst(most) < 1e-5);
    CHECK(everywhere(dp.buckets().size() >= 3));  // 6 tensors, at most 2 per bucket
    CHECK(everywhere(dp.bytes_sent() == 4 * (6 * 16 + 16 + 16 * 16 + 16 + 16 * 3 + 3)));
  }

  TEST_CASE("buckets fill in gradient-ready order and flush at the byte and tensor caps") {
    Communicator& comm = world();
    int p = comm.size();
    // W0 .. W5 of a chain x W0 W1 ... W5, whose gradients become ready from W5 down to W0,
    // and a vector U that the loss never uses. W_i is d[i] x d[i + 1]: 480, 800, 600, 240,
    // 200 and 400 bytes; U 28.
    const std::vector<std::int64_t> d{3, 40, 5, 30, 2, 25, 4};
    auto chain = [&](const std::vector<Variable>& w, const Tensor& x) {
      Variable h(x);
      for (int i = 0; i < 6; ++i) h = matmul(h, w[i]);
      return sum(h);
    };
    auto input = [&](int rank) {
      Generator gen(310 + static_cast<std::uint64_t>(rank));
      return randn({2, d[0]}, gen);
    };
    struct Case {
      DataParallelConfig config;
      std::vector<std::vector<std::size_t>> buckets;
      int flushed_before_w0;  // buckets started when W0's gradient became ready
    };
    const std::vector<Case> cases{
        // 400 + 200 >= 500: the first bucket; then 240 + 600 + 800 >= 1000; W0 and U
        // remain for synchronize().
        {{mb(500), mb(1000), 3}, {{5, 4}, {3, 2, 1}, {0, 6}}, 2},
        // Two tensors a bucket; U alone at the end.
        {{1, 25, 2}, {{5, 4}, {3, 2}, {1, 0}, {6}}, 3},
    };
    for (const Case& c : cases) {
      CAPTURE(c.buckets.size());
      Generator gen(300);
      std::vector<Variable> w;
      for (int i = 0; i < 6; ++i) w.emplace_back(randn({d[i], d[i + 1]}, gen), true);
      w.emplace_back(randn({7}, gen), true);
      CountingCommunicator counting(comm);
      DataParallel dp(w, counting, c.config);
      int flushed = -1;
      w[0].add_grad_ready_hook([&](const Tensor&) { flushed = counting.async_calls; });
      chain(w, input(comm.rank())).backward();
      dp.synchronize();
      CHECK(everywhere(dp.buckets() == c.buckets));
      CHECK(everywhere(flushed == c.flushed_before_w0));
      // Every rank's gradient, averaged; U has none anywhere, so zeros.
      std::vector<Tensor> expected(6);
      for (int r = 0; r < p; ++r) {
        std::vector<Variable> local;
        for (const Variable& v : w) local.emplace_back(v.data(), true);
        chain(local, input(r)).backward();
        for (int i = 0; i < 6; ++i) {
          expected[i] = r == 0 ? local[i].grad() : add(expected[i], local[i].grad());
        }
      }
      double most = 0;
      for (int i = 0; i < 6; ++i) {
        most = std::max(most, gap(w[i].grad(), mul(expected[i], 1.0 / p)));
      }
      CHECK(worst(most) < 1e-6);
      CHECK(everywhere(w[6].grad().defined() && same_values(w[6].grad(), zeros({7}))));
    }
  }

  TEST_CASE("gradient accumulation communicates only on the last micro-step") {
    Communicator& comm = world();
    int p = comm.size();
    const int micro_steps = 3;
    auto batch = [](int rank, int micro_step) {
      Generator gen(410 + static_cast<std::uint64_t>(100 * micro_step + rank));
      Tensor x = randn({4, 6}, gen);
      return std::pair{x, randn({4, 3}, gen)};
    };
    Stack replica(400);
    CountingCommunicator counting(comm);
    DataParallel dp(replica.parameters(), counting, {mb(100), mb(1000), 1});
    CHECK(everywhere(counting.calls == 6));  // one broadcast per parameter
    std::vector<int> calls;
    for (int m = 0; m < micro_steps; ++m) {
      counting.calls = 0;
      dp.set_sync(m == micro_steps - 1);
      auto [x, y] = batch(comm.rank(), m);
      replica.loss(x, y).backward();
      calls.push_back(counting.calls);
    }
    dp.synchronize();
    // One bucket per tensor, all started during the last backward.
    CHECK(everywhere(calls == std::vector<int>{0, 0, 6}));
    Stack reference(400);
    for (int r = 0; r < p; ++r) {
      for (int m = 0; m < micro_steps; ++m) {
        auto [x, y] = batch(r, m);
        reference.loss(x, y).backward();
      }
    }
    double most = 0;
    for (std::size_t i = 0; i < 6; ++i) {
      most = std::max(most, gap(replica.parameters()[i].grad(),
                                mul(reference.parameters()[i].grad(), 1.0 / p)));
    }
    CHECK(worst(most) < 1e-5);
    dp.set_sync(false);
    CHECK(everywhere(contains(error_of([&] { dp.synchronize(); }), "sync is off")));
    dp.set_sync(true);
    auto [x, y] = batch(comm.rank(), 0);
    replica.loss(x, y).backward();
    std::string twice = error_of([&] { replica.loss(x, y).backward(); });
    CHECK(everywhere(contains(twice, "became ready twice in one step; call synchronize()")));
  }

  TEST_CASE("top-k sends the largest of gradient plus residual, keeps the rest, sums all ranks") {
    Communicator& comm = world();
    int p = comm.size();
    auto reducer = make_gradient_reducer({Compression::topk, 0.1}, comm);
    const std::vector<Shape> shapes{{5, 7}, {13}};  // 48 elements: k = ceil(4.8) = 5
    const std::int64_t n = 48;
    const std::int64_t k = 5;
    bool ok = true;
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      std::vector<Tensor> grads;
      std::vector<Tensor> acc;  // gradient + residual
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        grads.push_back(data_of(comm.rank(), DType::f32, shapes[j], 70 + 10 * step + j));
        Tensor residual = reducer->residual(j);
        ok = ok && residual.defined() == (step > 0);
        acc.push_back(residual.defined() ? add(grads[j], residual) : clone(grads[j]));
      }
      std::vector<Tensor> result = reducer->start({0, 1}, grads)->finish();
      // What this rank sent: acc where the residual is zero.
      auto a = concat({reshape(acc[0], {-1}), acc[1]}, 0).to_vector<float>();
      auto r =
          concat({reshape(reducer->residual(0), {-1}), reducer->residual(1)}, 0).to_vector<float>();
      std::vector<float> sent(n, 0.0F);
      float least_sent = std::numeric_limits<float>::infinity();
      float most_kept = 0;
      std::int64_t count = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        if (r[i] == 0) {
          sent[i] = a[i];
          ++count;
          least_sent = std::min(least_sent, std::abs(a[i]));
        } else {
          ok = ok && r[i] == a[i];  // sent + residual == acc, exactly
          most_kept = std::max(most_kept, std::abs(a[i]));
        }
      }
      ok = ok && count == k && least_sent > most_kept;
      Tensor all = zeros({p, n});
      comm.all_gather(from_data(sent, {n}), all);
      Tensor expected = zeros({n});
      for (int q = 0; q < p; ++q) expected = add(expected, squeeze(narrow(all, 0, q, 1), 0));
      expected = div(expected, scalar(p));
      ok = ok && same_values(concat({reshape(result[0], {-1}), result[1]}, 0), expected);
      ok = ok && result[0].shape() == shapes[0] && reducer->bytes_sent() == (step + 1) * k * 8;
    }
    CHECK(everywhere(ok));
  }

  TEST_CASE("take_top_k takes the largest magnitudes, NaN first, ties to the lower index") {
    for (DType dtype : {DType::f32, DType::f64}) {
      for (std::int64_t n : {1, 7, 50, 1000}) {
        for (std::int64_t k : {std::int64_t{1}, (n + 2) / 3, n / 2 + 1, n}) {
          CAPTURE(dtype);
          CAPTURE(n);
          CAPTURE(k);
          Tensor acc = tie_heavy(n, 900 + n + k, dtype);
          auto before = acc.to_vector<double>();
          Tensor index = empty({k}, {DType::i32});
          Tensor values = empty({k}, {dtype});
          take_top_k(acc, k, index, values);
          std::vector<std::int32_t> want = top_k_by_sorting(before, k);
          CHECK(index.to_vector<std::int32_t>() == want);
          std::vector<double> want_values;
          std::vector<double> want_acc = before;
          for (std::int32_t i : want) {
            want_values.push_back(before[static_cast<std::size_t>(i)]);
            want_acc[static_cast<std::size_t>(i)] = 0;
          }
          CHECK(same_bits(values, to(from_data(want_values, {k}), dtype)));
          CHECK(same_bits(acc, to(from_data(want_acc, {n}), dtype)));
        }
      }
    }
    Tensor acc = zeros({4});
    CHECK(contains(error_of([&] { take_top_k(acc, 5, empty({5}, {DType::i32}), empty({5})); }),
                   "k = 5 for 4 elements"));
  }

  TEST_CASE("PowerSGD at full rank gives the average; at any rank gradient mass is conserved") {
    Communicator& comm = world();
    int p = comm.size();
    // Matrices 6 x 4, 3 x 5 and 2 x (3 x 2), and a vector, which goes uncompressed.
    const std::vector<Shape> shapes{{6, 4}, {3, 5}, {2, 3, 2}, {7}};
    const std::vector<std::size_t> ids{0, 1, 2, 3};
    auto grads_of = [&](int rank, int step) {
      std::vector<Tensor> grads;
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        grads.push_back(data_of(rank, DType::f32, shapes[j], 90 + 10 * step + j));
      }
      return grads;
    };
    auto average = [&](int step) {
      std::vector<Tensor> sum = grads_of(0, step);
      for (int r = 1; r < p; ++r) {
        std::vector<Tensor> g = grads_of(r, step);
        for (std::size_t j = 0; j < sum.size(); ++j) sum[j] = add(sum[j], g[j]);
      }
      for (Tensor& t : sum) t = mul(t, 1.0 / p);
      return sum;
    };
    double full_gap = 0;
    {
      auto full_rank = make_gradient_reducer({Compression::powersgd, 0.01, 8, 0}, comm);
      std::vector<Tensor> result = full_rank->start(ids, grads_of(comm.rank(), 0))->finish();
      std::vector<Tensor> expected = average(0);
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        full_gap = std::max(full_gap, gap(result[j], expected[j]));
      }
    }
    CHECK(worst(full_gap) < 1e-5);

    // Rank 1: P and Q of each matrix are one column: 6 + 3 + 2 and 4 + 5 + 6 floats, and
    // the vector's 7.
    auto low_rank = make_gradient_reducer({Compression::powersgd, 0.01, 1, 0}, comm);
    double conserved = 0;
    double vector_gap = 0;
    bool bytes_ok = true;
    for (int step = 0; step < 3; ++step) {
      std::vector<Tensor> grads = grads_of(comm.rank(), step);
      std::vector<Tensor> acc;
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        Tensor residual = low_rank->residual(j);
        acc.push_back(residual.defined() ? add(grads[j], reshape(residual, shapes[j])) : grads[j]);
      }
      std::vector<Tensor> result = low_rank->start(ids, grads)->finish();
      for (std::size_t j = 0; j < 3; ++j) {
        Tensor sent_and_kept = add(result[j], reshape(low_rank->residual(j), shapes[j]));
        conserved = std::max(conserved, gap(sent_and_kept, acc[j]));
      }
      vector_gap = std::max(vector_gap, gap(result[3], average(step)[3]));
      bytes_ok = bytes_ok && !low_rank->residual(3).defined() &&
                 low_rank->bytes_sent() == (step + 1) * 4 * (11 + 7 + 15);
    }
    CHECK(worst(conserved) < 1e-6);
    CHECK(worst(vector_gap) < 1e-6);
    CHECK(everywhere(bytes_ok));
  }

#ifdef LONGNET_TEST_MPIRUN
  TEST_CASE("a data-parallel Trainer on P ranks follows one process accumulating P batches") {
    Communicator& comm = world();
    int p = comm.size();
    Trainer ranks(tiny_config(1), tiny_data(), comm);
    Trainer one(tiny_config(p), tiny_data());
    double loss_gap = 0;
    bool ok = true;
    for (int i = 0; i < 4; ++i) {
      StepStats a = ranks.step();
      StepStats b = one.step();
      loss_gap = std::max(loss_gap, step_gap(a, b));
      ok = ok && !a.skipped && a.tokens == b.tokens && a.bytes_sent > 0 && b.bytes_sent == 0;
    }
    CHECK(everywhere(ok));
    CHECK(worst(loss_gap) < 1e-5);
    // AdamW divides by a gradient's running RMS, so where a gradient is nearly zero its
    // rounding (the sums run in another order) moves a weight by a visible fraction of lr.
    CHECK(worst(parameter_gap(ranks, one)) < 1e-3);
  }

  TEST_CASE("a sequence-parallel Trainer on P ranks follows one process on whole sequences") {
    Communicator& comm = world();
    // 24 positions: slices of 12 or 8; the w = 16 branch crosses their boundaries.
    json j = json::parse(R"({
      "model": {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32,
                "segment_lengths": [4, 16], "dilation_rates": [1, 2]},
      "data": {"train_path": "in memory", "seq_len": 24, "batch_size": 2},
      "optim": {"lr": 0.01},
      "train": {"steps": 10, "out_dir": "unused", "eval_batches": 3},
      "dist": {"sequence_parallel": true}
    })");
    TrainConfig config = parse_train_config(j, "sequence parallel");
    Trainer ranks(config, tiny_data(), comm);
    Trainer one(config, tiny_data());
    double loss_gap = 0;
    bool ok = true;
    for (int i = 0; i < 3; ++i) {
      StepStats a = ranks.step();
      StepStats b = one.step();
      loss_gap = std::max(loss_gap, step_gap(a, b));
      ok = ok && !a.skipped && a.tokens == b.tokens;
    }
    loss_gap = std::max(loss_gap, std::abs(ranks.evaluate().val_loss - one.evaluate().val_loss));
    CHECK(everywhere(ok));
    CHECK(worst(loss_gap) < 1e-5);
    CHECK(worst(parameter_gap(ranks, one)) < 1e-3);  // AdamW, near-zero gradients: see above
  }

  TEST_CASE("a checkpoint resumes on another number of ranks at the same data position") {
    Communicator& comm = world();
    int p = comm.size();
    auto follow = [&](Trainer& a, Trainer& b) {
      double most = 0;
      for (int i = 0; i < 2; ++i) {
        StepStats sa = a.step();
        StepStats sb = b.step();
        most = std::max(most, std::abs(sa.loss - sb.loss) / sb.loss);
        most = sa.step == sb.step ? most : std::numeric_limits<double>::infinity();
      }
      return most;
    };
    // P ranks to one process.
    Trainer ranks(tiny_config(1), tiny_data(), comm);
    for (int i = 0; i < 2; ++i) ranks.step();
    Checkpoint c = ranks.checkpoint();
    CHECK(everywhere(c.data_position == static_cast<std::uint64_t>(2 * p)));
    Trainer one(tiny_config(p), tiny_data());
    one.restore(c);
    CHECK(worst(follow(ranks, one)) < 1e-5);
    // One process to P ranks.
    Trainer alone(tiny_config(p), tiny_data());
    for (int i = 0; i < 2; ++i) alone.step();
    Trainer joined(tiny_config(1), tiny_data(), comm);
    joined.restore(alone.checkpoint());
    CHECK(worst(follow(joined, alone)) < 1e-5);
  }

  TEST_CASE("a checkpoint keeps compression's state: a resumed run continues exactly") {
    Communicator& comm = world();
    for (std::string compression : {"topk", "powersgd"}) {
      CAPTURE(compression);
      TrainConfig config = tiny_config(1);
      config.dist.compression.kind = parse_compression(compression);
      config.dist.compression.topk_ratio = 0.1;
      config.dist.compression.powersgd_rank = 1;
      config.dist.compression.powersgd_min_compression = 0;
      Trainer first(config, tiny_data(), comm);
      for (int i = 0; i < 2; ++i) first.step();
      Checkpoint saved = first.checkpoint();
      bool has_state = std::any_of(saved.optimizer.begin(), saved.optimizer.end(), [](auto& t) {
        return t.first.rfind("error_feedback.", 0) == 0 && t.second.size(0) == world().size();
      });
      CHECK(everywhere(has_state));
      Trainer resumed(config, tiny_data(), comm);
      resumed.restore(saved);
      // Bit for bit: the same residuals on the same ranks, the same Q.
      bool same = true;
      for (int i = 0; i < 3; ++i) {
        StepStats a = first.step();
        StepStats b = resumed.step();
        same = same && a.loss == b.loss && a.grad_norm == b.grad_norm;
      }
      CHECK(everywhere(same));
      CHECK(everywhere(parameter_gap(first, resumed) == 0));
      // One process has no delayed mass to apply: the state is dropped, not an error.
      Trainer alone(tiny_config(comm.size()), tiny_data());
      CHECK(everywhere(error_of([&] { alone.restore(saved); }) == "no error"));
    }
  }

  TEST_CASE("ranks whose gradients become ready in different orders all get an error") {
    Communicator& comm = world();
    Generator gen(500);
    Tensor x = randn({3}, gen);
    std::vector<Variable> w{Variable(randn({3}, gen), true), Variable(randn({3}, gen), true)};
    DataParallel dp(w, comm, {1, 25, 1});
    // The outer product's factor becomes ready first: W1 on rank 0, W0 on the others.
    bool first = comm.rank() == 0;
    sum(mul(mul(Variable(x), w[first ? 0 : 1]), w[first ? 1 : 0])).backward();
    std::string error = error_of([&] { dp.synchronize(); });
    CHECK(everywhere(contains(error, "the ranks' buckets differ")));
  }

  TEST_CASE("a rank that does not arrive makes the others' call time out with a message") {
    // A communicator of its own: after a timeout it is unusable, and it is never freed
    // (MPI may still complete the abandoned call).
    Communicator& late = *make_communicator().release();
    late.set_timeout(0.5);
    std::string error;
    // The other ranks arrive only after rank 0 gave up (the world's barrier orders it, on a
    // loaded machine too), and complete the barrier as MPI progresses rank 0's abandoned call.
    if (world().rank() == 0) {
      error = error_of([&] { late.barrier(); });
      world().barrier();
    } else {
      world().barrier();
      late.set_timeout(60);
      late.barrier();
    }
    CHECK(everywhere(world().rank() != 0 ||
                     contains(error, "barrier: rank 0 waited 0.5 s for the other ranks")));
    CHECK(everywhere(world().rank() != 0 || contains(error, "giving up")));
  }

  TEST_CASE("a NaN on one rank makes every rank skip the step, then stop together") {
    Communicator& comm = world();
    json j = to_json(tiny_config(1));
    j["train"]["max_bad_steps"] = 2;
    Trainer trainer(parse_train_config(j, "config.json"), tiny_data(), comm);
    CHECK(everywhere(!trainer.step().skipped));
    if (comm.rank() == comm.size() - 1) {
      for (const auto& [name, p] : trainer.model().named_parameters()) {
        if (name == "layer_norm.weight") fill_(p.data(), std::nan(""));
      }
    }
    StepStats s = trainer.step();
    CHECK(everywhere(s.skipped && std::isnan(s.loss)));
    std::string error = error_of([&] { trainer.step(); });
    CHECK(everywhere(contains(error, "2 steps in a row")));
  }
#endif
}

}  // namespace longnet
