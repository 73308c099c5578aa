// Sampling text from a trained LongNetLM (longnet-generate).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "train/config.h"

namespace longnet {

struct SamplingConfig {
  double temperature = 1.0;  // 0: always the most likely token
  std::int64_t top_k = 0;    // > 0: sample among the k most likely tokens only
  std::uint64_t seed = 0;
};

// The model of a checkpoint: dir is a checkpoint directory (holding meta.json) or an
// out_dir, whose newest good checkpoint is used (broken ones reported on warnings).
struct TrainedModel {
  TrainConfig config;
  std::shared_ptr<LongNetLM> model;  // in eval mode
  std::string dir;                   // the checkpoint read
  std::int64_t step = 0;
};
TrainedModel load_trained_model(const std::string& dir, std::ostream& warnings);

// Appends count sampled tokens to prompt (not empty; ids below the vocabulary size) and
// returns the whole sequence. Each token is drawn from the model's distribution given the
// last `context` tokens (the training seq_len), scaled by 1/temperature and cut to top_k;
// the draws come from Philox keyed by seed, so a fixed seed gives the same text.
std::vector<std::int64_t> generate(const LongNetLM& model, std::vector<std::int64_t> prompt,
                                   std::int64_t count, std::int64_t context,
                                   const SamplingConfig& sampling);

}  // namespace longnet
