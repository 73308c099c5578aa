#include "autograd/variable.h"

#include <unordered_set>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"

namespace longnet {

namespace {
thread_local bool grad_mode = true;

VariableImpl& checked(const std::shared_ptr<VariableImpl>& impl) {
  LN_CHECK(impl != nullptr, "use of an undefined Variable");
  return *impl;
}
}  // namespace

bool grad_enabled() { return grad_mode; }
GradModeGuard::GradModeGuard(bool enabled) : previous_(grad_mode) { grad_mode = enabled; }
GradModeGuard::~GradModeGuard() { grad_mode = previous_; }

Variable::Variable(Tensor data, bool requires_grad) : impl_(std::make_shared<VariableImpl>()) {
  check_defined(data, "Variable");
  impl_->data = std::move(data);
  set_requires_grad(requires_grad);
}

const Tensor& Variable::data() const { return checked(impl_).data; }
const Tensor& Variable::grad() const { return checked(impl_).grad; }
void Variable::set_grad(Tensor grad) const { checked(impl_).grad = std::move(grad); }
void Variable::zero_grad() const { checked(impl_).grad = Tensor(); }
bool Variable::requires_grad() const { return checked(impl_).requires_grad; }
void Variable::set_requires_grad(bool requires_grad) const {
  auto& impl = checked(impl_);
  LN_CHECK(!requires_grad || is_floating(impl.data.dtype()),
           "only floating tensors can require gradients, got ", describe(impl.data));
  LN_CHECK(requires_grad || impl.grad_fn == nullptr,
           "requires_grad of a non-leaf cannot be turned off; use detach()");
  impl.requires_grad = requires_grad;
}
bool Variable::is_leaf() const { return checked(impl_).grad_fn == nullptr; }
void Variable::retain_grad() const { checked(impl_).retain_grad = true; }
const std::shared_ptr<Node>& Variable::grad_fn() const { return checked(impl_).grad_fn; }

Variable Variable::detach() const { return Variable(data(), false); }

Variable make_result(Tensor out, std::vector<Variable> inputs, const char* op,
                     std::function<std::vector<Tensor>(const Tensor&)> backward) {
  Variable result(std::move(out));
  bool needs = false;
  if (grad_mode) {
    for (const auto& v : inputs) needs = needs || (v.defined() && v.requires_grad());
  }
  if (!needs) return result;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->inputs = std::move(inputs);
  node->backward = std::move(backward);
  result.impl_->requires_grad = true;
  result.impl_->grad_fn = std::move(node);
  return result;
}

void Variable::backward(const Tensor& grad, bool keep_graph) const {
  auto& root = checked(impl_);
  LN_CHECK(root.requires_grad, "backward() on a variable that does not require grad");
  Tensor seed = grad;
  if (!seed.defined()) {
    LN_CHECK(root.data.numel() == 1, "backward() without a gradient needs a one-element ",
             "variable, got ", describe(root.data), "; pass the output gradient");
    seed = ones(root.data.shape(), {root.data.dtype(), root.data.device()});
  }
  LN_CHECK(seed.shape() == root.data.shape() && seed.dtype() == root.data.dtype(),
           "backward(): gradient ", describe(seed), " does not match ", describe(root.data));

  // Post-order over the non-leaf variables reachable from the root (iterative DFS), so
  // that every variable comes after all the variables computed from it once reversed.
  // The handles keep each variable alive while the nodes before it release their inputs.
  std::vector<Variable> order;
  std::unordered_set<VariableImpl*> seen;
  std::vector<std::pair<Variable, std::size_t>> stack;
  if (root.grad_fn) {
    stack.emplace_back(*this, 0);
    seen.insert(&root);
  }
  while (!stack.empty()) {
    const auto& inputs = stack.back().first.grad_fn()->inputs;
    std::size_t next = stack.back().second++;
    if (next < inputs.size()) {
      const Variable& child = inputs[next];
      if (child.defined() && child.grad_fn() && seen.insert(child.impl()).second) {
        stack.emplace_back(child, 0);
      }
    } else {
      order.push_back(stack.back().first);
      stack.pop_back();
    }
  }

  auto accumulate = [](VariableImpl& target, const Tensor& g, const char* op) {
    LN_CHECK(g.shape() == target.data.shape(), "internal: backward of ", op, " produced ",
             describe(g), " for an input ", describe(target.data));
    if (!target.grad.defined()) {
      // A fresh copy: gradients returned by backward functions may be views of others.
      target.grad = clone(to(g, target.data.dtype()));
    } else if (target.grad_fn) {
      target.grad = add(target.grad, to(g, target.data.dtype()));
    } else {
      add_(target.grad, to(g, target.data.dtype()));
    }
  };

  if (!root.grad_fn) {
    accumulate(root, seed, "backward");
    return;
  }
  if (!root.retain_grad) root.grad = Tensor();
  accumulate(root, seed, "backward");
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    VariableImpl& impl = *it->impl();
    Node& node = *impl.grad_fn;
    LN_CHECK(!node.released, "backward through the graph of ", node.op,
             " a second time: its saved tensors were freed; pass keep_graph=true to the first "
             "backward()");
    Tensor g = impl.grad;
    if (!impl.retain_grad) impl.grad = Tensor();
    if (!g.defined()) continue;
    std::vector<Tensor> grads = node.backward(g);
    LN_CHECK(grads.size() == node.inputs.size(), "internal: backward of ", node.op, " returned ",
             grads.size(), " gradients for ", node.inputs.size(), " inputs");
    for (std::size_t i = 0; i < grads.size(); ++i) {
      const Variable& input = node.inputs[i];
      if (input.defined() && input.requires_grad() && grads[i].defined()) {
        accumulate(*input.impl(), grads[i], node.op);
      }
    }
    if (!keep_graph) {
      node.backward = nullptr;
      node.inputs.clear();
      node.released = true;
    }
  }
}

}  // namespace longnet
