// CPU benchmark of the tensor ops: f32 matmul against OpenBLAS sgemm on the same inputs,
// and elementwise ops in GB/s. Prints a table and one JSON line per case.
//
//   longnet-bench-ops [--sizes 256,512,1024,2048] [--reps 7] [--json-only]
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/harness.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/matmul.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

#if LONGNET_HAVE_OPENBLAS
#include <cblas.h>
#ifndef OPENBLAS_VERSION
// The cblas.h found is another vendor's, but the library linked is libopenblas.
extern "C" void openblas_set_num_threads(int num_threads);
extern "C" int openblas_get_num_threads(void);
#endif
#endif

namespace {

using longnet::Shape;
using longnet::Tensor;
using longnet::bench::round3;
using longnet::bench::Timing;

struct Options {
  std::vector<std::int64_t> sizes = {256, 512, 1024, 2048};
  int reps = 7;
  bool json_only = false;
};

void print_usage(std::ostream& out) {
  out << "usage: longnet-bench-ops [--sizes N[,N...]] [--reps R] [--json-only]\n"
      << "  --sizes      square matmul sizes (default 256,512,1024,2048)\n"
      << "  --reps       least timed repetitions per case (default 7); the median is reported\n"
      << "  --json-only  print only the JSON lines\n";
}

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "longnet-bench-ops: " << message << "\n";
  print_usage(std::cerr);
  std::exit(2);
}

std::int64_t parse_positive(const std::string& text, const char* flag) {
  auto value = longnet::bench::parse_positive(text);
  if (!value) usage_error(std::string(flag) + " wants positive integers, got '" + text + "'");
  return *value;
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
    if (arg == "--sizes") {
      std::string text = take_value();
      auto sizes = longnet::bench::parse_positive_list(text);
      if (!sizes) usage_error("--sizes wants positive integers, got '" + text + "'");
      options.sizes = *sizes;
    } else if (arg == "--reps") {
      options.reps = static_cast<int>(parse_positive(take_value(), "--reps"));
    } else if (arg == "--json-only" && !value) {
      options.json_only = true;
    } else if (arg == "--help" || arg == "-h") {
      print_usage(std::cout);
      std::exit(0);
    } else {
      usage_error("unknown argument '" + std::string(argv[i]) + "'");
    }
  }
  return options;
}

// Cases here take a millisecond or less: the harness's default warm-up and time floor.
Timing time_median(int min_reps, auto&& fn) {
  return longnet::bench::time_median({.min_reps = min_reps}, fn);
}

// One case: what was computed, how much work it is, and the timings of ours and the peer.
struct Result {
  std::string name;
  std::vector<Shape> shapes;  // operand shapes
  std::string size_label;
  bool is_flops = true;  // work counts flops (reported in GFLOP/s) or bytes (GB/s)
  double work = 0;
  Timing ours;
  std::optional<Timing> peer;
};

class Report {
 public:
  explicit Report(bool json_only)
      : json_only_(json_only),
        threads_(omp_get_max_threads()),
        device_("cpu: " + longnet::bench::cpu_model()),
        commit_(longnet::bench::git_commit()) {
    if (double busy = longnet::bench::others_busy_fraction(); busy > 0.1) {
      std::cerr << "warning: other processes kept the CPU " << static_cast<int>(busy * 100)
                << "% busy before the run; figures will be low\n";
    }
    if (!json_only_) {
      std::printf("device %s, %d threads, commit %s, peer %s\n", device_.c_str(), threads_,
                  commit_.c_str(), LONGNET_HAVE_OPENBLAS ? "OpenBLAS" : "none (not built)");
      std::printf("%-14s %-16s %10s %16s %16s %7s\n", "case", "size", "ours ms", "ours", "peer",
                  "ratio");
    }
  }

  int threads() const { return threads_; }

  void add(const Result& r) {
    // Work per millisecond / 1e6 is GFLOP/s or GB/s.
    auto rate = [&](const Timing& t) { return r.work / t.median_ms / 1e6; };
    double ours = rate(r.ours);
    std::optional<double> peer;
    std::optional<double> ratio;
    if (r.peer) {
      peer = rate(*r.peer);
      ratio = ours / *peer;
    }
    const char* unit = r.is_flops ? "GFLOP/s" : "GB/s";
    if (!json_only_) {
      std::string peer_text = peer ? format_rate(*peer, unit) : "-";
      std::string ratio_text = ratio ? format_fixed(*ratio, 2) : "-";
      std::printf("%-14s %-16s %10.3f %16s %16s %7s\n", r.name.c_str(), r.size_label.c_str(),
                  r.ours.median_ms, format_rate(ours, unit).c_str(), peer_text.c_str(),
                  ratio_text.c_str());
    }
    auto optional_json = [](std::optional<double> x) {
      return x ? nlohmann::json(round3(*x)) : nlohmann::json(nullptr);
    };
    nlohmann::json line = {
        {"bench", "ops"},
        {"case", r.name},
        {"shape", r.shapes},
        {"dtype", "f32"},
        {"time_ms", round3(r.ours.median_ms)},
        {"reps", r.ours.reps},
        {r.is_flops ? "gflops" : "gbps", round3(ours)},
        {"peer", optional_json(peer)},
        {"peer_time_ms", optional_json(r.peer ? std::optional(r.peer->median_ms) : std::nullopt)},
        {"ratio", optional_json(ratio)},
        {"threads", threads_},
        {"device", device_},
        {"commit", commit_},
    };
    json_lines_.push_back(line.dump());
    if (json_only_) flush_json();
  }

  // In the table view the JSON lines follow the table, so the table stays readable.
  void flush_json() {
    if (!json_only_ && !json_lines_.empty()) std::printf("\n");
    for (const auto& line : json_lines_) std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    json_lines_.clear();
  }

 private:
  static std::string format_fixed(double x, int digits) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.*f", digits, x);
    return buffer;
  }
  static std::string format_rate(double x, const char* unit) {
    return format_fixed(x, 1) + " " + unit;
  }

  bool json_only_;
  int threads_;
  std::string device_;
  std::string commit_;
  std::vector<std::string> json_lines_;
};

std::string cube_label(std::int64_t n) {
  std::string side = std::to_string(n);
  return side + "x" + side + "x" + side;
}

void bench_matmul(std::int64_t n, int reps, longnet::Generator& gen, Report& report) {
  Tensor a = longnet::randn({n, n}, gen);
  Tensor b = longnet::randn({n, n}, gen);
  Tensor ours_out;
  Timing ours = time_median(reps, [&] { ours_out = longnet::matmul(a, b); });
  std::optional<Timing> peer;
#if LONGNET_HAVE_OPENBLAS
  // The peer writes into a preallocated output; ours allocates its result on every call.
  Tensor peer_out = longnet::empty({n, n});
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = peer_out.data<float>();
  int dim = static_cast<int>(n);
  peer = time_median(reps, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, dim, 1.0f, pa, dim, pb, dim,
                0.0f, pc, dim);
  });

  // A wrong product is not a fast one: check ours against the peer once per size.
  const float* po = ours_out.data<float>();
  double max_diff = 0;
  double max_ref = 0;
  for (std::int64_t i = 0; i < n * n; ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(po[i] - pc[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(pc[i])));
  }
  if (max_diff > 1e-4 * std::max(max_ref, 1.0)) {
    std::cerr << "warning: matmul " << n << ": ours differs from OpenBLAS by " << max_diff
              << " (largest |value| " << max_ref << ")\n";
  }
#endif
  double side = static_cast<double>(n);
  report.add({.name = "matmul",
              .shapes = {{n, n}, {n, n}},
              .size_label = cube_label(n),
              .is_flops = true,
              .work = 2.0 * side * side * side,
              .ours = ours,
              .peer = peer});
}

std::string count_label(std::int64_t count) {
  if (count % (1 << 20) == 0) return std::to_string(count >> 20) + "M";
  return std::to_string(count);
}

// Bytes are those an op must read and write: each input once, the output once.
void bench_elementwise(std::int64_t count, int reps, longnet::Generator& gen, Report& report) {
  Tensor x = longnet::randn({count}, gen);
  Tensor y = longnet::randn({count}, gen);
  double f32_bytes = sizeof(float) * static_cast<double>(count);
  std::string label = count_label(count);
  Tensor out;

  auto binary_case = [&](const char* name, auto op) {
    report.add({.name = name,
                .shapes = {{count}, {count}},
                .size_label = label,
                .is_flops = false,
                .work = 3 * f32_bytes,
                .ours = time_median(reps, [&] { out = op(x, y); }),
                .peer = std::nullopt});
  };
  auto unary_case = [&](const char* name, auto op) {
    report.add({.name = name,
                .shapes = {{count}},
                .size_label = label,
                .is_flops = false,
                .work = 2 * f32_bytes,
                .ours = time_median(reps, [&] { out = op(x); }),
                .peer = std::nullopt});
  };
  binary_case("add", [](const Tensor& a, const Tensor& b) { return longnet::add(a, b); });
  // The same sum into a preallocated output: what add costs without allocating and
  // first-touching a fresh result.
  Tensor preallocated = longnet::empty({count});
  binary_case("add_out", [&](const Tensor& a, const Tensor& b) {
    longnet::binary_out(longnet::BinaryOp::add, a, b, preallocated);
    return preallocated;
  });
  binary_case("mul", [](const Tensor& a, const Tensor& b) { return longnet::mul(a, b); });
  unary_case("exp", [](const Tensor& a) { return longnet::exp(a); });
  unary_case("gelu", [](const Tensor& a) { return longnet::gelu(a); });
}

void bench_broadcast_add(std::int64_t rows, std::int64_t cols, int reps, longnet::Generator& gen,
                         Report& report) {
  Tensor matrix = longnet::randn({rows, cols}, gen);
  Tensor row = longnet::randn({cols}, gen);
  Tensor out;
  report.add(
      {.name = "add_broadcast",
       .shapes = {{rows, cols}, {cols}},
       .size_label = std::to_string(rows) + "x" + std::to_string(cols) + "+" + std::to_string(cols),
       .is_flops = false,
       .work = sizeof(float) * static_cast<double>(2 * rows * cols + cols),
       .ours = time_median(reps, [&] { out = longnet::add(matrix, row); }),
       .peer = std::nullopt});
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_options(argc, argv);
  try {
    Report report(options.json_only);
#if LONGNET_HAVE_OPENBLAS
    openblas_set_num_threads(report.threads());
    if (openblas_get_num_threads() != report.threads()) {
      std::cerr << "warning: OpenBLAS runs " << openblas_get_num_threads() << " threads, ours "
                << report.threads() << "\n";
    }
#endif
    longnet::Generator gen(0);
    for (std::int64_t n : options.sizes) bench_matmul(n, options.reps, gen, report);
    for (std::int64_t count : {std::int64_t{1} << 20, std::int64_t{1} << 24}) {
      bench_elementwise(count, options.reps, gen, report);
    }
    bench_broadcast_add(4096, 4096, options.reps, gen, report);
    report.flush_json();
  } catch (const std::exception& e) {
    std::cerr << "longnet-bench-ops: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
