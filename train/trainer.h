// The training loop of longnet-train (DESIGN.md section 8): a LongNetLM, AdamW, batches
// from the corpus, evaluation, checkpoints, logs; data parallel over the ranks of a
// communicator (DESIGN.md section 7).
//
// Data parallel: data.batch_size is per rank, so a step trains on batch_size x ranks x
// grad_accum rows. The training batches form one stream (batch i as sample_batch draws
// it); micro-step m of a step takes the next `ranks` batches of the stream, rank r the
// r-th. The data position counts batches of the stream, so it does not depend on the
// number of ranks and a checkpoint resumes on any number of them: P ranks with grad_accum
// A train on the same rows as one process with grad_accum P x A. Gradients are averaged
// by DataParallel (dist/data_parallel.h) with the dist settings; the loss is averaged over
// ranks; a NaN or Inf on any rank makes every rank skip the step (and stop together).
// Rank r's dropout stream is keyed by the run's dropout seed and r. With one rank,
// nothing of this runs: a single process trains exactly as it always has.
//
// Sequence parallel (dist.sequence_parallel): the ranks read the same batches, one per
// micro-step as a single process does, and rank r trains on the positions
// sequence_slice(seq_len, r, ranks) of each sequence, its self-attention spanning all ranks
// (LongNetLM::use_sequence_parallel). Its loss is weighted by its share of the positions,
// so the ranks' losses and averaged gradients are those of the whole sequences.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>

#include "dist/communicator.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace longnet {

// Too many consecutive steps with a NaN or Inf loss or gradient: the run stopped.
class NumericalFault : public Error {
 public:
  using Error::Error;
};

struct StepStats {
  std::int64_t step = 0;  // optimizer steps taken, this one included
  double loss = 0;        // mean training loss over the step's micro-batches (nats per token)
  double lr = 0;
  double grad_norm = 0;  // before clipping
  bool skipped = false;  // a non-finite loss or gradient: no update was made
  double seconds = 0;
  std::int64_t tokens = 0;      // tokens the step trained on, over every rank
  std::int64_t bytes_sent = 0;  // gradient bytes this rank handed to collectives
};

struct EvalStats {
  std::int64_t step = 0;
  double val_loss = 0;            // nats per token
  std::optional<double> val_bpb;  // bits per byte, for byte-level data
};

class Trainer {
 public:
  // Builds the model (weights drawn from train.seed) and the optimizer. data must satisfy
  // load_training_data's checks. With comm, every rank of comm constructs a Trainer with
  // the same config and data (construction, step() and evaluate() are collective) and
  // restores the same checkpoint; comm must outlive the Trainer. Without it, one process.
  Trainer(TrainConfig config, CorpusSplit data);
  Trainer(TrainConfig config, CorpusSplit data, Communicator& comm);
  ~Trainer();

  // One optimizer step over train.grad_accum micro-batches. A non-finite loss or gradient
  // norm skips the update (gradients dropped); after train.max_bad_steps such steps in a
  // row it throws NumericalFault.
  StepStats step();
  // Mean loss over train.eval_batches fixed validation batches (no dropout, no gradient),
  // the batches shared out over the ranks; every rank gets the same result.
  EvalStats evaluate();

  // The state a resumed run needs, the same on every rank; collective (every rank calls
  // it). With compression it holds every rank's error-feedback residual (optimizer tensors
  // "error_feedback.<parameter>", [ranks, ...]) and PowerSGD's Q ("powersgd_q.<parameter>").
  // Its tensors share storage with the model and the optimizer: save it before the next
  // step.
  Checkpoint checkpoint() const;
  // Continues from checkpoint: weights, optimizer state, step, data position, RNG state, and
  // with compression its state: exactly on the same number of ranks; on another, rank 0
  // takes the mean residual times the rank count (the ranks owe the same mass) and the
  // others none. Without compression (or on one process) that state is dropped.
  void restore(const Checkpoint& checkpoint);

  std::int64_t steps_done() const { return step_; }
  int ranks() const { return comm_.size(); }
  const TrainConfig& config() const { return config_; }
  LongNetLM& model() { return *model_; }
  const CorpusSplit& data() const { return data_; }

 private:
  // This rank's part of the batch's mean loss (its share of it under sequence parallel);
  // with backward, backpropagates scale times it (times the rank count under sequence
  // parallel, whose gradients DataParallel averages).
  Tensor micro_batch_loss(const Tensor& batch, bool backward, double scale);
  bool sequence_parallel() const;
  // Compression's state from a checkpoint's optimizer tensors (see checkpoint()).
  void restore_compression(const NamedTensors& state, const std::string& dir);

  TrainConfig config_;
  CorpusSplit data_;
  Communicator& comm_;
  std::shared_ptr<LongNetLM> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<DataParallel> data_parallel_;  // with more than one rank
  std::uint64_t dropout_seed_;                   // rank 0's; rank r's stream derives from it
  Generator dropout_gen_;
  std::int64_t step_ = 0;
  std::uint64_t data_position_ = 0;
  std::int64_t bad_steps_ = 0;
};

// The cross-entropy, in bits per token, of the validation tokens under the training
// tokens' unigram distribution (add-one smoothing): the loss a model that ignores context
// can reach. A language model should end well below it.
double unigram_bits(const CorpusSplit& data, std::int64_t vocab_size);

// What a run starts from, found without writing anything: the data (load_training_data)
// and the newest good checkpoint of train.out_dir, if any. Configuration and data errors,
// an unusable out_dir and a checkpoint of a different model are ConfigErrors; broken
// checkpoints are reported on log and skipped (an Error when all are broken).
struct RunPlan {
  CorpusSplit data;
  std::optional<Checkpoint> resume;
};
RunPlan plan_run(const TrainConfig& config, std::ostream& log);

// longnet-train's whole run from plan: resumes from plan.resume or starts afresh; trains to
// train.steps with logs (progress lines on log, records in out_dir/metrics.jsonl),
// evaluations every train.eval_every steps and at the end, checkpoints every
// train.ckpt_every steps and at the end. Every rank of comm runs it with its own plan (all
// must have found the same checkpoint: an error on every rank otherwise); rank 0 alone
// writes out_dir and log.
void run_training(const TrainConfig& config, RunPlan plan, std::ostream& log, Communicator& comm);

// The communicator of a run from the launched one (make_communicator()): for a GPU run with
// more than one rank the NCCL backend around it, each process on the GPU of its index on
// the node (written into config.train.device; an error when the node has too few GPUs),
// else launched itself; its timeout set to dist.timeout_s.
std::unique_ptr<Communicator> run_communicator(std::unique_ptr<Communicator> launched,
                                               TrainConfig& config);

}  // namespace longnet
