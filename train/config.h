// The training configuration: the JSON file longnet-train reads (schema in README.md,
// examples in configs/). Sections model, data, optim, train and dist; every key is checked
// before any work: an unknown key, a wrong type, an impossible or inconsistent value is a
// ConfigError naming the key and what would be valid. Relative paths are relative to the
// working directory.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "dist/data_parallel.h"
#include "models/longnet.h"
#include "tensor/device.h"
#include "train/data.h"
#include "train/optim.h"

namespace longnet {

// An error in the configuration or in what it names (data files, out_dir): the run never
// started. longnet-train exits with status 2 on it.
class ConfigError : public Error {
 public:
  using Error::Error;
};

struct DataConfig {
  DataFormat format = DataFormat::bytes;
  std::string train_path;  // required
  // Validation tokens; when empty, the last val_fraction of train_path's tokens.
  std::string val_path;
  double val_fraction = 0.05;
  std::int64_t seq_len = 256;
  std::int64_t batch_size = 8;
};

struct OptimConfig {
  AdamWConfig adamw;
  double grad_clip = 1.0;  // max global gradient norm; 0 turns clipping off
  std::int64_t warmup_steps = 0;
  Schedule schedule = Schedule::cosine;
  double min_lr_ratio = 0.1;
};

struct RunConfig {
  std::int64_t steps = 0;  // required: optimizer steps in the whole run
  std::uint64_t seed = 1;
  std::string out_dir;            // required
  std::int64_t eval_every = 100;  // 0: only at the end
  std::int64_t eval_batches = 8;
  std::int64_t ckpt_every = 100;  // 0: only at the end
  std::int64_t keep_ckpts = 3;
  Device device = Device::cpu();
  // f32, or bf16: mixed precision (bf16 matmuls and attention, f32 weights, optimizer
  // state, residual stream and loss).
  DType precision = DType::f32;
  // Recompute each layer in backward instead of keeping its activations (less memory, about
  // a third more compute).
  bool recompute = false;
  // > 0: the feed-forward blocks run over chunks of this many positions, each recomputed
  // in backward (for sequences of about a million tokens).
  std::int64_t ffn_chunk = 0;
  std::int64_t grad_accum = 1;
  std::int64_t log_every = 10;
  // Consecutive steps with a NaN or Inf loss or gradient after which the run stops.
  std::int64_t max_bad_steps = 5;
};

struct TrainConfig {
  LongNetConfig model;  // decoder-only: encoder_layers 0
  DataConfig data;
  OptimConfig optim;
  RunConfig train;
  // Data parallel over the ranks of an MPI launch (no effect on a single process).
  DataParallelConfig dist;
  // dist.sequence_parallel: under an MPI launch the ranks share each sequence, rank r
  // holding a contiguous slice of its positions (attention/sequence_parallel.h), instead of
  // each taking its own batches; gradients are still averaged by DataParallel.
  bool sequence_parallel = false;
  // dist.timeout_s: how long a rank waits for the others in a collective before it stops
  // the run with an error (Communicator::set_timeout).
  double timeout_s = 600;
};

// Parses and checks a configuration; where names it in messages (the file name).
TrainConfig parse_train_config(const nlohmann::json& j, const std::string& where);
// Reads path (a missing file or invalid JSON is a ConfigError naming it) and parses it.
TrainConfig load_train_config(const std::string& path);

// The configuration as JSON with every default filled in; parse_train_config of it gives
// the same configuration. Stored in checkpoints.
nlohmann::json to_json(const TrainConfig& config);
// Just the model section of to_json: two models can share weights iff these are equal.
nlohmann::json model_json(const LongNetConfig& model);

// Checks what the configuration names outside itself, without writing anything: out_dir
// must be a writable directory or creatable (its nearest existing ancestor a writable
// directory); the device must be usable. Errors are ConfigErrors naming the key and path.
void check_run_environment(const TrainConfig& config);

// Reads the data the configuration names and checks it against the model and the batch
// shape: files readable and well-formed, each part holding more than seq_len tokens,
// token ids below vocab_size. Errors are ConfigErrors naming the key and the file.
CorpusSplit load_training_data(const TrainConfig& config);

}  // namespace longnet
