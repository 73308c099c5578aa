#include "train/config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tensor/cuda/runtime.h"
#include "train/json_reader.h"

namespace longnet {

using nlohmann::json;

namespace {

// Runs parse, turning any Error into a ConfigError (the message already names the key).
template <class F>
auto config_step(F&& parse) {
  try {
    return parse();
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
}

void require(bool ok, const std::string& where, const std::string& key, const std::string& what) {
  if (!ok) throw ConfigError(cat(where, ": \"", key, "\" ", what));
}

LongNetConfig parse_model(const JsonReader& r) {
  r.only({"vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "segment_lengths",
          "dilation_rates", "attention", "mode", "dropout", "pos", "block_size", "density",
          "pattern", "global_blocks", "layernorm_eps"});
  const std::string& w = r.where();
  LongNetConfig m;
  m.encoder_layers = 0;
  m.vocab_size = r.integer("vocab_size", 256);
  require(m.vocab_size >= 2 && m.vocab_size <= 65536, w, "vocab_size",
          cat("is ", m.vocab_size, "; valid: 2 .. 65536 (token ids are uint16)"));
  m.d_model = r.integer("d_model", 256);
  require(m.d_model >= 1, w, "d_model", cat("is ", m.d_model, "; valid: integers >= 1"));
  m.num_heads = r.integer("n_heads", 4);
  require(m.num_heads >= 1 && m.d_model % m.num_heads == 0, w, "n_heads",
          cat("is ", m.num_heads, "; valid: a divisor of d_model (", m.d_model, ")"));
  m.decoder_layers = r.integer("n_layers", 4);
  require(m.decoder_layers >= 1, w, "n_layers",
          cat("is ", m.decoder_layers, "; valid: integers >= 1"));
  m.d_ff = r.integer("d_ff", 4 * m.d_model);
  require(m.d_ff >= 1, w, "d_ff", cat("is ", m.d_ff, "; valid: integers >= 1"));
  m.dropout = r.number("dropout", 0.0);
  require(m.dropout >= 0 && m.dropout < 1, w, "dropout", cat("is ", m.dropout, "; valid: [0, 1)"));
  m.layernorm_eps = r.number("layernorm_eps", 1e-5);
  require(m.layernorm_eps > 0, w, "layernorm_eps",
          cat("is ", m.layernorm_eps, "; valid: numbers > 0"));
  m.position = parse_position_encoding(r.choice("pos", "rope", {"rope", "xpos", "none"}));

  std::string kind = r.choice("attention", "dilated", {"dilated", "dense", "block_sparse", "auto"});
  bool dilated = kind == "dilated" || kind == "auto";
  for (const char* key : {"segment_lengths", "dilation_rates", "mode"}) {
    require(dilated || !r.has(key), w, key,
            cat("applies to dilated attention only (attention is \"", kind, "\")"));
  }
  for (const char* key : {"block_size", "density", "pattern", "global_blocks"}) {
    require(kind == "block_sparse" || !r.has(key), w, key,
            cat("applies to block_sparse attention only (attention is \"", kind, "\")"));
  }
  // The decoder makes its self-attention causal itself.
  if (kind == "dense") {
    m.attention = DenseAttentionConfig{};
  } else if (kind == "block_sparse") {
    m.attention = BlockSparseConfig{
        parse_block_pattern(
            r.choice("pattern", "local_window",
                     {"local_window", "dilated", "global_local", "content_adaptive"})),
        r.integer("block_size", 64), r.number("density", 0.25), r.integer("global_blocks", 1)};
  } else {
    std::vector<std::int64_t> segments = r.integers("segment_lengths");
    std::vector<std::int64_t> rates = r.integers("dilation_rates");
    require(segments.size() == rates.size(), w, "dilation_rates",
            cat("has ", rates.size(), " entries but segment_lengths has ", segments.size(),
                "; give one dilation rate per segment length"));
    DilatedMode mode = r.choice("mode", "paper", {"paper", "grouped"}) == "paper"
                           ? DilatedMode::paper
                           : DilatedMode::grouped;
    DilatedAttentionConfig d{segments, rates, mode};
    if (kind == "auto") {
      m.attention = AutoAttentionConfig{d};
    } else {
      m.attention = d;
    }
  }
  try {
    m.validate();
  } catch (const Error& e) {
    throw ConfigError(cat(w, ": ", e.what()));
  }
  return m;
}

DataConfig parse_data(const JsonReader& r) {
  r.only({"format", "train_path", "val_path", "val_fraction", "seq_len", "batch_size"});
  const std::string& w = r.where();
  DataConfig d;
  d.format = parse_data_format(r.choice("format", "bytes", {"bytes", "tokens_u16"}));
  d.train_path = r.text("train_path", "", true);
  require(!d.train_path.empty(), w, "train_path", "is empty; give the training data's file");
  d.val_path = r.text("val_path", "");
  require(!(r.has("val_path") && r.has("val_fraction")), w, "val_fraction",
          "and \"val_path\" are both given; give one (val_fraction holds out the end of "
          "train_path)");
  d.val_fraction = r.number("val_fraction", 0.05);
  require(d.val_fraction > 0 && d.val_fraction < 1, w, "val_fraction",
          cat("is ", d.val_fraction, "; valid: (0, 1)"));
  d.seq_len = r.integer("seq_len", 256);
  require(d.seq_len >= 1, w, "seq_len", cat("is ", d.seq_len, "; valid: integers >= 1"));
  d.batch_size = r.integer("batch_size", 8);
  require(d.batch_size >= 1, w, "batch_size", cat("is ", d.batch_size, "; valid: integers >= 1"));
  return d;
}

OptimConfig parse_optim(const JsonReader& r) {
  r.only({"lr", "betas", "eps", "weight_decay", "grad_clip", "warmup_steps", "schedule",
          "min_lr_ratio"});
  const std::string& w = r.where();
  OptimConfig o;
  o.adamw.lr = r.number("lr", 1e-3);
  require(o.adamw.lr > 0 && o.adamw.lr < 10, w, "lr", cat("is ", o.adamw.lr, "; valid: (0, 10)"));
  std::vector<double> betas = r.numbers("betas", 2, {0.9, 0.95});
  for (double b : betas) {
    require(b >= 0 && b < 1, w, "betas", cat("holds ", b, "; valid: two numbers in [0, 1)"));
  }
  o.adamw.beta1 = betas[0];
  o.adamw.beta2 = betas[1];
  o.adamw.eps = r.number("eps", 1e-8);
  require(o.adamw.eps > 0, w, "eps", cat("is ", o.adamw.eps, "; valid: numbers > 0"));
  o.adamw.weight_decay = r.number("weight_decay", 0.1);
  require(o.adamw.weight_decay >= 0 && o.adamw.weight_decay < 1, w, "weight_decay",
          cat("is ", o.adamw.weight_decay, "; valid: [0, 1)"));
  o.grad_clip = r.number("grad_clip", 1.0);
  require(o.grad_clip >= 0, w, "grad_clip",
          cat("is ", o.grad_clip, "; valid: numbers >= 0 (0 turns clipping off)"));
  o.warmup_steps = r.integer("warmup_steps", 0);
  require(o.warmup_steps >= 0, w, "warmup_steps",
          cat("is ", o.warmup_steps, "; valid: integers >= 0"));
  o.schedule = parse_schedule(r.choice("schedule", "cosine", {"cosine", "linear", "constant"}));
  o.min_lr_ratio = r.number("min_lr_ratio", 0.1);
  require(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1, w, "min_lr_ratio",
          cat("is ", o.min_lr_ratio, "; valid: [0, 1]"));
  return o;
}

RunConfig parse_run(const JsonReader& r) {
  r.only({"steps", "seed", "out_dir", "eval_every", "eval_batches", "ckpt_every", "keep_ckpts",
          "device", "precision", "recompute", "ffn_chunk", "grad_accum", "log_every",
          "max_bad_steps"});
  const std::string& w = r.where();
  RunConfig t;
  auto at_least = [&](const char* key, std::int64_t fallback, std::int64_t low, bool required) {
    std::int64_t value = r.integer(key, fallback, required);
    require(value >= low, w, key, cat("is ", value, "; valid: integers >= ", low));
    return value;
  };
  t.steps = at_least("steps", 0, 1, true);
  std::int64_t seed = at_least("seed", 1, 0, false);
  t.seed = static_cast<std::uint64_t>(seed);
  t.out_dir = r.text("out_dir", "", true);
  require(!t.out_dir.empty(), w, "out_dir", "is empty; give a directory for checkpoints and logs");
  t.eval_every = at_least("eval_every", 100, 0, false);
  t.eval_batches = at_least("eval_batches", 8, 1, false);
  t.ckpt_every = at_least("ckpt_every", 100, 0, false);
  t.keep_ckpts = at_least("keep_ckpts", 3, 1, false);
  std::string device = r.choice("device", "cpu", {"cpu", "cuda"});
  t.device = device == "cpu" ? Device::cpu() : Device::cuda(0);
  t.recompute = r.flag("recompute", false);
  t.ffn_chunk = at_least("ffn_chunk", 0, 0, false);
  t.precision = r.choice("precision", "f32", {"f32", "bf16"}) == "f32" ? DType::f32 : DType::bf16;
  t.grad_accum = at_least("grad_accum", 1, 1, false);
  t.log_every = at_least("log_every", 10, 1, false);
  t.max_bad_steps = at_least("max_bad_steps", 5, 1, false);
  return t;
}

DataParallelConfig parse_dist(const JsonReader& r) {
  r.only({"bucket_mb", "first_bucket_mb", "bucket_tensors", "compression", "topk_ratio",
          "powersgd_rank", "sequence_parallel", "timeout_s"});
  const std::string& w = r.where();
  DataParallelConfig d;
  d.bucket_mb = r.number("bucket_mb", 25);
  require(d.bucket_mb > 0, w, "bucket_mb", cat("is ", d.bucket_mb, "; valid: numbers > 0"));
  d.first_bucket_mb = r.number("first_bucket_mb", 1);
  require(d.first_bucket_mb > 0, w, "first_bucket_mb",
          cat("is ", d.first_bucket_mb, "; valid: numbers > 0"));
  d.bucket_tensors = r.integer("bucket_tensors", 32);
  require(d.bucket_tensors >= 1, w, "bucket_tensors",
          cat("is ", d.bucket_tensors, "; valid: integers >= 1"));
  CompressionConfig& c = d.compression;
  std::string kind = r.choice("compression", "none", {"none", "topk", "powersgd"});
  c.kind = parse_compression(kind);
  for (const auto& [key, owner] :
       {std::pair{"topk_ratio", "topk"}, std::pair{"powersgd_rank", "powersgd"}}) {
    require(kind == owner || !r.has(key), w, key,
            cat("applies to compression \"", owner, "\" only (compression is \"", kind, "\")"));
  }
  c.topk_ratio = r.number("topk_ratio", 0.01);
  require(c.topk_ratio > 0 && c.topk_ratio <= 1, w, "topk_ratio",
          cat("is ", c.topk_ratio, "; valid: (0, 1], the fraction of each bucket sent"));
  c.powersgd_rank = r.integer("powersgd_rank", 4);
  require(c.powersgd_rank >= 1, w, "powersgd_rank",
          cat("is ", c.powersgd_rank, "; valid: integers >= 1"));
  return d;
}

}  // namespace

TrainConfig parse_train_config(const json& j, const std::string& where) {
  return config_step([&] {
    JsonReader r(j, where);
    r.only({"model", "data", "optim", "train", "dist"});
    require(r.has("data"), where, "data", "is missing; it names the training data");
    require(r.has("train"), where, "train", "is missing; it holds steps and out_dir");
    TrainConfig c;
    c.model = parse_model(JsonReader(r.object("model"), where + ": model"));
    c.data = parse_data(JsonReader(r.object("data"), where + ": data"));
    c.optim = parse_optim(JsonReader(r.object("optim"), where + ": optim"));
    c.train = parse_run(JsonReader(r.object("train"), where + ": train"));
    require(c.optim.warmup_steps < c.train.steps, where + ": optim", "warmup_steps",
            cat("is ", c.optim.warmup_steps, " but train.steps is ", c.train.steps,
                "; warm up for fewer steps than the run has"));
    JsonReader dist(r.object("dist"), where + ": dist");
    c.dist = parse_dist(dist);
    c.sequence_parallel = dist.flag("sequence_parallel", false);
    c.timeout_s = dist.number("timeout_s", 600);
    require(c.timeout_s > 0, where + ": dist", "timeout_s",
            cat("is ", c.timeout_s, "; valid: seconds > 0"));
    require(!c.sequence_parallel || c.model.attention.index() != 2, where + ": dist",
            "sequence_parallel",
            "needs dense, dilated or auto attention; block_sparse attention "
            "has no sequence-parallel form");
    return c;
  });
}

TrainConfig load_train_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(cat(path, ": cannot read the configuration: ", std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  json j;
  try {
    j = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw ConfigError(cat(path, ": not valid JSON: ", e.what()));
  }
  return parse_train_config(j, path);
}

json model_json(const LongNetConfig& m) {
  json j = {{"vocab_size", m.vocab_size},
            {"d_model", m.d_model},
            {"n_heads", m.num_heads},
            {"n_layers", m.decoder_layers},
            {"d_ff", m.d_ff},
            {"dropout", m.dropout},
            {"pos", name(m.position)},
            {"layernorm_eps", m.layernorm_eps},
            {"attention", kind_name(m.attention)}};
  auto dilated = [&](const DilatedAttentionConfig& d) {
    j["segment_lengths"] = d.segment_lengths;
    j["dilation_rates"] = d.dilation_rates;
    j["mode"] = d.mode == DilatedMode::paper ? "paper" : "grouped";
  };
  if (const auto* d = std::get_if<DilatedAttentionConfig>(&m.attention)) dilated(*d);
  if (const auto* a = std::get_if<AutoAttentionConfig>(&m.attention)) dilated(a->dilated);
  if (const auto* b = std::get_if<BlockSparseConfig>(&m.attention)) {
    j["pattern"] = name(b->pattern);
    j["block_size"] = b->block_size;
    j["density"] = b->density;
    j["global_blocks"] = b->global_blocks;
  }
  return j;
}

json to_json(const TrainConfig& c) {
  json data = {{"format", data_format_name(c.data.format)},
               {"train_path", c.data.train_path},
               {"seq_len", c.data.seq_len},
               {"batch_size", c.data.batch_size}};
  if (c.data.val_path.empty()) {
    data["val_fraction"] = c.data.val_fraction;
  } else {
    data["val_path"] = c.data.val_path;
  }
  const OptimConfig& o = c.optim;
  json optim = {{"lr", o.adamw.lr},
                {"betas", {o.adamw.beta1, o.adamw.beta2}},
                {"eps", o.adamw.eps},
                {"weight_decay", o.adamw.weight_decay},
                {"grad_clip", o.grad_clip},
                {"warmup_steps", o.warmup_steps},
                {"schedule", schedule_name(o.schedule)},
                {"min_lr_ratio", o.min_lr_ratio}};
  const RunConfig& t = c.train;
  json train = {{"steps", t.steps},
                {"seed", t.seed},
                {"out_dir", t.out_dir},
                {"eval_every", t.eval_every},
                {"eval_batches", t.eval_batches},
                {"ckpt_every", t.ckpt_every},
                {"keep_ckpts", t.keep_ckpts},
                {"device", t.device.is_cpu() ? "cpu" : "cuda"},
                {"precision", name(t.precision)},
                {"recompute", t.recompute},
                {"ffn_chunk", t.ffn_chunk},
                {"grad_accum", t.grad_accum},
                {"log_every", t.log_every},
                {"max_bad_steps", t.max_bad_steps}};
  const DataParallelConfig& d = c.dist;
  json dist = {{"bucket_mb", d.bucket_mb},
               {"first_bucket_mb", d.first_bucket_mb},
               {"bucket_tensors", d.bucket_tensors},
               {"compression", name(d.compression.kind)},
               {"sequence_parallel", c.sequence_parallel},
               {"timeout_s", c.timeout_s}};
  if (d.compression.kind == Compression::topk) dist["topk_ratio"] = d.compression.topk_ratio;
  if (d.compression.kind == Compression::powersgd) {
    dist["powersgd_rank"] = d.compression.powersgd_rank;
  }
  return {{"model", model_json(c.model)},
          {"data", data},
          {"optim", optim},
          {"train", train},
          {"dist", dist}};
}

void check_run_environment(const TrainConfig& config) {
  namespace fs = std::filesystem;
  const std::string& out = config.train.out_dir;
  std::error_code ec;
  fs::path dir = fs::absolute(out, ec);
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) {
      throw ConfigError(cat("train.out_dir \"", out, "\" exists and is not a directory; ",
                            "give a directory (it is created when missing)"));
    }
    if (::access(dir.c_str(), W_OK | X_OK) != 0) {
      throw ConfigError(cat("train.out_dir \"", out, "\" is not writable: ", std::strerror(errno)));
    }
  } else {
    fs::path parent = dir.parent_path();
    while (!parent.empty() && !fs::exists(parent, ec)) parent = parent.parent_path();
    if (!fs::is_directory(parent, ec) || ::access(parent.c_str(), W_OK | X_OK) != 0) {
      throw ConfigError(cat("train.out_dir \"", out, "\" cannot be created: ", parent.string(),
                            " is not a writable directory"));
    }
  }
  if (!config.train.device.is_cpu()) {
    if (cuda::device_count() == 0) {
      throw ConfigError(
          cat("train.device is \"cuda\" but ",
              cuda::built_with_cuda() ? "no GPU is visible" : "this build has no CUDA support",
              "; use \"cpu\""));
    }
  }
}

CorpusSplit load_training_data(const TrainConfig& config) {
  const DataConfig& d = config.data;
  auto load = [&](const std::string& key, const std::string& path) {
    return config_step([&] {
      try {
        return load_corpus(path, d.format);
      } catch (const Error& e) {
        throw ConfigError(cat("data.", key, ": ", e.what()));
      }
    });
  };
  CorpusSplit split;
  if (d.val_path.empty()) {
    TokenCorpus all = load("train_path", d.train_path);
    try {
      split = split_corpus(std::move(all), d.val_fraction);
    } catch (const Error& e) {
      throw ConfigError(cat("data.val_fraction: ", e.what()));
    }
  } else {
    split.train = load("train_path", d.train_path);
    split.val = load("val_path", d.val_path);
  }
  for (const auto& [key, part] :
       {std::pair{"train_path", &split.train},
        std::pair{d.val_path.empty() ? "val_fraction" : "val_path", &split.val}}) {
    if (part->size() <= d.seq_len) {
      throw ConfigError(cat("data.seq_len is ", d.seq_len, " but ", part->source, " (data.", key,
                            ") holds ", part->size(), " tokens; a window needs seq_len + 1: ",
                            "use a shorter seq_len or more data"));
    }
    if (part->vocab_used() > config.model.vocab_size) {
      throw ConfigError(cat("model.vocab_size is ", config.model.vocab_size, " but ", part->source,
                            " holds token id ", part->vocab_used() - 1,
                            "; use vocab_size >= ", part->vocab_used()));
    }
  }
  return split;
}

}  // namespace longnet
