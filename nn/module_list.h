// ModuleList: a numbered sequence of sub-modules of one class M, registered as "0", "1",
// ... so that their parameters are named "layers.0.attn.q_proj.weight" when the list is
// registered as "layers" (PyTorch's nn.ModuleList naming).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace longnet {

template <class M>
class ModuleList final : public Cloneable<ModuleList<M>> {
 public:
  ModuleList() = default;

  // Appends module (not null) under the name of its position.
  void push_back(std::shared_ptr<M> module) {
    LN_CHECK(module != nullptr, "ModuleList::push_back: the module is null");
    std::size_t i = items_.size();
    items_.emplace_back();
    this->register_module(
        std::to_string(i), [i](ModuleList& list) -> std::shared_ptr<M>& { return list.items_[i]; },
        std::move(module));
  }

  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  // Position i; out of range is an error.
  const std::shared_ptr<M>& at(std::size_t i) const {
    LN_CHECK(i < items_.size(), "ModuleList::at(", i, ") on a list of ", items_.size());
    return items_[i];
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<M>> items_;
};

}  // namespace longnet
