#include "train/generate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"
#include "train/checkpoint.h"

namespace longnet {

TrainedModel load_trained_model(const std::string& dir, std::ostream& warnings) {
  std::optional<Checkpoint> checkpoint;
  if (std::filesystem::exists(std::filesystem::path(dir) / "meta.json")) {
    checkpoint = load_checkpoint(dir);
  } else {
    checkpoint = load_latest_checkpoint(dir, warnings);
    LN_CHECK(checkpoint.has_value(), dir, " holds no checkpoint (give a train.out_dir or one of ",
             "its ckpt-* directories)");
  }
  TrainedModel trained;
  trained.config = parse_train_config(checkpoint->config, checkpoint->dir + "/meta.json: config");
  Generator init(0);  // the weights are replaced by the checkpoint's
  trained.model = std::make_shared<LongNetLM>(trained.config.model, init);
  trained.model->load_state_dict(checkpoint->model);
  trained.model->eval();
  trained.dir = checkpoint->dir;
  trained.step = checkpoint->step;
  return trained;
}

namespace {

// Index of the token drawn from logits with uniform u in [0, 1).
std::int64_t draw(std::vector<double> logits, const SamplingConfig& s, double u) {
  std::vector<std::int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  // Most likely first; ties by id, so the order is the same everywhere.
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) { return logits[a] > logits[b]; });
  if (s.temperature <= 0) return order[0];
  std::size_t keep =
      s.top_k > 0 ? std::min(order.size(), static_cast<std::size_t>(s.top_k)) : order.size();
  double top = logits[order[0]];
  std::vector<double> weights(keep);
  double total = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    weights[i] = std::exp((logits[order[i]] - top) / s.temperature);
    total += weights[i];
  }
  double target = u * total;
  for (std::size_t i = 0; i < keep; ++i) {
    target -= weights[i];
    if (target < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace

std::vector<std::int64_t> generate(const LongNetLM& model, std::vector<std::int64_t> prompt,
                                   std::int64_t count, std::int64_t context,
                                   const SamplingConfig& sampling) {
  std::int64_t vocab = model.config().vocab_size;
  LN_CHECK(!prompt.empty(), "the prompt is empty; give at least one token");
  LN_CHECK(count >= 0, "token count is ", count, "; valid: integers >= 0");
  LN_CHECK(context >= 1, "context is ", context, "; valid: integers >= 1");
  LN_CHECK(sampling.temperature >= 0 && std::isfinite(sampling.temperature), "temperature is ",
           sampling.temperature, "; valid: numbers >= 0");
  LN_CHECK(sampling.top_k >= 0, "top-k is ", sampling.top_k, "; valid: integers >= 0");
  for (std::int64_t t : prompt) {
    LN_CHECK(t >= 0 && t < vocab, "prompt token ", t, " is outside the model's vocabulary [0, ",
             vocab, ")");
  }
  NoGradGuard no_grad;
  Generator gen(sampling.seed);
  std::vector<std::int64_t> tokens = std::move(prompt);
  for (std::int64_t i = 0; i < count; ++i) {
    auto n = std::min<std::int64_t>(context, static_cast<std::int64_t>(tokens.size()));
    std::vector<std::int64_t> window(tokens.end() - n, tokens.end());
    Tensor logits = model.forward(from_data(window, {1, n}), gen).data();
    std::vector<double> last =
        to(contiguous(narrow(logits, 1, n - 1, 1)), DType::f64).to_vector<double>();
    double u = uniform({1}, 0, 1, gen, {DType::f64}).item();
    tokens.push_back(draw(std::move(last), sampling, u));
  }
  return tokens;
}

}  // namespace longnet
