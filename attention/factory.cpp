#include "attention/factory.h"

#include <cmath>

namespace longnet {

void DenseAttentionConfig::validate() const {
  if (scale) {
    LN_CHECK(std::isfinite(*scale) && *scale > 0, "scale is ", *scale,
             "; valid: a finite number > 0 (default 1/sqrt(head dim))");
  }
}

const char* kind_name(const AttentionConfig& config) {
  static constexpr const char* kNames[] = {"dense", "dilated", "block_sparse", "auto"};
  return kNames[config.index()];
}

void validate(const AttentionConfig& config) {
  std::visit([](const auto& c) { c.validate(); }, config);
}

bool is_causal(const AttentionConfig& config) {
  return std::visit(
      [](const auto& c) {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, AutoAttentionConfig>) {
          return c.dilated.causal;
        } else {
          return c.causal;
        }
      },
      config);
}

namespace {

class DenseKernel final : public Attention {
 public:
  explicit DenseKernel(DenseAttentionConfig c) : c_(c) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return dense_attention(q, k, v, c_.causal, c_.scale);
  }
  std::string describe() const override { return "dense (cpu kernel)"; }

 private:
  DenseAttentionConfig c_;
};

class DilatedKernel final : public Attention {
 public:
  DilatedKernel(DilatedAttentionConfig c, bool chosen_by_auto)
      : c_(std::move(c)), auto_(chosen_by_auto) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return dilated_attention(q, k, v, c_);
  }
  std::string describe() const override {
    return cat(auto_ ? "auto: " : "", "dilated attention, ",
               c_.mode == DilatedMode::paper ? "paper" : "grouped", " mode (cpu kernel)");
  }

 private:
  DilatedAttentionConfig c_;
  bool auto_;
};

class BlockSparseKernel final : public Attention {
 public:
  explicit BlockSparseKernel(BlockSparseConfig c) : c_(c) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return block_sparse_attention(q, k, v, c_);
  }
  std::string describe() const override {
    return cat("block_sparse: ", name(c_.pattern), ", density ", c_.density, " (cpu kernel)");
  }

 private:
  BlockSparseConfig c_;
};

}  // namespace

std::shared_ptr<const Attention> make_attention(const AttentionConfig& config, Device device) {
  validate(config);
  LN_CHECK(device.is_cpu(), "attention \"", kind_name(config), "\" has no implementation on ",
           str(device), " yet; use device \"cpu\"");
  switch (config.index()) {
    case 0:
      return std::make_shared<DenseKernel>(std::get<DenseAttentionConfig>(config));
    case 1:
      return std::make_shared<DilatedKernel>(std::get<DilatedAttentionConfig>(config), false);
    case 2:
      return std::make_shared<BlockSparseKernel>(std::get<BlockSparseConfig>(config));
    default:
      break;
  }
  return std::make_shared<DilatedKernel>(std::get<AutoAttentionConfig>(config).dilated, true);
}

}  // namespace longnet
