#include "nn/module.h"

#include <unordered_map>

#include "tensor/copy.h"

namespace longnet {

void Module::check_new_name(const std::string& name) const {
  LN_CHECK(!name.empty() && name.find('.') == std::string::npos, "module member name \"", name,
           "\" must be non-empty and hold no '.'");
  for (const auto& p : parameters_) {
    LN_CHECK(p.name != name, "a parameter named \"", name, "\" is already registered");
  }
  for (const auto& m : modules_) {
    LN_CHECK(m.name != name, "a sub-module named \"", name, "\" is already registered");
  }
}

void Module::add_parameter(std::string name, ParameterSlot slot, Tensor value) {
  check_new_name(name);
  check_defined(value, "register_parameter");
  slot(*this) = Variable(std::move(value), true);
  parameters_.push_back({std::move(name), std::move(slot)});
}

void Module::add_module(std::string name, ModuleSlot slot, std::shared_ptr<Module> module) {
  check_new_name(name);
  LN_CHECK(module != nullptr, "register_module(\"", name, "\"): the module is null");
  slot.set(*this, std::move(module));
  modules_.push_back({std::move(name), std::move(slot)});
}

// Slots are only read here. They take a non-const module because clone writes through
// the same slots; reading never modifies the module.
const Variable& Module::parameter_at(std::size_t i) const {
  return parameters_[i].slot(const_cast<Module&>(*this));
}
std::shared_ptr<Module> Module::module_at(std::size_t i) const {
  return modules_[i].slot.get(const_cast<Module&>(*this));
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, Variable>>& out) const {
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    out.emplace_back(prefix + parameters_[i].name, parameter_at(i));
  }
  for (std::size_t i = 0; i < modules_.size(); ++i) {
    module_at(i)->collect(prefix + modules_[i].name + ".", out);
  }
}

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out;
  collect("", out);
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [name, p] : named_parameters()) out.push_back(std::move(p));
  return out;
}

StateDict Module::state_dict() const {
  StateDict out;
  for (const auto& [name, p] : named_parameters()) out.emplace_back(name, p.data());
  return out;
}

void Module::load_state_dict(const StateDict& dict, bool strict) {
  std::unordered_map<std::string, const Tensor*> given;
  std::string problems;
  for (const auto& [key, value] : dict) {
    if (!given.emplace(key, &value).second) problems += cat("\n  \"", key, "\": given twice");
  }
  std::vector<std::pair<Variable, const Tensor*>> loads;
  std::string missing;
  for (const auto& [key, p] : named_parameters()) {
    auto it = given.find(key);
    if (it == given.end()) {
      missing += cat(" \"", key, "\"");
      continue;
    }
    const Tensor& value = *it->second;
    if (!value.defined() || value.shape() != p.shape() || value.dtype() != p.dtype()) {
      problems += cat("\n  \"", key, "\": expected ", name(p.dtype()), str(p.shape()), ", given ",
                      value.defined() ? cat(name(value.dtype()), str(value.shape()))
                                      : std::string("an undefined tensor"));
    }
    loads.emplace_back(p, &value);
    given.erase(it);
  }
  if (strict) {
    if (!missing.empty()) problems += cat("\n  missing keys:", missing);
    if (!given.empty()) {
      // In the dict's order, so that the message is stable.
      std::string unexpected;
      for (const auto& [key, value] : dict) {
        if (given.count(key) != 0) unexpected += cat(" \"", key, "\"");
      }
      problems += cat("\n  unexpected keys:", unexpected);
    }
  }
  LN_CHECK(problems.empty(), "load_state_dict", strict ? " (strict)" : "",
           ": nothing was loaded:", problems);
  for (const auto& [p, value] : loads) copy_(p.data(), contiguous(*value));
}

void Module::train(bool on) {
  training_ = on;
  for (std::size_t i = 0; i < modules_.size(); ++i) module_at(i)->train(on);
}

void Module::zero_grad() {
  for (const auto& p : parameters()) p.zero_grad();
}

void Module::deep_copy_members(Module& copy) const {
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const Variable& p = parameter_at(i);
    copy.parameters_[i].slot(copy) = Variable(longnet::clone(p.data()), p.requires_grad());
  }
  for (std::size_t i = 0; i < modules_.size(); ++i) {
    copy.modules_[i].slot.set(copy, module_at(i)->clone());
  }
}

}  // namespace longnet
