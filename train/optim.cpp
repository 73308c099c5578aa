#include "train/optim.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <numbers>
#include <set>

#include "tensor/copy.h"
#include "tensor/cpu/loop.h"
#include "tensor/creation.h"
#include "train/cuda/adamw.h"

namespace longnet {

namespace {

// One fused pass over a parameter p, its gradient g (both of type T) and its moments m, v
// (of type compute_t<T>: f32 for f32 and bf16, f64 for f64). The arithmetic follows
// PyTorch's op by op: p *= decay; m = m * beta1 + (1 - beta1) * g;
// v = v * beta2 + (1 - beta2) * g * g; p += -step_size * m / (sqrt(v) / sqrt(bc2) + eps).
template <class T>
void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                  double decay_factor, const AdamWStep& s) {
  using C = compute_t<T>;
  const auto decay = static_cast<C>(decay_factor);
  const auto beta1 = static_cast<C>(s.beta1);
  const auto beta2 = static_cast<C>(s.beta2);
  const auto one_minus_beta1 = static_cast<C>(1 - s.beta1);
  const auto one_minus_beta2 = static_cast<C>(1 - s.beta2);
  const auto neg_step_size = static_cast<C>(-s.step_size);
  const auto bc2_sqrt = static_cast<C>(s.bias_correction2_sqrt);
  const auto eps = static_cast<C>(s.eps);
  T* pp = p.data<T>();
  const T* pg = g.data<T>();
  C* pm = m.data<C>();
  C* pv = v.data<C>();
  constexpr std::int64_t kCost = 8;  // a sqrt and a division per element
  cpu::for_each_row<4>(
      p.shape(), {p.strides(), g.strides(), m.strides(), v.strides()},
      [&](auto off, std::int64_t n, auto step) {
        for (std::int64_t i = 0; i < n; ++i) {
          T& param = pp[off[0] + i * step[0]];
          auto grad = static_cast<C>(pg[off[1] + i * step[1]]);
          C& exp_avg = pm[off[2] + i * step[2]];
          C& exp_avg_sq = pv[off[3] + i * step[3]];
          exp_avg = exp_avg * beta1 + one_minus_beta1 * grad;
          exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad;
          C denom = std::sqrt(exp_avg_sq) / bc2_sqrt + eps;
          param = static_cast<T>(static_cast<C>(param) * decay + neg_step_size * (exp_avg / denom));
        }
      },
      kCost);
}

// Sum of the squares of g's elements, accumulated in f64 on one thread (one summation
// order, so the same norm for every thread count).
double sum_of_squares(const Tensor& g) {
  check_cpu(g, "clip_grad_norm");
  return dispatch_floating(g.dtype(), "clip_grad_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* data = g.data<T>();
    double total = 0;
    cpu::for_each_row<1>(
        g.shape(), {g.strides()},
        [&](auto off, std::int64_t n, auto step) {
          for (std::int64_t i = 0; i < n; ++i) {
            auto x = static_cast<double>(static_cast<compute_t<T>>(data[off[0] + i * step[0]]));
            total += x * x;
          }
        },
        /*cost=*/0);
    return total;
  });
}

// g *= coef in g's compute type (coef stays f32 for bf16 gradients).
void scale_(const Tensor& g, double coef) {
  dispatch_floating(g.dtype(), "clip_grad_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const auto c = static_cast<C>(coef);
    T* data = g.data<T>();
    cpu::for_each_row<1>(g.shape(), {g.strides()}, [&](auto off, std::int64_t n, auto step) {
      for (std::int64_t i = 0; i < n; ++i) {
        T& x = data[off[0] + i * step[0]];
        x = static_cast<T>(static_cast<C>(x) * c);
      }
    });
  });
}

std::string join(const std::vector<std::string>& parts, const char* separator) {
  std::string out;
  for (const auto& part : parts) out += (out.empty() ? "" : separator) + part;
  return out;
}

}  // namespace

bool decays(const std::string& /*name*/, const Variable& parameter) { return parameter.dim() >= 2; }

// The header takes the config (five doubles) by value.
// cppcheck-suppress passedByValue
AdamW::AdamW(std::vector<std::pair<std::string, Variable>> parameters, AdamWConfig config)
    : config_(config) {
  const AdamWConfig& c = config_;
  LN_CHECK(c.lr >= 0 && std::isfinite(c.lr), "AdamW: lr is ", c.lr,
           ", expected a finite value >= 0");
  LN_CHECK(c.beta1 >= 0 && c.beta1 < 1, "AdamW: beta1 is ", c.beta1, ", expected in [0, 1)");
  LN_CHECK(c.beta2 >= 0 && c.beta2 < 1, "AdamW: beta2 is ", c.beta2, ", expected in [0, 1)");
  LN_CHECK(c.eps >= 0 && std::isfinite(c.eps), "AdamW: eps is ", c.eps,
           ", expected a finite value >= 0");
  LN_CHECK(c.weight_decay >= 0 && std::isfinite(c.weight_decay), "AdamW: weight_decay is ",
           c.weight_decay, ", expected a finite value >= 0");
  std::set<std::string> names;
  for (auto& named : parameters) {
    std::string& name = named.first;
    Variable& parameter = named.second;
    LN_CHECK(names.insert(name).second, "AdamW: two parameters are named '", name, "'");
    LN_CHECK(parameter.defined(), "AdamW: parameter '", name, "' is undefined");
    LN_CHECK(is_floating(parameter.dtype()), "AdamW: parameter '", name, "' ",
             describe(parameter.data()), " must have a floating dtype (f32, f64, bf16)");
    TensorOptions options{parameter.dtype() == DType::f64 ? DType::f64 : DType::f32,
                          parameter.device()};
    Tensor exp_avg = zeros(parameter.shape(), options);
    Tensor exp_avg_sq = zeros(parameter.shape(), options);
    bool decay = decays(name, parameter);
    slots_.push_back(
        {std::move(name), std::move(parameter), decay, std::move(exp_avg), std::move(exp_avg_sq)});
  }
}

void AdamW::step(double lr) {
  LN_CHECK(lr >= 0 && std::isfinite(lr), "AdamW::step: lr is ", lr,
           ", expected a finite value >= 0");
  // Every gradient is checked before any parameter changes.
  for (const Slot& s : slots_) {
    const Tensor& p = s.parameter.data();
    const Tensor& g = s.parameter.grad();
    if (!g.defined()) continue;
    LN_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype(), "AdamW::step: gradient ",
             describe(g), " of parameter '", s.name, "' ", describe(p),
             " must have the parameter's shape and dtype");
    LN_CHECK(g.device() == p.device(), "AdamW::step: gradient ", describe(g), " of parameter '",
             s.name, "' ", describe(p), " must be on the parameter's device");
  }
  NoGradGuard no_grad;
  ++steps_;
  const auto t = static_cast<double>(steps_);
  AdamWStep s{config_.beta1, config_.beta2, lr / (1 - std::pow(config_.beta1, t)),
              std::sqrt(1 - std::pow(config_.beta2, t)), config_.eps};
  // Parameters on a GPU are updated by one fused launch per device and dtype.
  std::vector<std::vector<cuda::AdamWTensors>> fused;
  for (const Slot& slot : slots_) {
    const Tensor& g = slot.parameter.grad();
    if (!g.defined()) continue;
    double decay = slot.decay ? 1 - lr * config_.weight_decay : 1.0;
    const Tensor& p = slot.parameter.data();
    if (p.device().is_cuda()) {
      auto group = std::find_if(fused.begin(), fused.end(), [&](const auto& f) {
        return f.front().p.device() == p.device() && f.front().p.dtype() == p.dtype();
      });
      if (group == fused.end()) {
        fused.emplace_back();
        group = std::prev(fused.end());
      }
      group->push_back({p, g, slot.exp_avg, slot.exp_avg_sq, decay});
      continue;
    }
    dispatch_floating(p.dtype(), "AdamW::step", [&](auto tag) {
      adamw_update<typename decltype(tag)::type>(p, g, slot.exp_avg, slot.exp_avg_sq, decay, s);
    });
  }
  for (const auto& group : fused) cuda::adamw_update(group, s);
}

NamedTensors AdamW::state() const {
  NamedTensors state;
  state.reserve(1 + 2 * slots_.size());
  state.emplace_back("step", from_data<std::int64_t>({steps_}, {}));
  for (const Slot& s : slots_) {
    state.emplace_back("exp_avg." + s.name, s.exp_avg);
    state.emplace_back("exp_avg_sq." + s.name, s.exp_avg_sq);
  }
  return state;
}

void AdamW::load_state(const NamedTensors& state) {
  // state() names every tensor expected, with its shape and dtype.
  NamedTensors expected = this->state();
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < expected.size(); ++i) index.emplace(expected[i].first, i);

  std::vector<std::string> problems;
  std::vector<const Tensor*> given(expected.size(), nullptr);
  for (const auto& [key, t] : state) {
    auto it = index.find(key);
    if (it == index.end()) {
      problems.push_back(cat("unexpected tensor '", key, "'"));
      continue;
    }
    const Tensor& want = expected[it->second].second;
    if (given[it->second] != nullptr) {
      problems.push_back(cat("tensor '", key, "' appears twice"));
    } else if (!t.defined() || t.shape() != want.shape() || t.dtype() != want.dtype()) {
      problems.push_back(cat("tensor '", key, "' is ", describe(t), ", expected ",
                             name(want.dtype()), str(want.shape())));
    } else if (key == "step" && t.to_vector<std::int64_t>()[0] < 0) {
      problems.push_back(
          cat("tensor 'step' holds ", t.to_vector<std::int64_t>()[0], ", expected a count >= 0"));
    }
    given[it->second] = &t;
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (given[i] == nullptr) problems.push_back(cat("missing tensor '", expected[i].first, "'"));
  }
  LN_CHECK(problems.empty(), "AdamW::load_state: ", join(problems, "; "),
           " (expected the names, shapes and dtypes AdamW::state() gives)");

  steps_ = given[0]->to_vector<std::int64_t>()[0];
  for (std::size_t i = 1; i < expected.size(); ++i) copy_(expected[i].second, *given[i]);
}

Schedule parse_schedule(const std::string& name) {
  for (Schedule s : {Schedule::cosine, Schedule::linear, Schedule::constant}) {
    if (name == schedule_name(s)) return s;
  }
  throw Error(cat("schedule is \"", name, "\" (valid: cosine, linear, constant)"));
}

const char* schedule_name(Schedule schedule) {
  switch (schedule) {
    case Schedule::cosine:
      return "cosine";
    case Schedule::linear:
      return "linear";
    case Schedule::constant:
      break;
  }
  return "constant";
}

double scheduled_lr(double lr, Schedule schedule, std::int64_t warmup_steps,
                    std::int64_t total_steps, double min_lr_ratio, std::int64_t step) {
  LN_CHECK(warmup_steps >= 0 && warmup_steps < total_steps, "scheduled_lr: warmup_steps ",
           warmup_steps, " and total_steps ", total_steps,
           " must satisfy 0 <= warmup_steps < total_steps");
  LN_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1, "scheduled_lr: min_lr_ratio is ", min_lr_ratio,
           ", expected in [0, 1]");
  LN_CHECK(step >= 0, "scheduled_lr: step is ", step, ", expected >= 0");
  if (step < warmup_steps) {
    return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  // Decay runs from lr at step warmup_steps to the minimum at step total_steps - 1.
  std::int64_t last = total_steps - 1;
  double progress = static_cast<double>(std::min(step, last) - warmup_steps) /
                    static_cast<double>(std::max<std::int64_t>(last - warmup_steps, 1));
  double min_lr = min_lr_ratio * lr;
  switch (schedule) {
    case Schedule::cosine:
      return min_lr + 0.5 * (1 + std::cos(std::numbers::pi * progress)) * (lr - min_lr);
    case Schedule::linear:
      return min_lr + (1 - progress) * (lr - min_lr);
    case Schedule::constant:
      break;
  }
  return lr;
}

double clip_grad_norm(const std::vector<Variable>& parameters, double max_norm) {
  LN_CHECK(max_norm > 0, "clip_grad_norm: max_norm is ", max_norm, ", expected > 0");
  // Per parameter, in order: cpu sums at once, device sums into one f64 slot per parameter
  // on their device, read back together (one wait per device).
  std::vector<double> sums(parameters.size(), 0.0);
  std::map<int, Tensor> device_sums;
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const Variable& p = parameters[i];
    LN_CHECK(p.defined(), "clip_grad_norm: a parameter is undefined");
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (g.device().is_cuda()) {
      Tensor& slots = device_sums[g.device().index];
      if (!slots.defined()) {
        slots = zeros({static_cast<std::int64_t>(parameters.size())}, {DType::f64, g.device()});
      }
      cuda::sum_of_squares(g, slots, static_cast<std::int64_t>(i));
    } else {
      sums[i] = sum_of_squares(g);
    }
  }
  for (const auto& [index, slots] : device_sums) {
    std::vector<double> values = slots.to_vector<double>();
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      const Tensor& g = parameters[i].grad();
      if (g.defined() && g.device() == Device::cuda(index)) sums[i] = values[i];
    }
  }
  double sum = 0;
  for (double s : sums) sum += s;
  double norm = std::sqrt(sum);
  // torch.nn.utils.clip_grad_norm_: the coefficient is clamped to 1, so nothing changes at
  // or below max_norm (up to the 1e-6); a NaN or Inf norm scales nothing here.
  double coef = max_norm / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1) {
    for (const Variable& p : parameters) {
      if (!p.grad().defined()) continue;
      if (p.grad().device().is_cuda()) {
        cuda::scale_(p.grad(), coef);
      } else {
        scale_(p.grad(), coef);
      }
    }
  }
  return norm;
}

}  // namespace longnet
