#include "dist/single_process.h"

#include <limits>

#include "dist/arguments.h"
#include "tensor/copy.h"
#include "tensor/view.h"

namespace longnet {
namespace {

// What the *_async calls return: the collective finished when it started.
class FinishedWork final : public Work {
 public:
  bool test() override { return true; }
  void wait() override {}
};

}  // namespace

void SingleProcessCommunicator::all_reduce(const Tensor& t, ReduceOp op) {
  check_all_reduce(t, op);
}

std::unique_ptr<Work> SingleProcessCommunicator::all_reduce_async(const Tensor& t, ReduceOp op) {
  all_reduce(t, op);
  return std::make_unique<FinishedWork>();
}

void SingleProcessCommunicator::all_gather(const Tensor& in, const Tensor& out) {
  check_all_gather(in, out, 0, 1);
  if (!is_own_slot(in, out, 0)) copy_(reshape(out, in.shape()), in);
}

std::unique_ptr<Work> SingleProcessCommunicator::all_gather_async(const Tensor& in,
                                                                  const Tensor& out) {
  all_gather(in, out);
  return std::make_unique<FinishedWork>();
}

void SingleProcessCommunicator::reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) {
  check_reduce_scatter(in, out, op, 1);
  copy_(out, reshape(in, out.shape()));
}

std::unique_ptr<Work> SingleProcessCommunicator::reduce_scatter_async(const Tensor& in,
                                                                      const Tensor& out,
                                                                      ReduceOp op) {
  reduce_scatter(in, out, op);
  return std::make_unique<FinishedWork>();
}

void SingleProcessCommunicator::broadcast(const Tensor& t, int root) {
  check_broadcast(t, root, 1);
}

void SingleProcessCommunicator::send(const Tensor& t, int dst, int tag) {
  check_point_to_point(t, dst, tag, std::numeric_limits<int>::max(), 0, 1, "send");
}

void SingleProcessCommunicator::recv(const Tensor& t, int src, int tag) {
  check_point_to_point(t, src, tag, std::numeric_limits<int>::max(), 0, 1, "recv");
}

}  // namespace longnet
