// Module: a named tree of parameters and sub-modules (DESIGN.md section 3).
//
// A module class derives from Cloneable<Self> and, in its constructor, registers each
// parameter and sub-module together with the member that holds it:
//
//   class Block final : public Cloneable<Block> {
//    public:
//     Block(std::int64_t dim, Generator& gen) {
//       register_module("proj", &Block::proj_, std::make_shared<Linear>(dim, dim, gen));
//       register_parameter("gate", &Block::gate_, ones({dim}));
//     }
//     Variable forward(const Variable& x) const { return proj_->forward(x) * gate_; }
//
//    private:
//     std::shared_ptr<Linear> proj_;
//     Variable gate_;
//   };
//
// The member is the only copy of the handle; the registry keeps the name and how to reach
// the member. That is what lets clone() deep-copy every module without module-specific
// code: it copy-constructs the module, then replaces each registered member of the copy by
// a deep copy. Copying a module object by hand shares its parameters (handles, like Tensor);
// clone() is the deep copy.
//
// Names: a module's parameters and sub-modules share one namespace; a name is non-empty
// and holds no '.'. Dotted names ("layers.0.attn.q_proj.weight") list a module's own
// parameters in registration order, then each sub-module's, in registration order:
// PyTorch's order, so state_dict keys match a PyTorch model built the same way.
//
// Forward passes are const and keep no mutable state, so one module in eval mode may serve
// several threads at once; train()/eval() only flip a flag that forward passes read.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/variable.h"

namespace longnet {

// Parameter values by dotted name, in named_parameters() order.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

template <class Derived>
class Cloneable;

class Module {
 public:
  virtual ~Module() = default;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its sub-modules (leaf Variables), in the order of
  // named_parameters().
  std::vector<Variable> parameters() const;
  std::vector<std::pair<std::string, Variable>> named_parameters() const;

  // The parameters' values, sharing storage with them (clone a tensor to keep a snapshot).
  StateDict state_dict() const;
  // Copies dict's values into the parameters in place, so handles held elsewhere (an
  // optimizer's, say) stay valid. A value must have its parameter's shape and dtype; its
  // device may differ. strict: the keys must be exactly the parameter names. Every problem
  // is reported at once, naming the keys and showing expected vs given; when there is any,
  // nothing is copied.
  void load_state_dict(const StateDict& dict, bool strict = true);

  // Sets the training flag of this module and all its sub-modules.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Drops every parameter's gradient.
  void zero_grad();

  // A deep copy: parameters with fresh storage holding the same values and requires_grad
  // flags, no gradients, sub-modules cloned, the same training flag.
  virtual std::shared_ptr<Module> clone() const = 0;

 protected:
  Module() = default;
  Module(const Module&) = default;

 private:
  template <class Derived>
  friend class Cloneable;

  // How to reach a registered member inside a module object of the registering class.
  using ParameterSlot = std::function<Variable&(Module&)>;
  struct ModuleSlot {
    std::function<std::shared_ptr<Module>(Module&)> get;
    std::function<void(Module&, std::shared_ptr<Module>)> set;
  };
  struct ParameterEntry {
    std::string name;
    ParameterSlot slot;
  };
  struct ModuleEntry {
    std::string name;
    ModuleSlot slot;
  };

  void add_parameter(std::string name, ParameterSlot slot, Tensor value);
  void add_module(std::string name, ModuleSlot slot, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name) const;
  const Variable& parameter_at(std::size_t i) const;
  std::shared_ptr<Module> module_at(std::size_t i) const;
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Variable>>& out) const;
  // Replaces every registered member of copy, a copy-constructed twin of this module, by
  // a deep copy.
  void deep_copy_members(Module& copy) const;

  std::vector<ParameterEntry> parameters_;
  std::vector<ModuleEntry> modules_;
  bool training_ = true;
};

// The base of every concrete module class Derived: registration of Derived's members and
// clone(). A slot names the member: a pointer to a data member of Derived, or a callable
// taking Derived& and returning a reference to the member (for members in containers).
template <class Derived>
class Cloneable : public Module {
 public:
  std::shared_ptr<Module> clone() const override {
    auto copy = std::make_shared<Derived>(static_cast<const Derived&>(*this));
    deep_copy_members(*copy);
    return copy;
  }

 protected:
  // Stores Variable(value, requires_grad = true) in the Variable member slot names. value
  // must be floating; name must be new.
  template <class Slot>
  void register_parameter(std::string name, Slot slot, Tensor value) {
    add_parameter(
        std::move(name),
        [slot](Module& m) -> Variable& { return std::invoke(slot, static_cast<Derived&>(m)); },
        std::move(value));
  }

  // Stores module (not null) in the std::shared_ptr<M> member slot names.
  template <class Slot, class M>
  void register_module(std::string name, Slot slot, std::shared_ptr<M> module) {
    using Member = std::remove_cvref_t<std::invoke_result_t<Slot, Derived&>>;
    using Element = typename Member::element_type;
    ModuleSlot erased{[slot](Module& m) -> std::shared_ptr<Module> {
                        return std::invoke(slot, static_cast<Derived&>(m));
                      },
                      [slot](Module& m, std::shared_ptr<Module> value) {
                        auto typed = std::dynamic_pointer_cast<Element>(std::move(value));
                        // A class that derives from a concrete module without its own Cloneable
                        // base clones as that base; refuse rather than store a sliced copy.
                        LN_CHECK(typed != nullptr,
                                 "clone() returned a module of another class; derive ",
                                 "every module class from Cloneable<itself>");
                        std::invoke(slot, static_cast<Derived&>(m)) = std::move(typed);
                      }};
    add_module(std::move(name), std::move(erased), std::move(module));
  }
};

}  // namespace longnet
