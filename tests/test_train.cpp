// longnet-train and longnet-generate: configuration checks, checkpoints, exact resume after
// SIGKILL, corrupt-checkpoint fallback, numerical faults and deterministic sampling.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "dist/communicator.h"
#include "tensor/copy.h"
#include "tests/process.h"
#include "tests/temp_dir.h"
#include "train/generate.h"
#include "train/trainer.h"

namespace longnet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::exit_code;
using testing::mpirun_path;
using testing::read_text;
using testing::run;
using testing::spawn;
using testing::TempDir;

// Text with structure a small model picks up quickly: sentences from a few words, chosen
// by a fixed LCG.
std::string toy_corpus(std::size_t bytes) {
  const char* words[] = {"the ",  "lord ", "said ",  "unto ", "moses ", "and ",
                         "land ", "of ",   "egypt ", "went ", "out ",   "into "};
  std::string text;
  std::uint32_t state = 12345;
  while (text.size() < bytes) {
    state = state * 1664525U + 1013904223U;
    text += words[(state >> 16) % 12];
    if ((state >> 8) % 7 == 0) text += ".\n";
  }
  text.resize(bytes);
  return text;
}

// A small, fast configuration over a toy corpus in dir.
json toy_config(const TempDir& dir) {
  if (!fs::exists(dir.file("corpus.txt")))
    std::ofstream(dir.file("corpus.txt")) << toy_corpus(20000);
  json j = json::parse(R"({
    "model": {"d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64,
              "segment_lengths": [8, 16], "dilation_rates": [1, 2], "dropout": 0.1},
    "data": {"seq_len": 16, "batch_size": 4},
    "optim": {"lr": 0.003, "warmup_steps": 5},
    "train": {"steps": 30, "eval_every": 10, "eval_batches": 2, "ckpt_every": 10,
              "keep_ckpts": 2, "log_every": 10}
  })");
  j["data"]["train_path"] = dir.file("corpus.txt");
  j["train"]["out_dir"] = dir.file("run");
  return j;
}

// base with patch's keys merged in, section by section (RFC 7386).
json merged(json base, const json& patch) {
  base.merge_patch(patch);
  return base;
}

std::string config_error(const json& j) {
  try {
    TrainConfig c = parse_train_config(j, "config.json");
    check_run_environment(c);
    load_training_data(c);
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a ConfigError: ") + e.what();
  }
  return "no error";
}

std::string tool(const char* variable) {
  const char* path = std::getenv(variable);
  std::string unset = std::string(variable) + " is not set (run through meson test)";
  REQUIRE_MESSAGE(path != nullptr, unset);
  return path;
}

void write_config(const TempDir& dir, const json& config, const std::string& name = "config.json") {
  std::ofstream(dir.file(name)) << config.dump(2);
}

// The records of a metrics.jsonl without the timing fields, which differ between runs.
std::vector<json> deterministic_metrics(const std::string& path) {
  std::vector<json> records;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    json r = json::parse(line);
    r.erase("tokens_per_s");
    r.erase("peak_rss_mb");
    records.push_back(r);
  }
  return records;
}

}  // namespace

TEST_SUITE("train") {
  TEST_CASE("a valid configuration parses and round-trips through to_json") {
    TempDir dir;
    TrainConfig c = parse_train_config(toy_config(dir), "config.json");
    CHECK(c.model.d_model == 32);
    CHECK(c.model.encoder_layers == 0);
    CHECK(c.data.val_fraction == 0.05);  // defaults filled in
    CHECK(c.optim.adamw.beta2 == 0.95);
    CHECK(c.train.grad_accum == 1);
    json again = to_json(parse_train_config(to_json(c), "again"));
    CHECK(again == to_json(c));
    CHECK(again["dist"] == json::parse(R"({"bucket_mb": 25.0, "first_bucket_mb": 1.0,
                                            "bucket_tensors": 32, "compression": "none",
                                            "sequence_parallel": false,
                                            "timeout_s": 600.0})"));
    for (const char* dist :
         {R"({"compression": "topk", "topk_ratio": 0.05})",
          R"({"compression": "powersgd", "powersgd_rank": 2})", R"({"sequence_parallel": true})"}) {
      TrainConfig d =
          parse_train_config(merged(toy_config(dir), {{"dist", json::parse(dist)}}), "d");
      CHECK(to_json(parse_train_config(to_json(d), "again")) == to_json(d));
    }
  }

  TEST_CASE("every example configuration in configs/ is valid") {
    const char* root = std::getenv("LONGNET_SOURCE_ROOT");
    REQUIRE_MESSAGE(root != nullptr, "LONGNET_SOURCE_ROOT is not set (run through meson test)");
    int count = 0;
    for (const auto& entry : fs::directory_iterator(fs::path(root) / "configs")) {
      CAPTURE(entry.path().string());
      CHECK_NOTHROW(load_train_config(entry.path().string()));
      ++count;
    }
    CHECK(count >= 3);
  }

  TEST_CASE("every configuration fault is an error naming the key and what is valid") {
    TempDir dir;
    json base = toy_config(dir);
    std::ofstream(dir.file("not-a-dir")) << "x";
    struct Case {
      json patch;
      std::vector<std::string> expected;
    };
    const std::vector<Case> cases = {
        {{{"modle", json::object()}}, {"unknown key \"modle\"", "model"}},
        {{{"model", {{"d_modle", 3}}}}, {"config.json: model", "unknown key \"d_modle\""}},
        {{{"model", {{"d_model", "big"}}}}, {"\"d_model\" must be an integer"}},
        {{{"model", {{"n_heads", 3}}}}, {"n_heads", "divisor of d_model (32)"}},
        {{{"model", {{"dilation_rates", {1, 2, 4}}}}},
         {"dilation_rates", "3 entries but segment_lengths has 2"}},
        {{{"model", {{"segment_lengths", {8, 0}}}}}, {"model", "segment"}},
        {{{"model", {{"dropout", 1.5}}}}, {"dropout", "[0, 1)"}},
        {{{"model", {{"attention", "sparse"}}}}, {"attention", "dilated, dense, block_sparse"}},
        {{{"model", {{"pos", "alibi"}}}}, {"pos", "rope, xpos, none"}},
        {{{"model", {{"mode", "mixed"}}}}, {"mode", "paper, grouped"}},
        {{{"model", {{"attention", "dense"}}}}, {"segment_lengths", "dilated attention only"}},
        {{{"model", {{"vocab_size", 100}}}}, {"vocab_size is 100", "vocab_size >= 122"}},
        {{{"data", {{"format", "words"}}}}, {"format", "bytes, tokens_u16"}},
        {{{"data", {{"train_path", dir.file("missing.txt")}}}}, {"data.train_path", "missing.txt"}},
        {{{"data", {{"seq_len", 20000}}}}, {"data.seq_len is 20000", "tokens"}},
        {{{"data", {{"val_path", dir.file("corpus.txt")}, {"val_fraction", 0.1}}}},
         {"val_fraction", "val_path"}},
        {{{"data", {{"batch_size", 0}}}}, {"batch_size", ">= 1"}},
        {{{"optim", {{"betas", {0.9}}}}}, {"betas", "list of 2 numbers"}},
        {{{"optim", {{"lr", -1}}}}, {"\"lr\"", "(0, 10)"}},
        {{{"optim", {{"schedule", "step"}}}}, {"schedule", "cosine, linear, constant"}},
        {{{"train", {{"steps", 0}}}}, {"steps", ">= 1"}},
        {{{"train", {{"steps", 5}}}}, {"warmup_steps", "is 5 but train.steps is 5"}},
        {{{"train", {{"device", "tpu"}}}}, {"device", "cpu, cuda"}},
        {{{"train", {{"precision", "f16"}}}}, {"precision", "f32, bf16"}},
        {{{"train", {{"out_dir", dir.file("not-a-dir")}}}}, {"train.out_dir", "not a directory"}},
        {{{"train", {{"out_dir", dir.file("not-a-dir") + "/run"}}}},
         {"train.out_dir", "cannot be created"}},
        {{{"dist", {{"ranks", 2}}}}, {"dist", "unknown key \"ranks\""}},
        {{{"dist", {{"bucket_mb", 0}}}}, {"dist", "bucket_mb", "numbers > 0"}},
        {{{"dist", {{"first_bucket_mb", -1}}}}, {"first_bucket_mb", "numbers > 0"}},
        {{{"dist", {{"bucket_tensors", 0}}}}, {"bucket_tensors", "integers >= 1"}},
        {{{"dist", {{"compression", "zip"}}}}, {"compression", "none, topk, powersgd"}},
        {{{"dist", {{"topk_ratio", 0.1}}}},
         {"topk_ratio", "applies to compression \"topk\" only (compression is \"none\")"}},
        {{{"dist", {{"compression", "topk"}, {"topk_ratio", 1.5}}}}, {"topk_ratio", "(0, 1]"}},
        {{{"dist", {{"compression", "powersgd"}, {"powersgd_rank", 0}}}},
         {"powersgd_rank", "integers >= 1"}},
        {{{"dist", {{"sequence_parallel", 1}}}}, {"sequence_parallel"}},
        {{{"dist", {{"timeout_s", 0}}}}, {"timeout_s", "seconds > 0"}},
        {{{"model",
           {{"attention", "block_sparse"},
            {"segment_lengths", nullptr},
            {"dilation_rates", nullptr}}},
          {"dist", {{"sequence_parallel", true}}}},
         {"sequence_parallel", "block_sparse attention has no sequence-parallel form"}},
    };
    for (const auto& c : cases) {
      std::string message = config_error(merged(base, c.patch));
      CAPTURE(c.patch.dump());
      CAPTURE(message);
      CHECK(message.find("not a ConfigError") == std::string::npos);
      for (const auto& part : c.expected) CHECK(message.find(part) != std::string::npos);
    }
    CHECK(config_error(base) == "no error");
  }

  TEST_CASE("a token shard's ids must fit the vocabulary") {
    TempDir dir;
    std::vector<std::int32_t> header(256, 0);
    header[0] = 20240520;
    header[1] = 1;
    header[2] = 1000;
    std::ofstream shard(dir.file("tokens.bin"), std::ios::binary);
    shard.write(reinterpret_cast<const char*>(header.data()), 1024);
    for (std::uint16_t i = 0; i < 1000; ++i) {
      std::uint16_t t = i % 2 ? 3000 : i;
      shard.write(reinterpret_cast<const char*>(&t), 2);
    }
    shard.close();
    json j = merged(toy_config(dir),
                    {{"data", {{"format", "tokens_u16"}, {"train_path", dir.file("tokens.bin")}}}});
    std::string message = config_error(j);
    CHECK(message.find("vocab_size is 256") != std::string::npos);
    CHECK(message.find("token id 3000") != std::string::npos);
    CHECK(message.find("vocab_size >= 3001") != std::string::npos);
    CHECK(config_error(merged(j, {{"model", {{"vocab_size", 3001}}}})) == "no error");
  }

  TEST_CASE("longnet-train exits with 2 on a bad configuration and writes nothing") {
    TempDir dir;
    json bad = merged(toy_config(dir), {{"data", {{"seq_len", 30000}}}});
    write_config(dir, bad);
    CHECK(run(tool("LONGNET_TRAIN_TOOL"), {dir.file("config.json")}, dir.file("log.txt")) == 2);
    CHECK(read_text(dir.file("log.txt")).find("data.seq_len is 30000") != std::string::npos);
    CHECK_FALSE(fs::exists(dir.file("run")));

    write_config(dir, toy_config(dir));
    CHECK(run(tool("LONGNET_TRAIN_TOOL"), {"--check", dir.file("config.json")},
              dir.file("check.txt")) == 0);
    CHECK(read_text(dir.file("check.txt")).find("ok") != std::string::npos);
    CHECK_FALSE(fs::exists(dir.file("run")));

    std::ofstream(dir.file("broken.json")) << "{\"model\": ";
    CHECK(run(tool("LONGNET_TRAIN_TOOL"), {dir.file("broken.json")}, dir.file("broken.txt")) == 2);
    CHECK(read_text(dir.file("broken.txt")).find("not valid JSON") != std::string::npos);
  }

  TEST_CASE("a checkpoint restores the run exactly") {
    TempDir dir;
    TrainConfig config = parse_train_config(toy_config(dir), "config.json");
    Trainer original(config, load_training_data(config));
    for (int i = 0; i < 3; ++i) original.step();
    fs::create_directories(dir.file("run"));
    std::string saved = save_checkpoint(dir.file("run"), original.checkpoint(), 2);
    CHECK(fs::path(saved).filename() == "ckpt-00000003");

    Checkpoint loaded = load_checkpoint(saved);
    CHECK(loaded.step == 3);
    CHECK(loaded.data_position == 3);
    CHECK(loaded.config == to_json(config));
    CHECK(loaded.model.size() == original.model().state_dict().size());
    CHECK(loaded.model[0].first == "embed_tokens.weight");

    Trainer resumed(config, load_training_data(config));
    resumed.restore(loaded);
    for (int i = 0; i < 3; ++i) {
      StepStats a = original.step();
      StepStats b = resumed.step();
      CHECK(a.step == b.step);
      CHECK(a.loss == b.loss);  // bit for bit
      CHECK(a.grad_norm == b.grad_norm);
    }
    CHECK(original.evaluate().val_loss == resumed.evaluate().val_loss);
  }

  TEST_CASE("bf16 mixed precision trains: the loss falls and the weights stay f32") {
    TempDir dir;
    json j = merged(toy_config(dir), {{"train", {{"precision", "bf16"}, {"steps", 20}}}});
    TrainConfig config = parse_train_config(j, "config.json");
    CHECK(to_json(config)["train"]["precision"] == "bf16");
    Trainer trainer(config, load_training_data(config));
    double first = trainer.evaluate().val_loss;
    for (int i = 0; i < 20; ++i) CHECK_FALSE(trainer.step().skipped);
    double last = trainer.evaluate().val_loss;
    CHECK(last < first - 0.5);
    for (const auto& p : trainer.model().parameters()) CHECK(p.dtype() == DType::f32);
    // The checkpoint holds the f32 master weights.
    Checkpoint c = trainer.checkpoint();
    for (const auto& [name, value] : c.model) CHECK(value.dtype() == DType::f32);
  }

  TEST_CASE("recomputation trains exactly as keeping the activations does") {
    TempDir dir;
    TrainConfig plain = parse_train_config(toy_config(dir), "config.json");
    TrainConfig recompute =
        parse_train_config(merged(toy_config(dir), {{"train", {{"recompute", true}}}}), "r.json");
    CHECK(to_json(recompute)["train"]["recompute"] == true);
    Trainer a(plain, load_training_data(plain));
    Trainer b(recompute, load_training_data(recompute));
    for (int i = 0; i < 3; ++i) {
      StepStats sa = a.step();
      StepStats sb = b.step();
      CHECK(sb.loss == sa.loss);
      CHECK(sb.grad_norm == sa.grad_norm);
    }
  }

  TEST_CASE("only the newest keep_ckpts checkpoints stay; partial ones are removed") {
    TempDir dir;
    TrainConfig config = parse_train_config(toy_config(dir), "config.json");
    Trainer trainer(config, load_training_data(config));
    std::string out = dir.file("run");
    fs::create_directories(out);
    for (int i = 0; i < 4; ++i) {
      trainer.step();
      save_checkpoint(out, trainer.checkpoint(), 2);
    }
    CHECK(list_checkpoints(out) ==
          std::vector<std::string>{out + "/ckpt-00000004", out + "/ckpt-00000003"});
    fs::create_directories(out + "/ckpt-00000005.tmp");
    std::ofstream(out + "/ckpt-00000005.tmp/model.safetensors") << "half";
    CHECK(list_checkpoints(out).size() == 2);
    remove_partial_checkpoints(out);
    CHECK_FALSE(fs::exists(out + "/ckpt-00000005.tmp"));
  }

  TEST_CASE("a corrupt or truncated checkpoint is reported and the previous one used") {
    TempDir dir;
    TrainConfig config = parse_train_config(toy_config(dir), "config.json");
    Trainer trainer(config, load_training_data(config));
    std::string out = dir.file("run");
    fs::create_directories(out);
    for (int i = 0; i < 3; ++i) {
      trainer.step();
      save_checkpoint(out, trainer.checkpoint(), 3);
    }
    auto latest_step = [&](std::string& warnings) {
      std::ostringstream log;
      std::optional<Checkpoint> c = load_latest_checkpoint(out, log);
      warnings = log.str();
      return c ? c->step : -1;
    };
    std::string warnings;
    CHECK(latest_step(warnings) == 3);
    CHECK(warnings.empty());

    SUBCASE("a flipped byte") {
      std::fstream f(out + "/ckpt-00000003/model.safetensors",
                     std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(-5, std::ios::end);
      char c = 0;
      f.get(c);
      f.seekp(-5, std::ios::end);
      f.put(static_cast<char>(c ^ 0x40));
      f.close();
      CHECK(latest_step(warnings) == 2);
      CHECK(warnings.find("ckpt-00000003") != std::string::npos);
      CHECK(warnings.find("CRC-32") != std::string::npos);
    }
    SUBCASE("a truncated optimizer file") {
      fs::resize_file(out + "/ckpt-00000003/optimizer.safetensors", 100);
      CHECK(latest_step(warnings) == 2);
      CHECK(warnings.find("optimizer.safetensors holds 100 bytes") != std::string::npos);
    }
    SUBCASE("a broken meta.json") {
      std::ofstream(out + "/ckpt-00000003/meta.json") << "{\"format\": ";
      CHECK(latest_step(warnings) == 2);
      CHECK(warnings.find("not valid JSON") != std::string::npos);
    }
    SUBCASE("every checkpoint broken") {
      for (const auto& d : list_checkpoints(out)) fs::remove(d + "/model.safetensors");
      std::ostringstream log;
      CHECK_THROWS_WITH_AS(load_latest_checkpoint(out, log), doctest::Contains("none is usable"),
                           Error);
    }
  }

  TEST_CASE("a resumed run reproduces the uninterrupted run's losses after SIGKILL") {
    TempDir dir;
    json config = merged(
        toy_config(dir),
        {{"train", {{"steps", 400}, {"ckpt_every", 100}, {"eval_every", 50}, {"log_every", 100}}}});
    write_config(dir, config, "whole.json");
    write_config(dir, merged(config, {{"train", {{"out_dir", dir.file("killed")}}}}),
                 "killed.json");
    std::string train = tool("LONGNET_TRAIN_TOOL");
    REQUIRE(run(train, {dir.file("whole.json")}, dir.file("whole.txt")) == 0);

    pid_t pid = spawn(train, {dir.file("killed.json")}, dir.file("killed.txt"));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!fs::exists(dir.file("killed/ckpt-00000100")) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ::kill(pid, SIGKILL);
    REQUIRE_MESSAGE(exit_code(pid) == -SIGKILL, "the run ended before it could be killed");
    std::vector<json> partial = deterministic_metrics(dir.file("killed/metrics.jsonl"));
    CHECK(partial.size() < deterministic_metrics(dir.file("run/metrics.jsonl")).size());

    REQUIRE(run(train, {dir.file("killed.json")}, dir.file("killed.txt")) == 0);
    CHECK(read_text(dir.file("killed.txt")).find("resuming from") != std::string::npos);
    std::vector<json> whole = deterministic_metrics(dir.file("run/metrics.jsonl"));
    std::vector<json> resumed = deterministic_metrics(dir.file("killed/metrics.jsonl"));
    REQUIRE(whole.size() == resumed.size());
    for (std::size_t i = 0; i < whole.size(); ++i) {
      CAPTURE(i);
      CHECK(whole[i] == resumed[i]);
    }
    // One record per step, one per evaluation (every 50 steps).
    CHECK(whole.size() == 400 + 8);
    CHECK(whole.front().contains("grad_norm"));
    CHECK(whole.back().contains("val_bpb"));
    CHECK(whole.back()["val_loss"].get<double>() < whole.front()["loss"].get<double>());
    CHECK(list_checkpoints(dir.file("killed")).size() == 2);
  }

  TEST_CASE("a run resumes only a checkpoint of the same model") {
    TempDir dir;
    json config = merged(toy_config(dir), {{"optim", {{"warmup_steps", 0}}},
                                           {"train", {{"steps", 2}, {"ckpt_every", 1}}}});
    write_config(dir, config);
    std::string train = tool("LONGNET_TRAIN_TOOL");
    REQUIRE(run(train, {dir.file("config.json")}, dir.file("log.txt")) == 0);
    write_config(dir, merged(config, {{"model", {{"d_ff", 96}}}}), "other.json");
    CHECK(run(train, {dir.file("other.json")}, dir.file("other.txt")) == 2);
    std::string message = read_text(dir.file("other.txt"));
    CHECK(message.find("a checkpoint of a different model") != std::string::npos);
    CHECK(message.find("model.d_ff: 64 there, 96 here") != std::string::npos);
  }

  TEST_CASE("NaN losses skip updates, then stop the run with the weights intact") {
    TempDir dir;
    TrainConfig config = parse_train_config(
        merged(toy_config(dir), {{"train", {{"max_bad_steps", 3}}}}), "config.json");
    Trainer trainer(config, load_training_data(config));
    CHECK_FALSE(trainer.step().skipped);
    // Poison the final norm's gain: every logit, loss and gradient becomes NaN.
    Tensor gain;
    for (const auto& [name, p] : trainer.model().named_parameters()) {
      if (name == "layer_norm.weight") gain = p.data();
    }
    REQUIRE(gain.defined());
    fill_(gain, std::nan(""));
    Tensor before = clone(trainer.model().named_parameters().front().second.data());
    for (int i = 0; i < 2; ++i) {
      StepStats s = trainer.step();
      CHECK(s.skipped);
      CHECK(std::isnan(s.loss));
    }
    Tensor after = trainer.model().named_parameters().front().second.data();
    CHECK(before.to_vector<float>() == after.to_vector<float>());  // no update applied
    CHECK_THROWS_WITH_AS(trainer.step(), doctest::Contains("3 steps in a row"), NumericalFault);
  }

  TEST_CASE("under mpirun rank 0 alone writes, and a run resumes on another number of ranks" *
            doctest::skip(mpirun_path().empty())) {
    // Without dropout, 2 ranks and one process with grad_accum 2 train on the same rows
    // (and with a constant learning rate, runs of 4 and 6 steps at the same rates).
    TempDir dir;
    json base =
        merged(toy_config(dir), {{"model", {{"dropout", 0.0}}},
                                 {"optim", {{"warmup_steps", 0}, {"schedule", "constant"}}},
                                 {"train", {{"steps", 4}, {"ckpt_every", 2}, {"eval_every", 2}}}});
    write_config(dir, base, "ranks.json");
    json one = merged(base, {{"train", {{"steps", 6}, {"grad_accum", 2}}}});
    write_config(dir, one, "resumed.json");
    write_config(dir, merged(one, {{"train", {{"out_dir", dir.file("one")}}}}), "one.json");
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    std::string train = tool("LONGNET_TRAIN_TOOL");
    REQUIRE(run(mpirun_path(), {"--oversubscribe", "-np", "2", train, dir.file("ranks.json")},
                dir.file("ranks.txt")) == 0);
    std::string log = read_text(dir.file("ranks.txt"));
    CAPTURE(log);
    CHECK(log.find("micro-batches x 2 ranks (mpi) per step") != std::string::npos);
    CHECK(log.find("step      1/4") == log.rfind("step      1/4"));  // printed once
    CHECK(list_checkpoints(dir.file("run")).size() == 2);
    REQUIRE(run(train, {dir.file("resumed.json")}, dir.file("resumed.txt")) == 0);
    CHECK(read_text(dir.file("resumed.txt")).find("resuming from") != std::string::npos);
    REQUIRE(run(train, {dir.file("one.json")}, dir.file("one.txt")) == 0);

    std::vector<json> resumed = deterministic_metrics(dir.file("run/metrics.jsonl"));
    std::vector<json> alone = deterministic_metrics(dir.file("one/metrics.jsonl"));
    REQUIRE(resumed.size() == alone.size());
    CHECK(resumed.size() == 6 + 3);  // one record per step and per evaluation
    for (std::size_t i = 0; i < resumed.size(); ++i) {
      CAPTURE(i);
      const json& r = resumed[i];
      const json& a = alone[i];
      REQUIRE(r["step"] == a["step"]);
      const char* key = r.contains("loss") ? "loss" : "val_loss";
      CHECK(r[key].get<double>() == doctest::Approx(a[key].get<double>()).epsilon(1e-5));
      if (!r.contains("loss")) continue;
      bool two = r["step"].get<int>() <= 4;
      CHECK(r["ranks"] == (two ? 2 : 1));
      CHECK((r["bytes_sent"].get<std::int64_t>() > 0) == two);
      CHECK(a["ranks"] == 1);
      CHECK(a["bytes_sent"] == 0);
    }
  }

  TEST_CASE("sampling is deterministic for a seed and follows temperature and top-k") {
    TempDir dir;
    TrainConfig config = parse_train_config(toy_config(dir), "config.json");
    Generator init(3);
    LongNetLM model(config.model, init);
    model.eval();
    std::vector<std::int64_t> prompt = {'t', 'h', 'e', ' '};
    SamplingConfig s{1.0, 0, 7};
    auto a = generate(model, prompt, 20, 16, s);
    CHECK(a.size() == 24);
    CHECK(std::equal(prompt.begin(), prompt.end(), a.begin()));
    CHECK(generate(model, prompt, 20, 16, s) == a);
    s.seed = 8;
    CHECK(generate(model, prompt, 20, 16, s) != a);
    // top-k 1 and temperature 0 both pick the most likely token, whatever the seed.
    auto greedy = generate(model, prompt, 10, 16, {0.0, 0, 1});
    CHECK(generate(model, prompt, 10, 16, {1.0, 1, 99}) == greedy);
    CHECK_THROWS_WITH_AS(generate(model, {300}, 1, 16, s), doctest::Contains("vocabulary"), Error);
  }

  TEST_CASE("longnet-generate continues a prompt from a trained run, the same for a seed") {
    TempDir dir;
    write_config(dir, merged(toy_config(dir), {{"train", {{"steps", 20}}}}));
    REQUIRE(run(tool("LONGNET_TRAIN_TOOL"), {dir.file("config.json")}, dir.file("log.txt")) == 0);
    std::string generate_tool = tool("LONGNET_GENERATE_TOOL");
    auto sample = [&](const std::string& seed, const std::string& out) {
      int code = run(generate_tool,
                     {"--checkpoint", dir.file("run"), "--prompt", "the lord", "--tokens", "40",
                      "--top-k", "5", "--seed", seed},
                     dir.file(out));
      CHECK(code == 0);
      return read_text(dir.file(out));
    };
    std::string first = sample("5", "a.txt");
    CHECK(first.rfind("the lord", 0) == 0);
    CHECK(first.size() == 8 + 40 + 1);
    CHECK(sample("5", "b.txt") == first);
    CHECK(sample("6", "c.txt") != first);
    CHECK(run(generate_tool,
              {"--checkpoint", dir.file("nothing"), "--prompt", "x", "--tokens", "1"},
              dir.file("d.txt")) == 1);
    CHECK(read_text(dir.file("d.txt")).find("holds no checkpoint") != std::string::npos);
  }

  TEST_CASE("the unigram baseline is the cross-entropy of validation under training counts") {
    CorpusSplit data;
    data.train.tokens = {0, 0, 0, 1};  // with add-one over vocab 2: p(0) = 4/6, p(1) = 2/6
    data.val.tokens = {0, 1};
    double expected = -(std::log2(4.0 / 6) + std::log2(2.0 / 6)) / 2;
    CHECK(unigram_bits(data, 2) == doctest::Approx(expected).epsilon(1e-12));
  }
}

// A run moves between devices through its checkpoint, and the GPU trains in f32 and bf16
// like the CPU (the same data, dropout masks and initial weights on both).
TEST_SUITE("gpu") {
  // Steps on one trainer and another restored from its checkpoint: the losses agree to the
  // devices' arithmetic differences.
  void check_continues(Trainer & original, Trainer & resumed, const std::string& out, double tol) {
    fs::create_directories(out);
    resumed.restore(load_checkpoint(save_checkpoint(out, original.checkpoint(), 2)));
    for (int i = 0; i < 3; ++i) {
      StepStats a = original.step();
      StepStats b = resumed.step();
      CHECK(a.step == b.step);
      CHECK(b.loss == doctest::Approx(a.loss).epsilon(tol));
      CHECK(b.grad_norm == doctest::Approx(a.grad_norm).epsilon(tol));
    }
    CHECK(resumed.evaluate().val_loss ==
          doctest::Approx(original.evaluate().val_loss).epsilon(tol));
  }

  TEST_CASE("a checkpoint written on the GPU resumes on the CPU, and the other way round") {
    TempDir dir;
    json cpu_json = toy_config(dir);
    json gpu_json = merged(cpu_json, {{"train", {{"device", "cuda"}}}});
    TrainConfig cpu = parse_train_config(cpu_json, "cpu.json");
    TrainConfig gpu = parse_train_config(gpu_json, "gpu.json");
    {
      Trainer on_gpu(gpu, load_training_data(gpu));
      for (int i = 0; i < 3; ++i) on_gpu.step();
      Trainer on_cpu(cpu, load_training_data(cpu));
      check_continues(on_gpu, on_cpu, dir.file("from-gpu"), 1e-4);
    }
    {
      Trainer on_cpu(cpu, load_training_data(cpu));
      for (int i = 0; i < 3; ++i) on_cpu.step();
      Trainer on_gpu(gpu, load_training_data(gpu));
      check_continues(on_cpu, on_gpu, dir.file("from-cpu"), 1e-4);
    }
  }

  TEST_CASE("training on the GPU follows the CPU step for step, in f32 and in bf16") {
    TempDir dir;
    for (const char* precision : {"f32", "bf16"}) {
      CAPTURE(precision);
      json cpu_json = merged(toy_config(dir), {{"train", {{"precision", precision}}}});
      json gpu_json = merged(cpu_json, {{"train", {{"device", "cuda"}}}});
      TrainConfig cpu = parse_train_config(cpu_json, "cpu.json");
      TrainConfig gpu = parse_train_config(gpu_json, "gpu.json");
      Trainer on_cpu(cpu, load_training_data(cpu));
      Trainer on_gpu(gpu, load_training_data(gpu));
      double tol = std::string(precision) == "f32" ? 1e-4 : 3e-2;
      for (int i = 0; i < 5; ++i) {
        StepStats a = on_cpu.step();
        StepStats b = on_gpu.step();
        CHECK(b.loss == doctest::Approx(a.loss).epsilon(tol));
        CHECK(b.grad_norm == doctest::Approx(a.grad_norm).epsilon(tol));
      }
      for (const auto& p : on_gpu.model().parameters()) {
        CHECK(p.dtype() == DType::f32);
        CHECK(p.device().is_cuda());
      }
    }
  }
}

}  // namespace longnet
