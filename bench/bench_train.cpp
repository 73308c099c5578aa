// longnet-bench-train: training throughput of a longnet-train configuration.
//
//   longnet-bench-train --config FILE --steps N [--warmup W (2)]
//
// Builds the configured model and data exactly as longnet-train does, runs W untimed
// optimizer steps, then N timed ones (no evaluation, no checkpoints, nothing written), and
// prints one JSON line: tokens/s (median and overall), step time and peak memory. Under
// mpirun it trains over the ranks as longnet-train does (data or sequence parallel, NCCL
// for GPUs); rank 0 prints, with the rank count and the gradient bytes it sent per step,
// and tokens count every rank's.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/harness.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "train/trainer.h"

namespace {

constexpr const char* kUsage = "usage: longnet-bench-train --config FILE --steps N [--warmup W]\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace longnet;
  std::string config_path;
  std::int64_t steps = 0;
  std::int64_t warmup = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    std::string value = argv[i + 1];
    if (flag == "--config") {
      config_path = value;
    } else if (flag == "--steps" || flag == "--warmup") {
      auto n = bench::parse_positive(value);
      if (!n && !(flag == "--warmup" && value == "0")) {
        std::cerr << "longnet-bench-train: " << flag << " needs a positive integer, got \"" << value
                  << "\"\n"
                  << kUsage;
        return 2;
      }
      (flag == "--steps" ? steps : warmup) = n.value_or(0);
    } else {
      std::cerr << "longnet-bench-train: unknown option " << flag << "\n" << kUsage;
      return 2;
    }
  }
  if (argc % 2 == 0 || config_path.empty() || steps <= 0) {
    std::cerr << kUsage;
    return 2;
  }
  try {
    std::unique_ptr<Communicator> comm = make_communicator();
    TrainConfig config = load_train_config(config_path);
    comm = run_communicator(std::move(comm), config);
    Trainer trainer(config, load_training_data(config), *comm);
    for (std::int64_t i = 0; i < warmup; ++i) trainer.step();
    std::vector<double> seconds;
    std::int64_t tokens = 0;
    std::int64_t bytes_sent = 0;
    auto mallocs = [&] {
      return config.train.device.is_cuda()
                 ? cuda::memory_stats(config.train.device.index).device_allocations
                 : std::int64_t{0};
    };
    std::int64_t mallocs_before = mallocs();
    auto start = bench::Clock::now();
    for (std::int64_t i = 0; i < steps; ++i) {
      StepStats s = trainer.step();
      seconds.push_back(s.seconds);
      tokens += s.tokens;
      bytes_sent += s.bytes_sent;
    }
    double total = std::chrono::duration<double>(bench::Clock::now() - start).count();
    std::sort(seconds.begin(), seconds.end());
    double median = seconds[seconds.size() / 2];
    std::int64_t params = 0;
    for (const auto& p : trainer.model().parameters()) params += p.numel();
    std::int64_t per_step = tokens / steps;  // every step takes the same batch size
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    nlohmann::json result = {
        {"bench", "train"},
        {"config", config_path},
        {"device", config.train.device.is_cpu() ? bench::cpu_model()
                                                : cuda::device_name(config.train.device.index)},
        {"commit", bench::git_commit()},
        {"parameters", params},
        {"tokens_per_step", per_step},
        {"steps", steps},
        {"step_ms_median", bench::round3(median * 1e3)},
        {"tokens_per_s", bench::round3(static_cast<double>(per_step) / median)},
        {"tokens_per_s_overall", bench::round3(static_cast<double>(tokens) / total)},
        {"peak_rss_bytes", static_cast<std::int64_t>(usage.ru_maxrss) * 1024},
    };
    if (config.train.device.is_cuda()) {
      // The largest of any rank.
      Tensor peak =
          full({}, static_cast<double>(cuda::memory_stats(config.train.device.index).peak_bytes),
               {DType::f64});
      comm->all_reduce(peak, ReduceOp::max);
      result["precision"] = name(config.train.precision);
      result["peak_gpu_bytes"] = static_cast<std::int64_t>(peak.item());
      // Rank 0's: memory taken from the driver, and cudaMalloc calls in the timed steps (a
      // cache that no longer fits its blocks shows here as calls every step).
      result["reserved_gpu_bytes"] = static_cast<std::int64_t>(
          cuda::memory_stats(config.train.device.index).reserved_bytes);
      result["cuda_mallocs_per_step"] =
          static_cast<double>(mallocs() - mallocs_before) / static_cast<double>(steps);
    }
    if (comm->size() > 1) {
      result["ranks"] = comm->size();
      result["sequence_parallel"] = config.sequence_parallel;
      result["compression"] = name(config.dist.compression.kind);
      result["bytes_sent_per_step"] = bytes_sent / steps;  // rank 0's
    }
    if (comm->rank() == 0) std::cout << result.dump() << "\n";
    return 0;
  } catch (const ConfigError& e) {
    std::cerr << "longnet-bench-train: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "longnet-bench-train: " << e.what() << "\n";
    return 1;
  }
}
