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

#include "dist/communicator.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "tests/error_of.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;

const std::vector<DType> kDTypes{DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};
const std::vector<ReduceOp> kOps{ReduceOp::sum, ReduceOp::avg, ReduceOp::max};

Communicator& world() {
  static std::unique_ptr<Communicator> comm = make_communicator();
  return *comm;
}

// Whether ok holds on every rank.
bool everywhere(bool ok) {
  Tensor flag = full({}, ok ? 0 : 1, {DType::i32});
  world().all_reduce(flag, ReduceOp::max);
  return flag.item() == 0;
}

// Rank r's data for a test: normal draws for floating dtypes, integers in [-1000, 1000)
// otherwise.
Tensor data_of(int rank, DType dtype, const Shape& shape, std::uint64_t seed) {
  Generator gen(seed * 1009 + static_cast<std::uint64_t>(rank));
  if (is_floating(dtype)) return randn(shape, gen, {dtype});
  return randint(-1000, 1000, shape, gen, {dtype});
}

bool same_values(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         a.to_vector<double>() == b.to_vector<double>();
}

#ifdef LONGNET_TEST_MPIRUN
// The largest of every rank's value (NaN counts as infinity).
double worst(double value) {
  Tensor v =
      full({}, std::isnan(value) ? std::numeric_limits<double>::infinity() : value, {DType::f64});
  world().all_reduce(v, ReduceOp::max);
  return v.item();
}

// The reduction over every rank's data_of, computed here in f64, with the error allowed at
// each element: the dtype's tolerance times the sum of magnitudes (0 for integers and max).
struct Expected {
  std::vector<double> value;
  std::vector<double> bound;
};

double tolerance(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return 1e-14;
    case DType::f32:
      return 1e-6;
    case DType::bf16:
      return 1.0 / 256;  // one rounding of the f32 result to bf16 (the sum is below 2^-9)
    default:
      return 0;
  }
}

Expected reduction(ReduceOp op, DType dtype, const Shape& shape, std::uint64_t seed, int size) {
  auto n = static_cast<std::size_t>(numel(shape));
  std::vector<double> sum(n, 0.0);
  std::vector<double> magnitude(n, 0.0);
  std::vector<double> max(n, -std::numeric_limits<double>::infinity());
  for (int r = 0; r < size; ++r) {
    auto x = data_of(r, dtype, shape, seed).to_vector<double>();
    for (std::size_t i = 0; i < n; ++i) {
      sum[i] += x[i];
      magnitude[i] += std::abs(x[i]);
      max[i] = std::max(max[i], x[i]);
    }
  }
  Expected e;
  if (op == ReduceOp::max) return {max, std::vector<double>(n, 0.0)};
  double scale = op == ReduceOp::avg ? 1.0 / size : 1.0;
  for (std::size_t i = 0; i < n; ++i) {
    e.value.push_back(sum[i] * scale);
    e.bound.push_back(tolerance(dtype) * magnitude[i] * scale);
  }
  return e;
}

// How far got exceeds the allowed error anywhere (<= 0 when it is within).
double excess(const Tensor& got, const Expected& e) {
  auto g = got.to_vector<double>();
  if (g.size() != e.value.size()) return std::numeric_limits<double>::infinity();
  double most = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < g.size(); ++i) {
    double over = std::abs(g[i] - e.value[i]) - e.bound[i];
    most = std::isnan(over) ? std::numeric_limits<double>::infinity() : std::max(most, over);
  }
  return g.empty() ? 0 : most;
}
#endif

}  // namespace

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

  TEST_CASE("ranks that disagree on dtype, shape, op or root all get an error naming each") {
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
    CHECK(everywhere(contains(root, "rank 0 has f32[3] root 0, rank 1 has f32[3] root 1") &&
                     contains(root, "every rank must pass the same dtype, shape and root")));
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
}

}  // namespace longnet
