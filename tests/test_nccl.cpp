// The NCCL communicator (dist/cuda/nccl.h) on GPU tensors, against values every rank
// computes on the CPU from the same seeds. Built into test-dist (one rank) and test-dist-mpi
// (mpirun -np 2 and 3; rank r uses GPU r). The "gpu" suite: skipped on machines without a
// CUDA device, and where there are fewer GPUs than ranks.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>

#include "dist/cuda/nccl.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/matmul.h"
#include "tensor/view.h"
#include "tests/dist_world.h"
#include "tests/error_of.h"
#include "tests/gpu_check.h"
#include "tests/process.h"
#include "tests/temp_dir.h"

namespace longnet {
namespace {

using testing::contains;
using testing::data_of;
using testing::error_of;
using testing::everywhere;
using testing::excess;
using testing::gpus;
using testing::my_gpu;
using testing::reduction;
using testing::relative_error;
using testing::too_few_gpus;
using testing::world;
using testing::worst;

// The stall case below runs the "(child)" case under an mpirun of its own, which it
// starts with LONGNET_TEST_STALL set.
bool stall_child() { return std::getenv("LONGNET_TEST_STALL") != nullptr; }

bool stall_skipped() {
#ifdef LONGNET_TEST_MPIRUN
  return true;
#else
  return stall_child() || cuda::device_count() < 2 || testing::mpirun_path().empty() ||
         std::getenv("LONGNET_DIST_MPI_TOOL") == nullptr;
#endif
}

// Rank r's part of a [ranks, ...] tensor.
Tensor slot(const Tensor& t, std::int64_t dim, std::int64_t r) {
  return squeeze(narrow(t, dim, r, 1), dim);
}

TEST_SUITE("gpu") {
  TEST_CASE("nccl all_reduce, sync and async, every dtype and op, against the CPU" *
            doctest::skip(too_few_gpus())) {
    Communicator& comm = gpus();
    CHECK(comm.backend().rfind("nccl+", 0) == 0);
    Shape shape{3, 37};
    std::uint64_t seed = 1;
    for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        if (op == ReduceOp::avg && !is_floating(dtype)) continue;
        CAPTURE(dtype);
        CAPTURE(op);
        ++seed;
        auto want = reduction(op, dtype, shape, seed, comm.size());
        Tensor t = to(data_of(comm.rank(), dtype, shape, seed), my_gpu());
        comm.all_reduce(t, op);
        CHECK(worst(excess(t, want)) <= 0);
        Tensor u = to(data_of(comm.rank(), dtype, shape, seed), my_gpu());
        auto work = comm.all_reduce_async(u, op);
        work->wait();
        CHECK(worst(excess(u, want)) <= 0);
      }
    }
  }

  TEST_CASE("nccl all_gather (in place too), reduce_scatter (sync and async) and broadcast" *
            doctest::skip(too_few_gpus())) {
    Communicator& comm = gpus();
    int p = comm.size();
    Shape piece{5, 3};
    Tensor out = testing::poisoned({p, 5, 3}, {DType::f32, my_gpu()});
    comm.all_gather(to(data_of(comm.rank(), DType::f32, piece, 40), my_gpu()), out);
    double error = 0;
    for (int r = 0; r < p; ++r) {
      error = std::max(error, relative_error(slot(out, 0, r), data_of(r, DType::f32, piece, 40)));
    }
    CHECK(worst(error) == 0);

    Tensor in_place = testing::poisoned({p, 5, 3}, {DType::bf16, my_gpu()});
    copy_(slot(in_place, 0, comm.rank()),
          to(data_of(comm.rank(), DType::bf16, piece, 41), my_gpu()));
    comm.all_gather(slot(in_place, 0, comm.rank()), in_place);
    error = 0;
    for (int r = 0; r < p; ++r) {
      error =
          std::max(error, relative_error(slot(in_place, 0, r), data_of(r, DType::bf16, piece, 41)));
    }
    CHECK(worst(error) == 0);

    Tensor scattered = testing::poisoned(piece, {DType::f32, my_gpu()});
    comm.reduce_scatter(to(data_of(comm.rank(), DType::f32, {p, 5, 3}, 42), my_gpu()), scattered,
                        ReduceOp::sum);
    auto whole = reduction(ReduceOp::sum, DType::f32, {p, 5, 3}, 42, p);
    auto begin = static_cast<std::ptrdiff_t>(comm.rank() * 15);
    testing::Expected mine{{whole.value.begin() + begin, whole.value.begin() + begin + 15},
                           {whole.bound.begin() + begin, whole.bound.begin() + begin + 15}};
    CHECK(worst(excess(scattered, mine)) <= 0);

    // Started with a temporary input (the work keeps it), bf16 through f32, while the
    // allocator hands out memory again.
    Tensor scattered_bf16 = testing::poisoned(piece, {DType::bf16, my_gpu()});
    auto work =
        comm.reduce_scatter_async(to(data_of(comm.rank(), DType::bf16, {p, 5, 3}, 44), my_gpu()),
                                  scattered_bf16, ReduceOp::avg);
    Tensor reuse = full({p, 5, 3}, 7, {DType::bf16, my_gpu()});
    work->wait();
    auto whole_bf16 = reduction(ReduceOp::avg, DType::bf16, {p, 5, 3}, 44, p);
    testing::Expected mine_bf16{
        {whole_bf16.value.begin() + begin, whole_bf16.value.begin() + begin + 15},
        {whole_bf16.bound.begin() + begin, whole_bf16.bound.begin() + begin + 15}};
    CHECK(worst(excess(scattered_bf16, mine_bf16)) <= 0);

    Tensor b = to(data_of(comm.rank(), DType::i64, piece, 43), my_gpu());
    comm.broadcast(b, p - 1);
    CHECK(worst(relative_error(b, data_of(p - 1, DType::i64, piece, 43))) == 0);
  }

  TEST_CASE("nccl send and recv pass a ring" * doctest::skip(too_few_gpus())) {
    Communicator& comm = gpus();
    int p = comm.size();
    if (p < 2) return;
    int next = (comm.rank() + 1) % p;
    int previous = (comm.rank() + p - 1) % p;
    Tensor mine = to(data_of(comm.rank(), DType::f32, {64}, 50), my_gpu());
    Tensor got = testing::poisoned({64}, {DType::f32, my_gpu()});
    // Even ranks send first, odd ranks receive first: no cycle of waiting sends.
    if (comm.rank() % 2 == 0) {
      comm.send(mine, next, 0);
      comm.recv(got, previous, 0);
    } else {
      comm.recv(got, previous, 0);
      comm.send(mine, next, 0);
    }
    CHECK(worst(relative_error(got, data_of(previous, DType::f32, {64}, 50))) == 0);
  }

  // Rank 1's all_reduce waits behind about 15 s of GPU work; rank 0's starts at once and
  // cannot finish, so its watchdog must end it after the 3 s timeout. The host calls on both
  // ranks return at once (NCCL's work is stream-ordered; the timeout leaves the hosts' argument
  // agreement seconds to spare), and then both block in the copy.
  TEST_CASE("(child) a stalled all_reduce" * doctest::skip(!stall_child())) {
    Communicator& comm = gpus();
    Tensor t = full({1024}, 1, {DType::f32, my_gpu()});
    comm.all_reduce(t, ReduceOp::sum);  // NCCL connects before the timeout gets short
    // A few large products, not many small ones: the host must not block on a full launch
    // queue before it reaches the all_reduce.
    Tensor a = full({16384, 16384}, 1e-4, {DType::f32, my_gpu()});
    Tensor product = matmul(a, a);
    cuda::synchronize(my_gpu().index);
    auto start = std::chrono::steady_clock::now();
    product = matmul(a, product);
    cuda::synchronize(my_gpu().index);
    double once = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    comm.set_timeout(3);
    if (comm.rank() == 1) {
      for (double queued = 0; queued < 15; queued += once) product = matmul(a, product);
    }
    comm.all_reduce(t, ReduceOp::sum);
    Tensor result = to(t, Device::cpu());
    MESSAGE("rank ", comm.rank(), ": the stalled all_reduce finished with ",
            result.to_vector<float>()[0]);
  }

  TEST_CASE("an NCCL operation that outlives the timeout ends its rank with a message" *
            doctest::skip(stall_skipped())) {
    testing::TempDir dir;
    std::string log = dir.file("stall.txt");
    // The child's cases must not write this run's results file.
    std::string results =
        std::getenv("LONGNET_TEST_RESULTS") != nullptr ? std::getenv("LONGNET_TEST_RESULTS") : "";
    unsetenv("LONGNET_TEST_RESULTS");
    setenv("LONGNET_TEST_STALL", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    auto start = std::chrono::steady_clock::now();
    int code = testing::run(testing::mpirun_path(),
                            {"-np", "2", std::getenv("LONGNET_DIST_MPI_TOOL"), "--no-colors",
                             "-ts=gpu", "-tc=(child)*"},
                            log);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    unsetenv("LONGNET_TEST_STALL");
    if (!results.empty()) setenv("LONGNET_TEST_RESULTS", results.c_str(), 1);
    std::string text = testing::read_text(log);
    CAPTURE(text);
    CHECK(code != 0);
    CHECK(contains(text, "longnet: rank 0: NCCL all_reduce f32"));
    CHECK(contains(text, "without finishing, longer than the communicator's timeout"));
    CHECK(!contains(text, "the stalled all_reduce finished"));
    CHECK(seconds < 120);
  }

  TEST_CASE("nccl: mismatched shapes are an error on every rank, CPU tensors go to the host" *
            doctest::skip(too_few_gpus())) {
    Communicator& comm = gpus();
    Tensor t = zeros({comm.rank() == 0 ? 4 : 5}, {DType::f32, my_gpu()});
    std::string error = error_of([&] { comm.all_reduce(t, ReduceOp::sum); });
    if (comm.size() > 1) {
      CHECK(everywhere(contains(error, "all_reduce: rank")));
      CHECK(everywhere(contains(error, "so no rank ran it")));
    }
    Tensor host = full({3}, comm.rank() + 1, {DType::f64});
    comm.all_reduce(host, ReduceOp::sum);
    CHECK(everywhere(host.to_vector<double>() ==
                     std::vector<double>(3, comm.size() * (comm.size() + 1) / 2.0)));
  }
}

}  // namespace
}  // namespace longnet
