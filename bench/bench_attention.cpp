// CPU benchmark of causal attention over growing sequence lengths: dense attention (the
// quadratic peer) beside dilated attention in paper and grouped mode and block-sparse
// attention with a fixed number of key blocks per query block. Forward and forward+backward
// of the differentiable ops, f32, batch 1. Prints a table and one JSON line per case.
//
//   longnet-bench-attention [--sizes 1024,...,65536] [--max-n N] [--dense-max-n 8192]
//       [--heads 4] [--head-dim 32] [--segment-lengths 1024,2048,4096]
//       [--dilation-rates 1,2,4] [--block-size 64] [--blocks-kept 8] [--reps 3] [--json-only]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attention/block_sparse.h"
#include "attention/dilated.h"
#include "autograd/variable.h"
#include "bench/harness.h"
#include "tensor/creation.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace {

using longnet::Tensor;
using longnet::Variable;
using longnet::bench::round3;
using longnet::bench::Timing;

struct Options {
  std::vector<std::int64_t> sizes = {1024, 2048, 4096, 8192, 16384, 32768, 65536};
  std::int64_t max_n = 65536;
  std::int64_t dense_max_n = 8192;
  std::int64_t heads = 4;
  std::int64_t head_dim = 32;
  std::vector<std::int64_t> segment_lengths = {1024, 2048, 4096};
  std::vector<std::int64_t> dilation_rates = {1, 2, 4};
  std::int64_t block_size = 64;
  std::int64_t blocks_kept = 8;
  int reps = 3;
  bool json_only = false;
};

void print_usage(std::ostream& out) {
  out << "usage: longnet-bench-attention [options]\n"
      << "  --sizes N[,N...]           sequence lengths (default 1024,2048,...,65536)\n"
      << "  --max-n N                  leave out lengths above N (default 65536)\n"
      << "  --dense-max-n N            dense attention only up to N (default 8192; quadratic)\n"
      << "  --heads H                  heads (default 4)\n"
      << "  --head-dim D               head dim (default 32)\n"
      << "  --segment-lengths W[,W...] dilated segment lengths (default 1024,2048,4096)\n"
      << "  --dilation-rates R[,R...]  dilated rates, one per segment length (default 1,2,4)\n"
      << "  --block-size S             block-sparse block size (default 64)\n"
      << "  --blocks-kept K            block-sparse key blocks per query block (default 8)\n"
      << "  --reps R                   least timed repetitions per case (default 3); the\n"
      << "                             median is reported\n"
      << "  --json-only                print only the JSON lines\n";
}

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "longnet-bench-attention: " << message << "\n";
  print_usage(std::cerr);
  std::exit(2);
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    auto take_value = [&]() -> std::string {
      if (value) return *value;
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    auto positive = [&](std::int64_t& out) {
      std::string text = take_value();
      auto parsed = longnet::bench::parse_positive(text);
      if (!parsed) usage_error(arg + " wants a positive integer, got '" + text + "'");
      out = *parsed;
    };
    auto positive_list = [&](std::vector<std::int64_t>& out) {
      std::string text = take_value();
      auto parsed = longnet::bench::parse_positive_list(text);
      if (!parsed) usage_error(arg + " wants positive integers, got '" + text + "'");
      out = *parsed;
    };
    if (arg == "--sizes") {
      positive_list(options.sizes);
    } else if (arg == "--max-n") {
      positive(options.max_n);
    } else if (arg == "--dense-max-n") {
      positive(options.dense_max_n);
    } else if (arg == "--heads") {
      positive(options.heads);
    } else if (arg == "--head-dim") {
      positive(options.head_dim);
    } else if (arg == "--segment-lengths") {
      positive_list(options.segment_lengths);
    } else if (arg == "--dilation-rates") {
      positive_list(options.dilation_rates);
    } else if (arg == "--block-size") {
      positive(options.block_size);
    } else if (arg == "--blocks-kept") {
      positive(options.blocks_kept);
    } else if (arg == "--reps") {
      std::int64_t reps = 0;
      positive(reps);
      options.reps = static_cast<int>(reps);
    } else if (arg == "--json-only" && !value) {
      options.json_only = true;
    } else if (arg == "--help" || arg == "-h") {
      print_usage(std::cout);
      std::exit(0);
    } else {
      usage_error("unknown argument '" + std::string(argv[i]) + "'");
    }
  }
  if (options.segment_lengths.size() != options.dilation_rates.size()) {
    usage_error("--segment-lengths and --dilation-rates need the same number of values");
  }
  std::erase_if(options.sizes, [&](std::int64_t n) { return n > options.max_n; });
  if (options.sizes.empty()) usage_error("no size left at or below --max-n");
  return options;
}

// One attention variant: a name and the differentiable op for a given sequence length.
struct Case {
  std::string name;
  std::int64_t max_n;
  std::function<Variable(const Variable&, const Variable&, const Variable&)> op;
  nlohmann::json config;
};

std::vector<Case> make_cases(const Options& o, std::int64_t n) {
  std::vector<Case> cases;
  cases.push_back({"dense", o.dense_max_n,
                   [](const Variable& q, const Variable& k, const Variable& v) {
                     return longnet::dense_attention(q, k, v, /*causal=*/true);
                   },
                   nlohmann::json::object()});
  for (auto mode : {longnet::DilatedMode::paper, longnet::DilatedMode::grouped}) {
    longnet::DilatedAttentionConfig config{o.segment_lengths, o.dilation_rates, mode,
                                           /*causal=*/true};
    config.validate();
    bool paper = mode == longnet::DilatedMode::paper;
    cases.push_back(
        {paper ? "dilated_paper" : "dilated_grouped",
         o.max_n,
         [config](const Variable& q, const Variable& k, const Variable& v) {
           return longnet::dilated_attention(q, k, v, config);
         },
         {{"segment_lengths", o.segment_lengths}, {"dilation_rates", o.dilation_rates}}});
  }
  // A fixed count of key blocks per query block keeps the cost linear in n.
  std::int64_t blocks = (n + o.block_size - 1) / o.block_size;
  longnet::BlockSparseConfig sparse{
      longnet::BlockPattern::local_window, o.block_size,
      std::min(1.0, static_cast<double>(o.blocks_kept) / static_cast<double>(blocks))};
  sparse.causal = true;
  sparse.validate();
  cases.push_back({"block_sparse_local",
                   o.max_n,
                   [sparse](const Variable& q, const Variable& k, const Variable& v) {
                     return longnet::block_sparse_attention(q, k, v, sparse);
                   },
                   {{"block_size", o.block_size},
                    {"blocks_kept", o.blocks_kept},
                    {"density", sparse.density}}});
  return cases;
}

struct Row {
  std::string name;
  std::int64_t n;
  Timing fwd;
  Timing fwd_bwd;
  nlohmann::json config;
};

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_options(argc, argv);
  try {
    int threads = omp_get_max_threads();
    std::string device = "cpu: " + longnet::bench::cpu_model();
    std::string commit = longnet::bench::git_commit();
    if (double busy = longnet::bench::others_busy_fraction(); busy > 0.1) {
      std::cerr << "warning: other processes kept the CPU " << static_cast<int>(busy * 100)
                << "% busy before the run; figures will be low\n";
    }
    // Calls take from a millisecond to seconds: one warm-up call, then at least reps timed
    // calls and a quarter second of them, so that the default run stays near two minutes.
    longnet::bench::TimingPolicy policy{.min_reps = options.reps,
                                        .min_warmup_calls = 1,
                                        .warmup_floor = std::chrono::milliseconds(0),
                                        .timed_floor = std::chrono::milliseconds(250)};

    // Runs take a minute or more: check the neighbours over the whole run as well.
    longnet::bench::CpuSample run_start = longnet::bench::sample_cpu();
    longnet::Generator gen(0);
    std::vector<Row> rows;
    for (std::int64_t n : options.sizes) {
      longnet::Shape shape{1, n, options.heads, options.head_dim};
      Variable q(longnet::randn(shape, gen), true);
      Variable k(longnet::randn(shape, gen), true);
      Variable v(longnet::randn(shape, gen), true);
      Tensor dout = longnet::randn(shape, gen);  // the fixed upstream gradient
      for (const Case& c : make_cases(options, n)) {
        if (n > c.max_n) continue;
        Variable out;
        Timing fwd = longnet::bench::time_median(policy, [&] { out = c.op(q, k, v); });
        Timing fwd_bwd = longnet::bench::time_median(policy, [&] {
          for (const Variable* x : {&q, &k, &v}) x->zero_grad();
          out = c.op(q, k, v);
          out.backward(dout);
        });
        rows.push_back({c.name, n, fwd, fwd_bwd, c.config});
        if (!options.json_only) {
          std::fprintf(stderr, "  %s n=%lld done\n", c.name.c_str(), static_cast<long long>(n));
        }
      }
    }

    double others_during =
        longnet::bench::others_busy_between(run_start, longnet::bench::sample_cpu());
    if (others_during > 0.05) {
      std::cerr << "warning: other processes used " << static_cast<int>(others_during * 100)
                << "% of the CPU during the run; figures will be low\n";
    }

    // Grouped by case, so that each case's time per token reads down one column, relative
    // to its smallest n: flat is linear cost, doubling per row is quadratic.
    std::stable_sort(rows.begin(), rows.end(),
                     [](const Row& a, const Row& b) { return a.name < b.name; });
    if (!options.json_only) {
      std::printf(
          "device %s, %d threads, commit %s; f32, causal, batch 1, %lld heads x %lld; "
          "others busy %.0f%% of the run\n",
          device.c_str(), threads, commit.c_str(), static_cast<long long>(options.heads),
          static_cast<long long>(options.head_dim), others_during * 100);
      std::printf("%-20s %6s %11s %11s %12s %9s %9s %5s\n", "case", "n", "fwd ms", "fwd+bwd ms",
                  "fwd+bwd tok/s", "fwd /tok", "f+b /tok", "reps");
    }
    std::vector<std::string> json_lines;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      const Row* first = &r;
      for (std::size_t j = 0; j < i; ++j) {
        if (rows[j].name == r.name) {
          first = &rows[j];
          break;
        }
      }
      auto per_token = [](const Timing& t, std::int64_t n) {
        return t.median_ms / static_cast<double>(n);
      };
      double fwd_rel = per_token(r.fwd, r.n) / per_token(first->fwd, first->n);
      double fwd_bwd_rel = per_token(r.fwd_bwd, r.n) / per_token(first->fwd_bwd, first->n);
      double tokens_per_s = static_cast<double>(r.n) / (r.fwd_bwd.median_ms / 1000.0);
      if (!options.json_only) {
        if (i > 0 && rows[i - 1].name != r.name) std::printf("\n");
        std::printf("%-20s %6lld %11.2f %11.2f %12.0f %9.2f %9.2f %5d\n", r.name.c_str(),
                    static_cast<long long>(r.n), r.fwd.median_ms, r.fwd_bwd.median_ms, tokens_per_s,
                    fwd_rel, fwd_bwd_rel, std::min(r.fwd.reps, r.fwd_bwd.reps));
      }
      nlohmann::json line = {
          {"bench", "attention"},
          {"case", r.name},
          {"n", r.n},
          {"heads", options.heads},
          {"head_dim", options.head_dim},
          {"dtype", "f32"},
          {"causal", true},
          {"fwd_ms", round3(r.fwd.median_ms)},
          {"fwd_bwd_ms", round3(r.fwd_bwd.median_ms)},
          {"fwd_reps", r.fwd.reps},
          {"fwd_bwd_reps", r.fwd_bwd.reps},
          {"fwd_bwd_tokens_per_s", std::round(tokens_per_s)},
          {"fwd_per_token_rel", round3(fwd_rel)},
          {"fwd_bwd_per_token_rel", round3(fwd_bwd_rel)},
          {"config", r.config},
          {"threads", threads},
          {"others_busy", round3(others_during)},
          {"device", device},
          {"commit", commit},
      };
      json_lines.push_back(line.dump());
    }
    if (!options.json_only) std::printf("\n");
    for (const auto& line : json_lines) std::printf("%s\n", line.c_str());
  } catch (const std::exception& e) {
    std::cerr << "longnet-bench-attention: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
