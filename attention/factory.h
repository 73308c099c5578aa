// The attention factory: a typed, validated configuration in, an attention kernel out.
//
//   dense         scaled dot-product attention over all keys (causal option);
//   dilated       dilated attention, paper or grouped mode (attention/dilated.h);
//   block_sparse  block-sparse attention with one of four patterns (attention/block_sparse.h);
//   auto          the semantics of a dilated configuration, computed by the fastest correct
//                 implementation for the device (the dilated kernel on the
//                 CPU and, for now, on CUDA).
#pragma once

#include <memory>
#include <string>
#include <variant>

#include "attention/block_sparse.h"
#include "attention/dilated.h"
#include "tensor/device.h"

namespace longnet {

struct DenseAttentionConfig {
  bool causal = false;
  std::optional<double> scale;  // default 1/sqrt(D)
  void validate() const;
};

struct AutoAttentionConfig {
  DilatedAttentionConfig dilated;
  void validate() const { dilated.validate(); }
};

using AttentionConfig = std::variant<DenseAttentionConfig, DilatedAttentionConfig,
                                     BlockSparseConfig, AutoAttentionConfig>;

// "dense", "dilated", "block_sparse" or "auto".
const char* kind_name(const AttentionConfig& config);
void validate(const AttentionConfig& config);
bool is_causal(const AttentionConfig& config);

class Attention {
 public:
  virtual ~Attention() = default;
  // q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv) -> (B, Nq, H, Dv).
  virtual Variable forward(const Variable& q, const Variable& k, const Variable& v) const = 0;
  // The implementation chosen, e.g. "dilated (cpu reference kernel)".
  virtual std::string describe() const = 0;
};

// Validates config and returns the kernel for device. A kind with no implementation on the
// device is an error naming both.
std::shared_ptr<const Attention> make_attention(const AttentionConfig& config,
                                                Device device = Device::cpu());

}  // namespace longnet
