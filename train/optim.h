// Optimisation: AdamW with decoupled weight decay, the learning-rate schedule and global
// gradient-norm clipping (DESIGN.md section 8).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "train/safetensors.h"

namespace longnet {

struct AdamWConfig {
  double lr = 3e-4;  // the peak rate; step() takes the scheduled rate
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// Whether a parameter gets weight decay: matrices (weights of linear layers and
// embeddings, dim >= 2) do; vectors (norm gains and biases) and scalars do not.
bool decays(const std::string& name, const Variable& parameter);

// AdamW as in PyTorch (torch.optim.AdamW, Loshchilov & Hutter): for step t = 1, 2, ...
//   p -= lr * weight_decay * p            (only where decays(name, p))
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// Moments are kept in f32 (f64 for f64 parameters) on the parameter's device; parameters
// of any floating dtype, on the cpu or a CUDA device (gradients on the parameter's device),
// updated in one fused pass (one kernel) each, in the same arithmetic order on both. A
// parameter without a gradient is skipped (its moments untouched), as in PyTorch.
class AdamW {
 public:
  // named parameters, e.g. model.named_parameters(); names must be distinct.
  AdamW(std::vector<std::pair<std::string, Variable>> parameters, AdamWConfig config);

  // One update with learning rate lr, from the gradients the parameters hold; no gradient
  // is recorded (runs under NoGradGuard).
  void step(double lr);
  std::int64_t steps() const { return steps_; }
  const AdamWConfig& config() const { return config_; }

  // The optimizer's state for a checkpoint: "step" (i64 0-d), then "exp_avg.<name>" and
  // "exp_avg_sq.<name>" per parameter, in parameter order; tensors share storage with the
  // state (save or clone them before the next step).
  NamedTensors state() const;
  // Restores state() output, copying values in from whatever device they are on (a state
  // saved from a GPU optimizer loads into a cpu one and vice versa). Every missing or
  // unexpected name and every shape or dtype mismatch is reported at once, naming the
  // tensors; nothing is changed on error.
  void load_state(const NamedTensors& state);

 private:
  struct Slot {
    std::string name;
    Variable parameter;
    bool decay;
    Tensor exp_avg;
    Tensor exp_avg_sq;
  };
  std::vector<Slot> slots_;
  AdamWConfig config_;
  std::int64_t steps_ = 0;
};

// Learning-rate schedule. Linear warmup from lr / warmup_steps (step 0) to lr at step
// warmup_steps - 1, then by schedule:
//   "cosine":   cosine decay from lr to min_lr_ratio * lr at step total_steps - 1;
//   "linear":   linear decay to min_lr_ratio * lr at step total_steps - 1;
//   "constant": lr.
// step counts from 0; steps past total_steps - 1 keep the final rate.
enum class Schedule { cosine, linear, constant };
Schedule parse_schedule(const std::string& name);  // error lists the valid names
const char* schedule_name(Schedule schedule);
double scheduled_lr(double lr, Schedule schedule, std::int64_t warmup_steps,
                    std::int64_t total_steps, double min_lr_ratio, std::int64_t step);

// The global L2 norm of all gradients (accumulated in f64 in one order, so the same for
// every thread count and run; on a CUDA device each gradient's sum of squares is reduced in
// an order fixed by its size; parameters without a gradient count as 0). When it is finite and
// coef = max_norm / (norm + 1e-6) < 1 (max_norm > 0), every gradient is scaled by coef, as
// torch.nn.utils.clip_grad_norm_ does. Returns the norm before
// clipping; a NaN or Inf norm is returned as is and nothing is scaled.
double clip_grad_norm(const std::vector<Variable>& parameters, double max_norm);

}  // namespace longnet
