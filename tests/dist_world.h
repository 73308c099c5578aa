// What the tests that run under mpirun share: the world communicator of the test process,
// and agreement helpers. Under mpirun only rank 0 writes the results file, so every
// assertion goes through everywhere() or worst(): it then has the same outcome on every
// rank, and a failure on any rank fails rank 0's test case too.
#pragma once

#include <cmath>
#include <limits>
#include <memory>

#include "dist/communicator.h"
#include "tensor/creation.h"

namespace longnet::testing {

inline Communicator& world() {
  static std::unique_ptr<Communicator> comm = make_communicator();
  return *comm;
}

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

}  // namespace longnet::testing
