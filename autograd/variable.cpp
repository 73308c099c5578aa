#include "autograd/variable.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"

namespace longnet {

namespace {
thread_local bool grad_mode = true;
thread_local int backward_depth = 0;  // backward() calls running on this thread

struct BackwardDepth {
  BackwardDepth() { ++backward_depth; }
  ~BackwardDepth() { --backward_depth; }
  BackwardDepth(const BackwardDepth&) = delete;
  BackwardDepth& operator=(const BackwardDepth&) = delete;
};

// A copy of the list, so that a hook may add or remove hooks.
void run_ready_hooks(const GradSlot& slot) {
  auto hooks = slot.ready_hooks;
  for (const auto& [id, hook] : hooks) hook(slot.grad);
}

// Whether t covers its whole storage, so that keeping it keeps nothing else alive.
bool whole_storage(const Tensor& t) {
  return t.offset() == 0 && t.is_contiguous() &&
         t.storage()->bytes() == static_cast<std::size_t>(t.numel()) * element_size(t.dtype());
}

// What a slot keeps as its first gradient g (converted to the slot's dtype). Backward
// functions may return views of other tensors, or one tensor for several inputs. A leaf adds
// later gradients into its own in place, and a retained gradient is the caller's to change,
// so those get storage of their own. Any other slot's gradient is only read (by its node's
// backward) and later ones are added out of place, so g is kept as it came unless it is a
// view into a larger tensor (which it would keep alive). The copy this saves was ~13% of a
// 128K-token training step on an H100.
Tensor first_gradient(const GradSlot& target, const Tensor& g) {
  if (g.dtype() != target.dtype) return to(g, target.dtype);  // already a fresh tensor
  bool shared = target.grad_fn && !target.retain_grad && whole_storage(g);
  return shared ? g : clone(g);
}

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
  impl_->slot = std::make_shared<GradSlot>();
  impl_->slot->shape = data.shape();
  impl_->slot->dtype = data.dtype();
  impl_->data = std::move(data);
  set_requires_grad(requires_grad);
}

GradSlot& Variable::slot() const { return *checked(impl_).slot; }

const Tensor& Variable::data() const { return checked(impl_).data; }
const Tensor& Variable::grad() const { return slot().grad; }
void Variable::set_grad(Tensor grad) const { slot().grad = std::move(grad); }
void Variable::zero_grad() const { slot().grad = Tensor(); }
bool Variable::requires_grad() const { return slot().requires_grad; }
void Variable::set_requires_grad(bool requires_grad) const {
  LN_CHECK(!requires_grad || is_floating(data().dtype()),
           "only floating tensors can require gradients, got ", describe(data()));
  LN_CHECK(requires_grad || slot().grad_fn == nullptr,
           "requires_grad of a non-leaf cannot be turned off; use detach()");
  slot().requires_grad = requires_grad;
}
bool Variable::is_leaf() const { return slot().grad_fn == nullptr; }
void Variable::retain_grad() const { slot().retain_grad = true; }
const std::shared_ptr<Node>& Variable::grad_fn() const { return slot().grad_fn; }

std::size_t Variable::add_grad_ready_hook(GradReadyHook hook) const {
  LN_CHECK(is_leaf() && requires_grad(),
           "add_grad_ready_hook: needs a leaf that requires grad, got ",
           is_leaf() ? "a leaf that requires none" : "a non-leaf", ": ", describe(data()));
  GradSlot& s = slot();
  s.ready_hooks.emplace_back(s.next_hook_id, std::move(hook));
  return s.next_hook_id++;
}

void Variable::remove_grad_ready_hook(std::size_t id) const {
  auto& hooks = slot().ready_hooks;
  auto it = std::find_if(hooks.begin(), hooks.end(), [&](const auto& h) { return h.first == id; });
  LN_CHECK(it != hooks.end(), "remove_grad_ready_hook: this variable has no hook with id ", id);
  hooks.erase(it);
}

Variable Variable::detach() const { return Variable(data(), false); }

Variable make_result(Tensor out, const std::vector<Variable>& inputs, const char* op,
                     std::function<std::vector<Tensor>(const Tensor&)> backward) {
  Variable result(std::move(out));
  bool needs = false;
  if (grad_mode) {
    for (const auto& v : inputs) needs = needs || (v.defined() && v.requires_grad());
  }
  if (!needs) return result;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->inputs.reserve(inputs.size());
  for (const auto& v : inputs) node->inputs.push_back(v.defined() ? v.impl_->slot : nullptr);
  node->backward = std::move(backward);
  result.slot().requires_grad = true;
  result.slot().grad_fn = std::move(node);
  return result;
}

void Variable::backward(const Tensor& grad, bool keep_graph) const {
  BackwardDepth depth;
  bool outermost = backward_depth == 1;
  GradSlot& root = slot();
  LN_CHECK(root.requires_grad, "backward() on a variable that does not require grad");
  Tensor seed = grad;
  if (!seed.defined()) {
    LN_CHECK(longnet::numel(root.shape) == 1, "backward() without a gradient needs a one-element ",
             "variable, got ", describe(data()), "; pass the output gradient");
    seed = ones(root.shape, {root.dtype, data().device()});
  }
  LN_CHECK(seed.shape() == root.shape && seed.dtype() == root.dtype, "backward(): gradient ",
           describe(seed), " does not match ", describe(data()));

  // Post-order over the non-leaf slots reachable from the root (iterative DFS), so that
  // every slot comes after all the slots computed from it once reversed. The handles keep
  // each slot alive while the nodes before it release their inputs.
  std::vector<std::shared_ptr<GradSlot>> order;
  std::unordered_set<GradSlot*> seen;
  std::vector<std::pair<std::shared_ptr<GradSlot>, std::size_t>> stack;
  if (root.grad_fn) {
    stack.emplace_back(impl_->slot, 0);
    seen.insert(&root);
  }
  while (!stack.empty()) {
    const auto& inputs = stack.back().first->grad_fn->inputs;
    std::size_t next = stack.back().second++;
    if (next < inputs.size()) {
      const std::shared_ptr<GradSlot>& child = inputs[next];
      if (child && child->grad_fn && seen.insert(child.get()).second) {
        stack.emplace_back(child, 0);
      }
    } else {
      order.push_back(stack.back().first);
      stack.pop_back();
    }
  }

  auto accumulate = [](GradSlot& target, const Tensor& g, const char* op) {
    LN_CHECK(g.shape() == target.shape, "internal: backward of ", op, " produced ", describe(g),
             " for an input of shape ", str(target.shape));
    if (!target.grad.defined()) {
      target.grad = first_gradient(target, g);
    } else if (target.grad_fn) {
      target.grad = add(target.grad, to(g, target.dtype));
    } else {
      add_(target.grad, to(g, target.dtype));
    }
  };

  if (!root.grad_fn) {
    accumulate(root, seed, "backward");
    if (outermost) run_ready_hooks(root);
    return;
  }

  // Leaves with ready hooks: how many edges from the pass's nodes still have to run.
  std::unordered_map<GradSlot*, std::int64_t> pending;
  if (outermost) {
    for (const auto& s : order) {
      for (const auto& input : s->grad_fn->inputs) {
        if (input && !input->grad_fn && input->requires_grad && !input->ready_hooks.empty()) {
          ++pending[input.get()];
        }
      }
    }
  }

  if (!root.retain_grad) root.grad = Tensor();
  accumulate(root, seed, "backward");
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    GradSlot& slot = **it;
    Node& node = *slot.grad_fn;
    LN_CHECK(!node.released, "backward through the graph of ", node.op,
             " a second time: its saved tensors were freed; pass keep_graph=true to the first "
             "backward()");
    Tensor g = slot.grad;
    if (!slot.retain_grad) slot.grad = Tensor();
    if (g.defined()) {
      std::vector<Tensor> grads = node.backward(g);
      LN_CHECK(grads.size() == node.inputs.size(), "internal: backward of ", node.op, " returned ",
               grads.size(), " gradients for ", node.inputs.size(), " inputs");
      for (std::size_t i = 0; i < grads.size(); ++i) {
        const std::shared_ptr<GradSlot>& input = node.inputs[i];
        if (input && input->requires_grad && grads[i].defined()) {
          accumulate(*input, grads[i], node.op);
        }
      }
    }
    for (const auto& input : node.inputs) {
      auto it = pending.find(input.get());
      if (it != pending.end() && --it->second == 0) run_ready_hooks(*input);
    }
    if (!g.defined()) continue;
    if (!keep_graph) {
      node.backward = nullptr;
      node.inputs.clear();
      node.released = true;
    }
  }
}

}  // namespace longnet
