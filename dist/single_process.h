// The communicator of a run without an MPI launcher: rank 0 of 1. Every collective is the
// identity (all_gather and reduce_scatter copy between their [1, ...] and [...] layouts),
// and the *_async calls finish before they return. Arguments are checked as every backend
// checks them, so a call that is wrong here is wrong under mpirun too. send and recv have
// no peer and always fail. Tensors may live on any device.
#pragma once

#include "dist/communicator.h"

namespace longnet {

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single-process"; }

  void all_reduce(const Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override;
  void all_gather(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override;
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override;
  void broadcast(const Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag) override;
  void recv(const Tensor& t, int src, int tag) override;
  void barrier() override {}
};

}  // namespace longnet
