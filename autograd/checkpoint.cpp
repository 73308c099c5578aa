#include "autograd/checkpoint.h"

namespace longnet {

Variable checkpoint(const std::function<Variable(const Variable&, Generator&)>& f,
                    const Variable& x, Generator& gen, const std::vector<Variable>& params) {
  Generator replay = gen;
  Tensor y;
  {
    NoGradGuard no_grad;
    y = f(x, gen).data();
  }
  std::vector<Variable> inputs{x};
  inputs.insert(inputs.end(), params.begin(), params.end());
  const Tensor& saved = x.data();
  bool x_grad = x.requires_grad();
  std::size_t count = inputs.size();
  return make_result(y, std::move(inputs), "checkpoint",
                     [=](const Tensor& g) -> std::vector<Tensor> {
                       GradModeGuard recording(true);
                       Generator same = replay;
                       Variable leaf(saved, x_grad);
                       Variable again = f(leaf, same);
                       std::vector<Tensor> grads(count);
                       if (again.requires_grad()) again.backward(g);
                       if (x_grad) grads[0] = leaf.grad();
                       return grads;
                     });
}

}  // namespace longnet
