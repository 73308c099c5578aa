#include "attention/factory.h"

#include <cmath>

#include "tensor/cuda/runtime.h"

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

// " (cpu kernel)" or " (cuda kernel)": the attention functions dispatch on the inputs'
// device, so one kernel class serves both.
std::string kernel_suffix(Device device) {
  return device.is_cuda() ? " (cuda kernel)" : " (cpu kernel)";
}

class DenseKernel final : public Attention {
 public:
  DenseKernel(DenseAttentionConfig c, Device device) : c_(c), device_(device) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return dense_attention(q, k, v, c_.causal, c_.scale);
  }
  std::string describe() const override { return "dense" + kernel_suffix(device_); }

 private:
  DenseAttentionConfig c_;
  Device device_;
};

class DilatedKernel final : public Attention {
 public:
  DilatedKernel(DilatedAttentionConfig c, bool chosen_by_auto, Device device)
      : c_(std::move(c)), auto_(chosen_by_auto), device_(device) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return dilated_attention(q, k, v, c_);
  }
  std::string describe() const override {
    return cat(auto_ ? "auto: " : "", "dilated attention, ",
               c_.mode == DilatedMode::paper ? "paper" : "grouped", " mode",
               kernel_suffix(device_));
  }

 private:
  DilatedAttentionConfig c_;
  bool auto_;
  Device device_;
};

class BlockSparseKernel final : public Attention {
 public:
  BlockSparseKernel(BlockSparseConfig c, Device device) : c_(c), device_(device) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return block_sparse_attention(q, k, v, c_);
  }
  std::string describe() const override {
    return cat("block_sparse: ", name(c_.pattern), ", density ", c_.density,
               kernel_suffix(device_));
  }

 private:
  BlockSparseConfig c_;
  Device device_;
};

}  // namespace

std::shared_ptr<const Attention> make_attention(const AttentionConfig& config, Device device) {
  validate(config);
  if (device.is_cuda()) {
    LN_CHECK(cuda::built_with_cuda(), "attention \"", kind_name(config),
             "\" has no implementation on ", str(device),
             " in this build: it has no CUDA support; reconfigure with -Dcuda=enabled or use "
             "device \"cpu\"");
    LN_CHECK(device.index >= 0 && device.index < cuda::device_count(), "attention \"",
             kind_name(config), "\" has no implementation on ", str(device), ": this machine has ",
             cuda::device_count(), " CUDA device(s); use device \"cpu\"");
  }
  switch (config.index()) {
    case 0:
      return std::make_shared<DenseKernel>(std::get<DenseAttentionConfig>(config), device);
    case 1:
      return std::make_shared<DilatedKernel>(std::get<DilatedAttentionConfig>(config), false,
                                             device);
    case 2:
      return std::make_shared<BlockSparseKernel>(std::get<BlockSparseConfig>(config), device);
    default:
      break;
  }
  return std::make_shared<DilatedKernel>(std::get<AutoAttentionConfig>(config).dilated, true,
                                         device);
}

}  // namespace longnet
