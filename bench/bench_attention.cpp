// Benchmark of causal attention over growing sequence lengths, batch 1: dense attention (the
// quadratic peer) beside dilated attention in paper and grouped mode and block-sparse
// attention (local window) with a fixed number of key blocks per query block. Forward and
// forward+backward. Prints a table and one JSON line per case.
//
// CPU (the default): the differentiable ops, f32, wall-clock medians.
// CUDA (--device cuda): the attention functions' _forward / _backward on tensors, bf16, 12 heads x
// 64, the LongNet branches w = 2048..32768, r = 1, 2, 4, 6, 12; medians of CUDA-event timings after
// a warm-up call, useful TFLOP/s (4 D flops per visible (query, key) pair forward, 2.5 times that
// backward) and the peak GPU memory of each case, inputs included. A case that runs out of GPU
// memory is left out with a note. bench/torch_attention.py times the PyTorch peers with the same
// fields; bench/compare_attention.sh runs both.
//
//   longnet-bench-attention [--device cpu|cuda] [--dtype f32|bf16] [--sizes N,...]
//       [--max-n N] [--dense-max-n N] [--heads H] [--head-dim D] [--segment-lengths W,...]
//       [--dilation-rates R,...] [--block-size S] [--blocks-kept K] [--reps R] [--json-only]
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
#include "attention/cuda/dilated.h"
#include "attention/dilated.h"
#include "autograd/variable.h"
#include "bench/harness.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/error.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace {

using longnet::DilatedAttentionConfig;
using longnet::DilatedMode;
using longnet::Tensor;
using longnet::Variable;
using longnet::bench::round3;
using longnet::bench::Timing;

struct Options {
  longnet::Device device = longnet::Device::cpu();
  longnet::DType dtype = longnet::DType::f32;
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

// The defaults on a GPU: the sizes and settings of DESIGN.md section 10.
Options cuda_defaults() {
  Options o;
  o.device = longnet::Device::cuda();
  o.dtype = longnet::DType::bf16;
  o.sizes.clear();
  for (std::int64_t n = 32768; n <= 2097152; n *= 2) o.sizes.push_back(n);
  o.max_n = 2097152;
  o.dense_max_n = 131072;
  o.heads = 12;
  o.head_dim = 64;
  o.segment_lengths = {2048, 4096, 8192, 16384, 32768};
  o.dilation_rates = {1, 2, 4, 6, 12};
  o.reps = 5;
  return o;
}

void print_usage(std::ostream& out) {
  out << "usage: longnet-bench-attention [options]   (defaults: cpu / cuda)\n"
      << "  --device cpu|cuda          where to run (default cpu); picks the other defaults\n"
      << "  --dtype f32|bf16           element type (default f32 / bf16)\n"
      << "  --sizes N[,N...]           sequence lengths (default 1024,...,65536 /\n"
      << "                             32768,...,2097152, powers of two)\n"
      << "  --max-n N                  leave out lengths above N (default 65536 / 2097152)\n"
      << "  --dense-max-n N            dense attention only up to N (default 8192 / 131072;\n"
      << "                             quadratic)\n"
      << "  --heads H                  heads (default 4 / 12)\n"
      << "  --head-dim D               head dim (default 32 / 64)\n"
      << "  --segment-lengths W[,W...] dilated segment lengths (default 1024,2048,4096 /\n"
      << "                             2048,4096,8192,16384,32768)\n"
      << "  --dilation-rates R[,R...]  dilated rates, one per segment length (default 1,2,4 /\n"
      << "                             1,2,4,6,12)\n"
      << "  --block-size S             block-sparse block size (default 64)\n"
      << "  --blocks-kept K            block-sparse key blocks per query block (default 8)\n"
      << "  --reps R                   timed repetitions per case, the median is reported\n"
      << "                             (default 3, at least a quarter second / 5)\n"
      << "  --json-only                print only the JSON lines\n";
}

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "longnet-bench-attention: " << message << "\n";
  print_usage(std::cerr);
  std::exit(2);
}

longnet::Device device_from(const std::string& text) {
  try {
    return longnet::parse_device(text);
  } catch (const std::exception& e) {
    usage_error(std::string("--device: ") + e.what());
  }
}

Options parse_options(int argc, char** argv) {
  // --device picks the defaults of everything else, so it is read first.
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> text;
    if (arg.rfind("--device=", 0) == 0) {
      text = arg.substr(9);
    } else if (arg == "--device" && i + 1 < argc) {
      text = argv[i + 1];
    }
    if (text && device_from(*text).is_cuda()) options = cuda_defaults();
  }
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
      if (!parsed) usage_error(longnet::cat(arg, " wants a positive integer, got '", text, "'"));
      out = *parsed;
    };
    auto positive_list = [&](std::vector<std::int64_t>& out) {
      std::string text = take_value();
      auto parsed = longnet::bench::parse_positive_list(text);
      if (!parsed) usage_error(longnet::cat(arg, " wants positive integers, got '", text, "'"));
      out = *parsed;
    };
    if (arg == "--device") {
      options.device = device_from(take_value());
    } else if (arg == "--dtype") {
      std::string text = take_value();
      if (text == "f32") {
        options.dtype = longnet::DType::f32;
      } else if (text == "bf16") {
        options.dtype = longnet::DType::bf16;
      } else {
        usage_error("--dtype wants f32 or bf16, got '" + text + "'");
      }
    } else if (arg == "--sizes") {
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

// Visible (query, key) pairs over all heads, a key selected by two branches counted twice:
// each costs 4 D flops in the forward (q.k and p v) and 10 D in the backward (recomputing
// q.k, then dv, dp, dq and dk).
double attention_pairs(const DilatedAttentionConfig& c, std::int64_t n, std::int64_t heads) {
  auto m = static_cast<std::int64_t>(c.segment_lengths.size());
  double pairs = 0;
  for (std::int64_t h = 0; h < heads; ++h) {
    std::int64_t group = -1;
    if (c.mode == DilatedMode::grouped) {
      for (std::int64_t g = 0, start = 0; g < m; ++g) {
        std::int64_t size = heads / m + (g < heads % m ? 1 : 0);
        if (h >= start && h < start + size) group = g;
        start += size;
      }
    }
    for (std::int64_t b = 0; b < m; ++b) {
      if (group >= 0 && b != group) continue;
      std::int64_t w = std::min(c.segment_lengths[b], n);
      std::int64_t r = c.dilation_rates[b];
      std::int64_t j = group >= 0 ? group % r : h % r;
      for (std::int64_t t0 = 0; t0 < n; t0 += w) {
        std::int64_t first = t0 + j;
        std::int64_t end = std::min(t0 + w, n);
        std::int64_t rows = first < end ? (end - first + r - 1) / r : 0;
        pairs += c.causal ? rows * (rows + 1) / 2.0 : static_cast<double>(rows) * rows;
      }
    }
  }
  return pairs;
}

// One attention variant at a given sequence length: the differentiable op (CPU) or the
// dilated configuration the GPU kernels run (dense being one segment of length n, rate 1).
struct Case {
  std::string name;
  std::int64_t max_n;
  std::function<Variable(const Variable&, const Variable&, const Variable&)> op;
  std::optional<DilatedAttentionConfig> dilated;
  nlohmann::json config;
  std::optional<longnet::BlockSparseConfig> sparse;
};

// Visible (query, key) pairs of block-sparse attention over n positions, per head.
double block_sparse_pairs(const longnet::BlockSparseConfig& c, std::int64_t n) {
  double pairs = 0;
  auto layout = longnet::fixed_block_layout(c, n, n);
  auto rows = [&](std::int64_t block) { return std::min(c.block_size, n - block * c.block_size); };
  for (std::size_t qb = 0; qb < layout.size(); ++qb) {
    auto q_rows = static_cast<double>(rows(static_cast<std::int64_t>(qb)));
    for (std::int64_t kb : layout[qb]) {
      bool diagonal = c.causal && kb == static_cast<std::int64_t>(qb);
      pairs += diagonal ? q_rows * (q_rows + 1) / 2 : q_rows * static_cast<double>(rows(kb));
    }
  }
  return pairs;
}

std::vector<Case> make_cases(const Options& o, std::int64_t n) {
  std::vector<Case> cases;
  cases.push_back({"dense", o.dense_max_n,
                   [](const Variable& q, const Variable& k, const Variable& v) {
                     return longnet::dense_attention(q, k, v, /*causal=*/true);
                   },
                   DilatedAttentionConfig{{n}, {1}, DilatedMode::paper, /*causal=*/true},
                   nlohmann::json::object()});
  for (auto mode : {DilatedMode::paper, DilatedMode::grouped}) {
    DilatedAttentionConfig config{o.segment_lengths, o.dilation_rates, mode, /*causal=*/true};
    config.validate();
    bool paper = mode == DilatedMode::paper;
    cases.push_back(
        {paper ? "dilated_paper" : "dilated_grouped",
         o.max_n,
         [config](const Variable& q, const Variable& k, const Variable& v) {
           return longnet::dilated_attention(q, k, v, config);
         },
         config,
         {{"segment_lengths", o.segment_lengths}, {"dilation_rates", o.dilation_rates}}});
  }
  // A fixed count of key blocks per query block keeps the cost linear in n.
  std::int64_t blocks = (n + o.block_size - 1) / o.block_size;
  longnet::BlockSparseConfig sparse{
      longnet::BlockPattern::local_window, o.block_size,
      std::min(1.0, static_cast<double>(o.blocks_kept) / static_cast<double>(blocks))};
  sparse.causal = true;
  sparse.validate();
  cases.push_back(
      {"block_sparse_local",
       o.max_n,
       [sparse](const Variable& q, const Variable& k, const Variable& v) {
         return longnet::block_sparse_attention(q, k, v, sparse);
       },
       std::nullopt,
       {{"block_size", o.block_size}, {"blocks_kept", o.blocks_kept}, {"density", sparse.density}},
       sparse});
  return cases;
}

struct Row {
  std::string name;
  std::int64_t n;
  Timing fwd;
  Timing fwd_bwd;
  nlohmann::json config;
  double fwd_flops = 0;                // useful flops of one forward (GPU rows)
  std::string kernels;                 // GPU dense and dilated rows: which kernels ran
  std::size_t peak_gpu_bytes = 0;      // GPU rows
  std::optional<std::string> skipped;  // why the case did not run
};

// The CPU run: wall-clock medians of the differentiable ops.
std::vector<Row> run_cpu(const Options& options) {
  // Calls take from a millisecond to seconds: one warm-up call, then at least reps timed
  // calls and a quarter second of them, so that the default run stays near two minutes.
  longnet::bench::TimingPolicy policy{.min_reps = options.reps,
                                      .min_warmup_calls = 1,
                                      .warmup_floor = std::chrono::milliseconds(0),
                                      .timed_floor = std::chrono::milliseconds(250)};
  longnet::Generator gen(0);
  std::vector<Row> rows;
  for (std::int64_t n : options.sizes) {
    longnet::Shape shape{1, n, options.heads, options.head_dim};
    longnet::TensorOptions type{options.dtype};
    Variable q(longnet::randn(shape, gen, type), true);
    Variable k(longnet::randn(shape, gen, type), true);
    Variable v(longnet::randn(shape, gen, type), true);
    Tensor dout = longnet::randn(shape, gen, type);  // the fixed upstream gradient
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
  return rows;
}

// Median of reps calls of fn, each timed by CUDA events on the device's stream, after one
// warm-up call (first-use costs: allocator blocks, shared-memory opt-in).
template <class Fn>
Timing time_events(int device, int reps, Fn&& fn) {
  fn();
  longnet::cuda::Event start(device);
  longnet::cuda::Event stop(device);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    start.record();
    fn();
    stop.record();
    times.push_back(stop.elapsed_ms(start));
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], reps};
}

bool out_of_memory(const std::exception& e) {
  return std::string(e.what()).rfind("out of GPU memory", 0) == 0;
}

// The GPU run: the forward and backward functions on device tensors (no autograd graph).
std::vector<Row> run_cuda(const Options& options) {
  int device = options.device.index;
  longnet::Generator gen(0);
  std::vector<Row> rows;
  for (std::int64_t n : options.sizes) {
    longnet::Shape shape{1, n, options.heads, options.head_dim};
    longnet::TensorOptions type{options.dtype, options.device};
    Tensor q = longnet::randn(shape, gen, type);
    Tensor k = longnet::randn(shape, gen, type);
    Tensor v = longnet::randn(shape, gen, type);
    Tensor dout = longnet::randn(shape, gen, type);
    for (const Case& c : make_cases(options, n)) {
      if (n > c.max_n) continue;
      Row row{c.name, n, {}, {}, c.config};
      double pairs = c.sparse
                         ? block_sparse_pairs(*c.sparse, n) * static_cast<double>(options.heads)
                         : attention_pairs(*c.dilated, n, options.heads);
      row.fwd_flops = 4.0 * static_cast<double>(options.head_dim) * pairs;
      if (c.dilated) row.kernels = longnet::cuda::dilated_attention_kernels(q, k, v);
      longnet::cuda::synchronize(device);
      longnet::cuda::reset_peak_memory(device);
      auto forward = [&] {
        return c.sparse ? longnet::block_sparse_attention_forward(q, k, v, *c.sparse)
                        : longnet::dilated_attention_forward(q, k, v, *c.dilated);
      };
      auto backward = [&](const longnet::AttentionOutput& o) {
        return c.sparse
                   ? longnet::block_sparse_attention_backward(q, k, v, o.out, o.lse, dout,
                                                              *c.sparse)
                   : longnet::dilated_attention_backward(q, k, v, o.out, o.lse, dout, *c.dilated);
      };
      try {
        row.fwd = time_events(device, options.reps, forward);
        row.fwd_bwd = time_events(device, options.reps, [&] { backward(forward()); });
        row.peak_gpu_bytes = longnet::cuda::memory_stats(device).peak_bytes;
      } catch (const std::exception& e) {
        if (!out_of_memory(e)) throw;
        row.skipped = e.what();
        longnet::cuda::synchronize(device);
        longnet::cuda::empty_cache(device);
      }
      rows.push_back(row);
      if (!options.json_only) {
        std::fprintf(stderr, "  %s n=%lld %s%s%s\n", c.name.c_str(), static_cast<long long>(n),
                     row.skipped ? "skipped: out of GPU memory" : "done",
                     row.kernels.empty() ? "" : ", on ", row.kernels.c_str());
      }
    }
  }
  return rows;
}

double tflops(double flops, const Timing& t) { return flops / t.median_ms * 1e-9; }

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_options(argc, argv);
  try {
    bool gpu = options.device.is_cuda();
    int threads = omp_get_max_threads();
    std::string device;
    if (gpu) {
      if (options.device.index >= longnet::cuda::device_count()) {
        throw std::runtime_error("no CUDA device " + longnet::str(options.device) + " (devices: " +
                                 std::to_string(longnet::cuda::device_count()) + ")");
      }
      device =
          longnet::str(options.device) + ": " + longnet::cuda::device_name(options.device.index);
    } else {
      device = "cpu: " + longnet::bench::cpu_model();
      if (double busy = longnet::bench::others_busy_fraction(); busy > 0.1) {
        std::cerr << "warning: other processes kept the CPU " << static_cast<int>(busy * 100)
                  << "% busy before the run; figures will be low\n";
      }
    }
    std::string commit = longnet::bench::git_commit();
    std::string dtype = longnet::name(options.dtype);

    // CPU runs take a minute or more: check the neighbours over the whole run as well.
    longnet::bench::CpuSample run_start = longnet::bench::sample_cpu();
    std::vector<Row> rows = gpu ? run_cuda(options) : run_cpu(options);
    double others_during =
        longnet::bench::others_busy_between(run_start, longnet::bench::sample_cpu());
    if (!gpu && others_during > 0.05) {
      std::cerr << "warning: other processes used " << static_cast<int>(others_during * 100)
                << "% of the CPU during the run; figures will be low\n";
    }

    // Grouped by case, so that each case's time per token reads down one column, relative
    // to its smallest n: flat is linear cost, doubling per row is quadratic.
    std::stable_sort(rows.begin(), rows.end(),
                     [](const Row& a, const Row& b) { return a.name < b.name; });
    if (!options.json_only) {
      std::printf("device %s, ", device.c_str());
      if (!gpu) std::printf("%d threads, ", threads);
      std::printf("commit %s; %s, causal, batch 1, %lld heads x %lld", commit.c_str(),
                  dtype.c_str(), static_cast<long long>(options.heads),
                  static_cast<long long>(options.head_dim));
      if (gpu) {
        std::printf("; TFLOP/s of useful flops, peak GPU memory with the inputs\n");
        std::printf("%-20s %8s %10s %11s %9s %9s %9s %9s %5s\n", "case", "n", "fwd ms",
                    "fwd+bwd ms", "fwd TF/s", "f+b TF/s", "f+b /tok", "peak GiB", "reps");
      } else {
        std::printf("; others busy %.0f%% of the run\n", others_during * 100);
        std::printf("%-20s %6s %11s %11s %12s %9s %9s %5s\n", "case", "n", "fwd ms", "fwd+bwd ms",
                    "fwd+bwd tok/s", "fwd /tok", "f+b /tok", "reps");
      }
    }
    std::vector<std::string> json_lines;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      nlohmann::json line = {
          {"bench", "attention"},   {"impl", "longnet"},
          {"case", r.name},         {"n", r.n},
          {"heads", options.heads}, {"head_dim", options.head_dim},
          {"dtype", dtype},         {"causal", true},
      };
      bool new_case = i > 0 && rows[i - 1].name != r.name;
      if (r.skipped) {
        if (!options.json_only) {
          if (new_case) std::printf("\n");
          std::printf("%-20s %8lld  skipped: out of GPU memory\n", r.name.c_str(),
                      static_cast<long long>(r.n));
        }
        line.update({{"skipped", *r.skipped},
                     {"config", r.config},
                     {"device", device},
                     {"commit", commit}});
        json_lines.push_back(line.dump());
        continue;
      }
      const Row* first = &r;
      for (std::size_t j = 0; j < i; ++j) {
        if (rows[j].name == r.name && !rows[j].skipped) {
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
      int reps = std::min(r.fwd.reps, r.fwd_bwd.reps);
      if (!options.json_only) {
        if (new_case) std::printf("\n");
        if (gpu) {
          std::printf("%-20s %8lld %10.2f %11.2f %9.1f %9.1f %9.2f %9.2f %5d\n", r.name.c_str(),
                      static_cast<long long>(r.n), r.fwd.median_ms, r.fwd_bwd.median_ms,
                      tflops(r.fwd_flops, r.fwd), tflops(3.5 * r.fwd_flops, r.fwd_bwd), fwd_bwd_rel,
                      static_cast<double>(r.peak_gpu_bytes) / (1 << 30), reps);
        } else {
          std::printf("%-20s %6lld %11.2f %11.2f %12.0f %9.2f %9.2f %5d\n", r.name.c_str(),
                      static_cast<long long>(r.n), r.fwd.median_ms, r.fwd_bwd.median_ms,
                      tokens_per_s, fwd_rel, fwd_bwd_rel, reps);
        }
      }
      line.update({
          {"fwd_ms", round3(r.fwd.median_ms)},
          {"fwd_bwd_ms", round3(r.fwd_bwd.median_ms)},
          {"fwd_reps", r.fwd.reps},
          {"fwd_bwd_reps", r.fwd_bwd.reps},
          {"fwd_bwd_tokens_per_s", std::round(tokens_per_s)},
          {"fwd_per_token_rel", round3(fwd_rel)},
          {"fwd_bwd_per_token_rel", round3(fwd_bwd_rel)},
          {"config", r.config},
      });
      if (gpu) {
        line.update({
            {"fwd_tflops", round3(tflops(r.fwd_flops, r.fwd))},
            {"fwd_bwd_tflops", round3(tflops(3.5 * r.fwd_flops, r.fwd_bwd))},
            {"peak_gpu_bytes", r.peak_gpu_bytes},
        });
        if (!r.kernels.empty()) line["kernels"] = r.kernels;
      } else {
        line.update({{"threads", threads}, {"others_busy", round3(others_during)}});
      }
      line.update({{"device", device}, {"commit", commit}});
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
