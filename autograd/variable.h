// Variable: a Tensor plus, when it takes part in differentiation, a gradient and the graph
// node that produced it. Copying a Variable copies the handle (like Tensor).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "tensor/tensor.h"

namespace longnet {

struct GradSlot;
struct Node;
struct VariableImpl;

// Called when a backward pass has added everything it will add to a leaf's gradient; grad
// is the leaf's gradient then (earlier passes' accumulation included; undefined when no
// pass gave it one).
using GradReadyHook = std::function<void(const Tensor& grad)>;

class Variable {
 public:
  Variable() = default;
  // A leaf. requires_grad makes backward() accumulate into grad(); data must be floating.
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const;
  // The accumulated gradient of a leaf (undefined until a backward reaches it).
  const Tensor& grad() const;
  void set_grad(Tensor grad) const;
  void zero_grad() const;  // drops the gradient
  bool requires_grad() const;
  void set_requires_grad(bool requires_grad) const;
  bool is_leaf() const;
  // Keep the gradient of this non-leaf after backward (for inspection and tests).
  void retain_grad() const;
  const std::shared_ptr<Node>& grad_fn() const;

  // Gradient-ready hooks of a leaf that requires grad (data parallel starts reducing a
  // gradient from one). In each backward() that reaches the leaf, its hooks run once, in
  // the order they were added, right after the last node feeding the leaf has run (even
  // if none produced a gradient for it), so leaves' hooks run in the order their gradients
  // become final. Backward passes nested in a node's backward function (recomputation)
  // run none: the outer pass runs them after that node. Returns an id for removal.
  std::size_t add_grad_ready_hook(GradReadyHook hook) const;
  void remove_grad_ready_hook(std::size_t id) const;  // an unknown id is an error

  const Shape& shape() const { return data().shape(); }
  std::int64_t dim() const { return data().dim(); }
  std::int64_t size(std::int64_t d) const { return data().size(d); }
  std::int64_t numel() const { return data().numel(); }
  DType dtype() const { return data().dtype(); }
  Device device() const { return data().device(); }

  // Reverse-mode pass from this variable. grad defaults to 1 for a one-element variable.
  // The graph's saved tensors are freed afterwards unless keep_graph.
  void backward(const Tensor& grad = {}, bool keep_graph = false) const;

  // Same data, cut from the graph, requires no gradient.
  Variable detach() const;

  VariableImpl* impl() const { return impl_.get(); }

 private:
  GradSlot& slot() const;
  friend Variable make_result(Tensor, const std::vector<Variable>&, const char*,
                              std::function<std::vector<Tensor>(const Tensor&)>);
  std::shared_ptr<VariableImpl> impl_;
};

// What differentiation needs of a variable: its gradient, the node that produced it, and
// the shape and dtype of its data. The graph holds these, never the data itself, so an
// intermediate result is freed as soon as no Variable and no backward function (which keeps
// exactly the tensors it needs) holds it.
struct GradSlot {
  Tensor grad;
  bool requires_grad = false;
  bool retain_grad = false;
  std::shared_ptr<Node> grad_fn;
  Shape shape;
  DType dtype = DType::f32;
  std::vector<std::pair<std::size_t, GradReadyHook>> ready_hooks;  // (id, hook)
  std::size_t next_hook_id = 0;
};

// One recorded op: its inputs' slots (null for undefined inputs) and the function from the
// output's gradient to one gradient per input (undefined where an input needs none).
struct Node {
  const char* op = "";
  std::vector<std::shared_ptr<GradSlot>> inputs;
  std::function<std::vector<Tensor>(const Tensor&)> backward;
  bool released = false;
};

struct VariableImpl {
  Tensor data;
  std::shared_ptr<GradSlot> slot;
};

// Wraps an op's output: records a node when grad mode is on and an input requires grad.
Variable make_result(Tensor out, const std::vector<Variable>& inputs, const char* op,
                     std::function<std::vector<Tensor>(const Tensor&)> backward);

// Gradient recording is on by default, per thread. While a NoGradGuard lives, ops record
// nothing (evaluation, sampling, optimizer updates); a GradModeGuard sets recording on or
// off for its lifetime (activation recomputation records inside a backward pass).
bool grad_enabled();
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

}  // namespace longnet
