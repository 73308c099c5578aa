// What the tests that run under mpirun share (test_dist.cpp, test_nccl.cpp,
// test_sequence_parallel.cpp): the world communicator of the test process, agreement
// helpers, and each rank's seeded data with the reductions every rank can compute itself.
//
// Under mpirun only rank 0 writes the results file, so every assertion goes through
// everywhere() or worst(): it then has the same outcome on every rank, and a failure on any
// rank fails rank 0's test case too.
#pragma once

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "dist/cuda/nccl.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"

namespace longnet::testing {

inline Communicator& world() {
  static std::unique_ptr<Communicator> comm = make_communicator();
  return *comm;
}

// The NCCL communicator over the world's ranks, rank r on GPU r.
// Its timeout is set, as a training run sets it, so the cases run with the watchdog on.
inline Communicator& gpus() {
  static std::unique_ptr<Communicator> comm = [] {
    auto nccl = make_nccl_communicator(make_communicator(), world().rank());
    nccl->set_timeout(300);
    return nccl;
  }();
  return *comm;
}

// NCCL takes one GPU per rank: with fewer GPUs than launched ranks (read from the
// launcher's environment, as this runs before MPI starts) the GPU cases are skipped.
inline bool too_few_gpus() {
  int ranks = 1;
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* value = std::getenv(variable)) ranks = std::atoi(value);
  }
  return cuda::device_count() < ranks;
}

inline Device my_gpu() { return Device::cuda(world().rank()); }

// Whether ok holds on every rank.
inline bool everywhere(bool ok) {
  Tensor flag = full({}, ok ? 0 : 1, {DType::i32});
  world().all_reduce(flag, ReduceOp::max);
  return flag.item() == 0;
}

// The largest of every rank's value (NaN counts as infinity).
inline double worst(double value) {
  Tensor v =
      full({}, std::isnan(value) ? std::numeric_limits<double>::infinity() : value, {DType::f64});
  world().all_reduce(v, ReduceOp::max);
  return v.item();
}

// Rank r's data for a test, on the CPU: normal draws for floating dtypes, integers in
// [-1000, 1000) otherwise.
inline Tensor data_of(int rank, DType dtype, const Shape& shape, std::uint64_t seed) {
  Generator gen(seed * 1009 + static_cast<std::uint64_t>(rank));
  if (is_floating(dtype)) return randn(shape, gen, {dtype});
  return randint(-1000, 1000, shape, gen, {dtype});
}

// The reduction over every rank's data_of, computed here in f64, with the error allowed at
// each element: the dtype's tolerance times the sum of magnitudes (0 for integers and max).
struct Expected {
  std::vector<double> value;
  std::vector<double> bound;
};

inline double reduction_tolerance(DType dtype) {
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

inline Expected reduction(ReduceOp op, DType dtype, const Shape& shape, std::uint64_t seed,
                          int size) {
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
    e.bound.push_back(reduction_tolerance(dtype) * magnitude[i] * scale);
  }
  return e;
}

// How far got (on any device) exceeds the allowed error anywhere (<= 0 when it is within).
inline double excess(const Tensor& got, const Expected& e) {
  auto g = to(got, Device::cpu()).to_vector<double>();
  if (g.size() != e.value.size()) return std::numeric_limits<double>::infinity();
  double most = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < g.size(); ++i) {
    double over = std::abs(g[i] - e.value[i]) - e.bound[i];
    most = std::isnan(over) ? std::numeric_limits<double>::infinity() : std::max(most, over);
  }
  return g.empty() ? 0 : most;
}

// Forwards every call to another communicator, counting the collectives started and the
// elements this rank hands to them.
class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend(); }
  void all_reduce(const Tensor& t, ReduceOp op) override {
    ++calls;
    elements += t.numel();
    inner_.all_reduce(t, op);
  }
  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    ++calls;
    ++async_calls;
    elements += t.numel();
    return inner_.all_reduce_async(t, op);
  }
  void all_gather(const Tensor& in, const Tensor& out) override {
    ++calls;
    elements += in.numel();
    inner_.all_gather(in, out);
  }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    ++calls;
    ++async_calls;
    elements += in.numel();
    return inner_.all_gather_async(in, out);
  }
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override {
    ++calls;
    elements += in.numel();
    inner_.reduce_scatter(in, out, op);
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    ++calls;
    ++async_calls;
    elements += in.numel();
    return inner_.reduce_scatter_async(in, out, op);
  }
  void broadcast(const Tensor& t, int root) override {
    ++calls;
    elements += t.numel();
    inner_.broadcast(t, root);
  }
  void send(const Tensor& t, int dst, int tag) override { inner_.send(t, dst, tag); }
  void recv(const Tensor& t, int src, int tag) override { inner_.recv(t, src, tag); }
  void barrier() override {
    ++calls;
    inner_.barrier();
  }

  int calls = 0;
  int async_calls = 0;
  std::int64_t elements = 0;

 private:
  Communicator& inner_;
};

}  // namespace longnet::testing
