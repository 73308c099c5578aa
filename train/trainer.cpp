#include "train/trainer.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <ostream>
#include <sstream>

#include "autograd/ops.h"
#include "dist/cuda/nccl.h"
#include "dist/single_process.h"
#include "nn/loss.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/elementwise.h"
#include "tensor/reduce.h"
#include "tensor/view.h"
#include "train/file_io.h"

namespace longnet {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Distinct Philox keys for the streams derived from train.seed (the model's weights use
// the seed itself).
constexpr std::uint64_t kDataSalt = 0x6c6f6e676e657401ULL;
constexpr std::uint64_t kDropoutSalt = 0x6c6f6e676e657402ULL;

using Clock = std::chrono::steady_clock;

// Rank r's dropout key: a distinct Philox key per rank, rank 0's the run's own.
std::uint64_t rank_seed(std::uint64_t seed, int rank) {
  return seed + static_cast<std::uint64_t>(rank) * 0x9e3779b97f4a7c15ULL;
}

Communicator& single_process() {
  static SingleProcessCommunicator comm;
  return comm;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

std::string duration_text(double seconds) {
  auto s = static_cast<long long>(std::llround(std::max(0.0, seconds)));
  char text[32];
  if (s >= 3600) {
    std::snprintf(text, sizeof text, "%lldh%02lldm", s / 3600, s / 60 % 60);
  } else {
    std::snprintf(text, sizeof text, "%lldm%02llds", s / 60, s % 60);
  }
  return text;
}

std::string rate_text(double tokens_per_s) {
  char text[32];
  if (tokens_per_s >= 1e6) {
    std::snprintf(text, sizeof text, "%.2fM", tokens_per_s / 1e6);
  } else if (tokens_per_s >= 1e3) {
    std::snprintf(text, sizeof text, "%.1fk", tokens_per_s / 1e3);
  } else {
    std::snprintf(text, sizeof text, "%.0f", tokens_per_s);
  }
  return text;
}

// out_dir/metrics.jsonl, one JSON object per line. Opening it keeps only the records of
// steps up to the step the run starts from (a resumed run replays the rest), so the file
// always tells one history.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, std::int64_t start_step) : path_(path) {
    std::string kept;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
          record["step"].get<std::int64_t>() <= start_step) {
        kept += line + "\n";
      }
    }
    in.close();
    write_file_atomically(path, kept);
    out_.open(path, std::ios::app);
    LN_CHECK(out_, "cannot append to ", path, ": ", errno_text(errno));
  }

  void write(const json& record) {
    out_ << record.dump() << '\n';
    out_.flush();
    LN_CHECK(out_, "writing ", path_, ": ", errno_text(errno));
  }

 private:
  std::string path_;
  std::ofstream out_;
};

// ConfigError unless the checkpoint's model is the configured one.
void check_same_model(const json& saved_config, const TrainConfig& config, const std::string& dir) {
  json saved = saved_config.is_object() ? saved_config.value("model", json::object()) : json();
  json wanted = model_json(config.model);
  if (saved == wanted) return;
  std::string differences;
  for (const auto& [key, value] : wanted.items()) {
    json old = saved.is_object() && saved.contains(key) ? saved[key] : json();
    if (old != value)
      differences += cat("\n  model.", key, ": ", old.dump(), " there, ", value.dump(), " here");
  }
  throw ConfigError(cat("train.out_dir \"", config.train.out_dir, "\" holds ", dir,
                        ", a checkpoint of a different model:", differences,
                        "\nuse another out_dir, or the checkpoint's model settings to resume it"));
}

std::int64_t parameter_count(const Module& model) {
  std::int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

std::string attention_text(const LongNetConfig& m) {
  json j = model_json(m);
  std::string text = j["attention"].get<std::string>();
  if (j.contains("segment_lengths")) {
    text += cat(" (", j["mode"].get<std::string>(), " mode, w = ", j["segment_lengths"].dump(),
                ", r = ", j["dilation_rates"].dump(), ")");
  }
  if (j.contains("pattern")) {
    text += cat(" (", j["pattern"].get<std::string>(), ", blocks of ", j["block_size"].dump(), ")");
  }
  return text;
}

}  // namespace

Trainer::Trainer(TrainConfig config, CorpusSplit data)
    : Trainer(std::move(config), std::move(data), single_process()) {}

Trainer::Trainer(TrainConfig config, CorpusSplit data, Communicator& comm)
    : config_(std::move(config)),
      data_(std::move(data)),
      comm_(comm),
      dropout_seed_(config_.train.seed ^ kDropoutSalt),
      dropout_gen_(rank_seed(dropout_seed_, comm_.rank())) {
  Generator init(config_.train.seed);
  if (config_.train.precision != DType::f32) config_.model.compute_dtype = config_.train.precision;
  config_.model.recompute = config_.train.recompute;
  config_.model.ffn_chunk = config_.train.ffn_chunk;
  model_ = std::make_shared<LongNetLM>(config_.model, init,
                                       TensorOptions{DType::f32, config_.train.device});
  optimizer_ = std::make_unique<AdamW>(model_->named_parameters(), config_.optim.adamw);
  if (comm_.size() > 1) {
    if (config_.sequence_parallel) model_->use_sequence_parallel(config_.data.seq_len, comm_);
    data_parallel_ = std::make_unique<DataParallel>(model_->parameters(), comm_, config_.dist);
  }
}

bool Trainer::sequence_parallel() const { return config_.sequence_parallel && comm_.size() > 1; }

Trainer::~Trainer() = default;

Tensor Trainer::micro_batch_loss(const Tensor& batch, bool backward, double scale) {
  std::int64_t seq_len = config_.data.seq_len;
  SequenceSlice slice{0, seq_len};
  double share = 1;
  if (sequence_parallel()) {
    // This rank's positions; its mean loss weighted by its share of them sums over the
    // ranks to the mean over the sequence. DataParallel averages the gradients over the
    // ranks, so backward scales by the share times the rank count.
    slice = sequence_slice(seq_len, comm_.rank(), comm_.size());
    share = static_cast<double>(slice.end - slice.begin) / static_cast<double>(seq_len);
    scale *= share * comm_.size();
  }
  std::int64_t length = slice.end - slice.begin;
  Tensor inputs = to(contiguous(narrow(batch, 1, slice.begin, length)), config_.train.device);
  Tensor targets = to(contiguous(narrow(batch, 1, slice.begin + 1, length)), config_.train.device);
  Variable loss = cross_entropy(model_->forward(inputs, dropout_gen_), targets);
  if (backward) mul(loss, scale).backward();
  return share == 1 ? loss.data() : mul(loss.data(), share);
}

StepStats Trainer::step() {
  Clock::time_point start = Clock::now();
  const OptimConfig& o = config_.optim;
  const DataConfig& d = config_.data;
  StepStats stats;
  stats.lr = scheduled_lr(o.adamw.lr, o.schedule, o.warmup_steps, config_.train.steps,
                          o.min_lr_ratio, step_);
  std::int64_t accum = config_.train.grad_accum;
  int ranks = comm_.size();
  // Ranks that share each sequence read the same batches; data-parallel ranks their own.
  int readers = sequence_parallel() ? 1 : ranks;
  double loss_sum = 0;
  for (std::int64_t i = 0; i < accum; ++i) {
    Tensor batch =
        sample_batch(data_.train, d.seq_len, d.batch_size, config_.train.seed ^ kDataSalt,
                     data_position_ + static_cast<std::uint64_t>(comm_.rank() % readers));
    data_position_ += static_cast<std::uint64_t>(readers);
    if (data_parallel_) data_parallel_->set_sync(i == accum - 1);
    loss_sum += micro_batch_loss(batch, true, 1.0 / static_cast<double>(accum)).item();
  }
  if (data_parallel_) {
    data_parallel_->synchronize();
    stats.bytes_sent = data_parallel_->bytes_sent();
  }
  stats.loss = loss_sum / static_cast<double>(accum);
  double max_norm = o.grad_clip > 0 ? o.grad_clip : std::numeric_limits<double>::infinity();
  // The gradients are the same on every rank now, and so is their norm.
  stats.grad_norm = clip_grad_norm(model_->parameters(), max_norm);
  stats.skipped = !std::isfinite(stats.loss) || !std::isfinite(stats.grad_norm);
  if (ranks > 1) {
    // The mean loss over ranks (over sequences: the ranks' shares of it summed), and
    // whether any rank saw a NaN or Inf: all skip together.
    Tensor agreed = from_data<double>({loss_sum, stats.skipped ? 1.0 : 0.0}, {2});
    comm_.all_reduce(agreed, ReduceOp::sum);
    stats.loss = agreed.data<double>()[0] / static_cast<double>(accum * readers);
    stats.skipped = agreed.data<double>()[1] > 0;
  }
  if (stats.skipped) {
    ++bad_steps_;
    // The residuals hold this step's gradients, which the update never used.
    if (data_parallel_) data_parallel_->clear_error_feedback();
  } else {
    optimizer_->step(stats.lr);
    bad_steps_ = 0;
  }
  model_->zero_grad();
  stats.step = ++step_;
  stats.tokens = accum * d.batch_size * d.seq_len * readers;
  stats.seconds = seconds_since(start);
  if (bad_steps_ >= config_.train.max_bad_steps) {
    throw NumericalFault(cat("step ", step_, ": the loss or gradient norm was NaN or Inf in ",
                             bad_steps_, " steps in a row (train.max_bad_steps is ",
                             config_.train.max_bad_steps, "); stopping. Those steps changed no ",
                             "weights, so the last checkpoint is good. Lower optim.lr, raise ",
                             "optim.warmup_steps or set optim.grad_clip, then rerun to resume"));
  }
  return stats;
}

EvalStats Trainer::evaluate() {
  NoGradGuard no_grad;
  model_->eval();
  const DataConfig& d = config_.data;
  std::int64_t count = config_.train.eval_batches;
  // Rank r evaluates batches r, r + ranks, ... (with sequence parallel every rank its share
  // of every batch); the losses are summed in batch order on every rank, as one process
  // sums them.
  std::vector<double> losses(static_cast<std::size_t>(count), 0.0);
  int readers = sequence_parallel() ? 1 : comm_.size();
  for (std::int64_t i = comm_.rank() % readers; i < count; i += readers) {
    Tensor batch = eval_batch(data_.val, d.seq_len, d.batch_size, i, count);
    losses[static_cast<std::size_t>(i)] = micro_batch_loss(batch, false, 1).item();
  }
  if (comm_.size() > 1) {
    Tensor all = from_data<double>(losses, {count});
    comm_.all_reduce(all, ReduceOp::sum);
    losses = all.to_vector<double>();
  }
  double sum = 0;
  for (double loss : losses) sum += loss;
  model_->train();
  EvalStats stats;
  stats.step = step_;
  stats.val_loss = sum / static_cast<double>(count);
  if (d.format == DataFormat::bytes) stats.val_bpb = stats.val_loss / std::numbers::ln2;
  return stats;
}

namespace {

// The prefix of the error-feedback residuals among a checkpoint's optimizer tensors.
constexpr const char* kErrorFeedback = "error_feedback.";
constexpr const char* kWarmStart = "powersgd_q.";

}  // namespace

Checkpoint Trainer::checkpoint() const {
  Checkpoint c;
  c.step = step_;
  c.data_position = data_position_;
  c.rng_seed = dropout_seed_;
  c.rng_offset = dropout_gen_.offset();
  c.bad_steps = bad_steps_;
  c.config = to_json(config_);
  c.model = model_->state_dict();
  c.optimizer = optimizer_->state();
  if (data_parallel_ && config_.dist.compression.kind != Compression::none) {
    // Compression's state: every rank's error-feedback residual, gathered as [ranks, ...]
    // (the gradient mass its messages have left out so far), and PowerSGD's Q (the same on
    // every rank). Every rank has them for the same parameters (the ranks compress the same
    // buckets).
    auto named = model_->named_parameters();
    for (std::size_t i = 0; i < named.size(); ++i) {
      Tensor residual = data_parallel_->error_feedback(i);
      if (residual.defined()) {
        Tensor mine = contiguous(to(residual, Device::cpu()));
        Shape all_shape = mine.shape();
        all_shape.insert(all_shape.begin(), comm_.size());
        Tensor all = empty(all_shape, {mine.dtype()});
        comm_.all_gather(mine, all);
        c.optimizer.emplace_back(kErrorFeedback + named[i].first, all);
      }
      Tensor q = data_parallel_->warm_start(i);
      if (q.defined()) c.optimizer.emplace_back(kWarmStart + named[i].first, to(q, Device::cpu()));
    }
  }
  return c;
}

void Trainer::restore(const Checkpoint& c) {
  NamedTensors optimizer_state;
  NamedTensors compression_state;
  for (const auto& named : c.optimizer) {
    bool compression =
        named.first.rfind(kErrorFeedback, 0) == 0 || named.first.rfind(kWarmStart, 0) == 0;
    (compression ? compression_state : optimizer_state).push_back(named);
  }
  try {
    model_->load_state_dict(c.model);
    optimizer_->load_state(optimizer_state);
  } catch (const Error& e) {
    throw Error(cat(c.dir, " does not fit this model: ", e.what()));
  }
  if (data_parallel_ && config_.dist.compression.kind != Compression::none) {
    restore_compression(compression_state, c.dir);
  }
  step_ = c.step;
  data_position_ = c.data_position;
  dropout_seed_ = c.rng_seed;
  dropout_gen_ = Generator(rank_seed(c.rng_seed, comm_.rank()));
  dropout_gen_.set_offset(c.rng_offset);
  bad_steps_ = c.bad_steps;
}

double unigram_bits(const CorpusSplit& data, std::int64_t vocab_size) {
  std::vector<double> counts(static_cast<std::size_t>(vocab_size), 1.0);
  for (std::uint16_t t : data.train.tokens) counts[t] += 1;
  double total = static_cast<double>(data.train.size() + vocab_size);
  double bits = 0;
  for (std::uint16_t t : data.val.tokens) bits -= std::log2(counts[t] / total);
  return bits / static_cast<double>(std::max<std::int64_t>(1, data.val.size()));
}

RunPlan plan_run(const TrainConfig& config, std::ostream& log) {
  RunPlan plan;
  plan.data = load_training_data(config);
  check_run_environment(config);
  plan.resume = load_latest_checkpoint(config.train.out_dir, log);
  if (plan.resume) check_same_model(plan.resume->config, config, plan.resume->dir);
  return plan;
}

void run_training(const TrainConfig& config, RunPlan plan, std::ostream& log, Communicator& comm) {
  const RunConfig& t = config.train;
  const std::optional<Checkpoint>& resume = plan.resume;
  bool writer = comm.rank() == 0;
  std::ostream silent(nullptr);
  std::ostream& out = writer ? log : silent;
  std::int64_t resume_step = resume ? resume->step : 0;
  Tensor steps = from_data<std::int64_t>({resume_step, -resume_step}, {2});
  comm.all_reduce(steps, ReduceOp::max);
  if (steps.data<std::int64_t>()[0] != resume_step ||
      steps.data<std::int64_t>()[1] != -resume_step) {
    throw Error(cat("the ranks found different checkpoints in train.out_dir \"", t.out_dir,
                    "\" (this rank: ", resume ? resume->dir : "none",
                    "); every rank must see the same out_dir, on a shared filesystem"));
  }
  if (writer) {
    fs::create_directories(t.out_dir);
    remove_partial_checkpoints(t.out_dir);
  }
  double baseline = unigram_bits(plan.data, config.model.vocab_size);
  bool bytes = config.data.format == DataFormat::bytes;
  const char* unit = bytes ? "bits/byte" : "bits/token";
  Trainer trainer(config, std::move(plan.data), comm);
  if (resume) {
    trainer.restore(*resume);
    out << "resuming from " << resume->dir << " (step " << resume->step << ")\n";
  }
  std::optional<MetricsLog> metrics;
  if (writer) {
    write_file_atomically((fs::path(t.out_dir) / "config.json").string(),
                          to_json(config).dump(2) + "\n");
    metrics.emplace((fs::path(t.out_dir) / "metrics.jsonl").string(), trainer.steps_done());
  }
  auto write_metrics = [&](const json& record) {
    if (metrics) metrics->write(record);
  };

  const DataConfig& d = config.data;
  out << cat("longnet-train: LongNetLM, ", config.model.decoder_layers, " layers, d_model ",
             config.model.d_model, ", ", config.model.num_heads, " heads, ",
             parameter_count(trainer.model()), " parameters; attention ",
             attention_text(config.model), "\n");
  out << cat("  data ", trainer.data().train.source, ": ", trainer.data().train.size(),
             " training and ", trainer.data().val.size(), " validation tokens; ", d.batch_size,
             " x ", d.seq_len, " tokens x ", t.grad_accum, " micro-batches",
             comm.size() > 1 ? cat(" x ", comm.size(), " ranks (", comm.backend(), ")") : "",
             " per step; ", t.steps, " steps on ", t.device.is_cpu() ? "the cpu" : "cuda", "\n");
  char line[256];
  std::snprintf(line, sizeof line, "  unigram baseline on the validation split: %.3f %s\n",
                baseline, unit);
  out << line;
  if (trainer.steps_done() >= t.steps) {
    out << "train.steps (" << t.steps << ") already reached at step " << trainer.steps_done()
        << "; raise train.steps to train further\n";
    return;
  }

  auto evaluate = [&] {
    EvalStats e = trainer.evaluate();
    json record = {{"step", e.step}, {"val_loss", e.val_loss}};
    double bits = e.val_bpb.value_or(e.val_loss / std::numbers::ln2);
    if (e.val_bpb) record["val_bpb"] = *e.val_bpb;
    write_metrics(record);
    std::snprintf(line, sizeof line, "eval step %lld | val loss %.4f | %.3f %s (unigram %.3f)\n",
                  static_cast<long long>(e.step), e.val_loss, bits, unit, baseline);
    out << line << std::flush;
  };
  auto save = [&] {
    Checkpoint c = trainer.checkpoint();  // collective: every rank takes part
    if (!writer) return;
    std::string dir = save_checkpoint(t.out_dir, c, t.keep_ckpts);
    out << "saved " << dir << "\n" << std::flush;
  };

  Clock::time_point start = Clock::now();
  std::int64_t first = trainer.steps_done();
  while (trainer.steps_done() < t.steps) {
    StepStats s;
    try {
      s = trainer.step();
    } catch (const NumericalFault&) {
      write_metrics({{"step", trainer.steps_done()}, {"skipped", true}});
      throw;
    }
    json record = {{"step", s.step},
                   {"loss", s.loss},
                   {"lr", s.lr},
                   {"grad_norm", s.grad_norm},
                   {"tokens_per_s", static_cast<double>(s.tokens) / s.seconds},
                   {"peak_rss_mb", peak_rss_mb()},
                   {"bytes_sent", s.bytes_sent},
                   {"ranks", trainer.ranks()}};
    if (t.device.is_cuda()) {
      record["peak_gpu_mb"] = static_cast<double>(cuda::memory_stats(t.device.index).peak_bytes) /
                              static_cast<double>(1 << 20);
    }
    if (s.skipped) record["skipped"] = true;
    write_metrics(record);
    bool last = s.step == t.steps;
    if (s.skipped) {
      out << "step " << s.step << ": loss " << s.loss << ", gradient norm " << s.grad_norm
          << " is not finite; update skipped\n";
    }
    if (s.step % t.log_every == 0 || s.step == first + 1 || last) {
      double elapsed = seconds_since(start);
      double done = static_cast<double>(s.step - first);
      double rate = done * static_cast<double>(s.tokens) / elapsed;
      double eta = elapsed / done * static_cast<double>(t.steps - s.step);
      std::snprintf(line, sizeof line,
                    "step %6lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s | ETA %s\n",
                    static_cast<long long>(s.step), static_cast<long long>(t.steps), s.loss, s.lr,
                    s.grad_norm, rate_text(rate).c_str(), duration_text(eta).c_str());
      out << line << std::flush;
    }
    if ((t.eval_every > 0 && s.step % t.eval_every == 0) || last) evaluate();
    if ((t.ckpt_every > 0 && s.step % t.ckpt_every == 0) || last) save();
  }
  out << "done in " << duration_text(seconds_since(start)) << "; checkpoints and metrics.jsonl in "
      << t.out_dir << "\n";
}

void Trainer::restore_compression(const NamedTensors& state, const std::string& dir) {
  auto named = model_->named_parameters();
  auto index_of = [&](const std::string& key, const char* prefix) {
    std::string name = key.substr(std::string(prefix).size());
    auto at =
        std::find_if(named.begin(), named.end(), [&](const auto& p) { return p.first == name; });
    LN_CHECK(at != named.end(), dir, ": compression state \"", key,
             "\" names no parameter of this model");
    return static_cast<std::size_t>(at - named.begin());
  };
  for (const auto& [key, t] : state) {
    if (key.rfind(kWarmStart, 0) == 0) {
      if (config_.dist.compression.kind == Compression::powersgd) {
        data_parallel_->set_warm_start(index_of(key, kWarmStart), t);
      }
      continue;
    }
    std::size_t i = index_of(key, kErrorFeedback);
    // The same rank count: each rank continues with its own residual, exactly. Another: the
    // ranks still owe the saved mass (the mean of the saved residuals), all on rank 0 as P
    // times it, so that the average over this run's P ranks owes the same.
    if (t.size(0) == comm_.size()) {
      data_parallel_->set_error_feedback(i, squeeze(narrow(t, 0, comm_.rank(), 1), 0));
    } else {
      Tensor mean = mul(sum(t, {0}), 1.0 / static_cast<double>(t.size(0)));
      data_parallel_->set_error_feedback(
          i, comm_.rank() == 0 ? mul(mean, static_cast<double>(comm_.size())) : zeros_like(mean));
    }
  }
}

std::unique_ptr<Communicator> run_communicator(std::unique_ptr<Communicator> launched,
                                               TrainConfig& config) {
  std::unique_ptr<Communicator> comm = std::move(launched);
  if (comm->size() > 1 && config.train.device.is_cuda()) {
    // One GPU per process of a node; GPU tensors move through NCCL, CPU ones through MPI. A
    // launcher that shows each process only its own GPU leaves it cuda:0.
    int gpus = cuda::device_count();
    int gpu = gpus == 1 ? 0 : local_rank(*comm);
    LN_CHECK(gpu < gpus, "rank ", comm->rank(), " is process ", gpu,
             " of its node and needs cuda:", gpu, ", but the node has ", gpus,
             " CUDA device(s); launch at most one process per GPU");
    config.train.device = Device::cuda(gpu);
    comm = make_nccl_communicator(std::move(comm), gpu);
  }
  comm->set_timeout(config.timeout_s);
  return comm;
}

}  // namespace longnet
