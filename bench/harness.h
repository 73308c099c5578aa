// What every CPU bench shares: the machine and commit it reports, a warning when other
// processes are busy, a median timer with a warm-up and a time floor, and flag parsing of
// positive integers. Header-only; the benches define LONGNET_SOURCE_ROOT.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace longnet::bench {

using Clock = std::chrono::steady_clock;

// A positive integer, or nothing if text is not exactly one.
inline std::optional<std::int64_t> parse_positive(const std::string& text) {
  std::size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != text.size() || value <= 0) return std::nullopt;
  return value;
}

// A comma-separated list of positive integers, or nothing if any item is not one.
inline std::optional<std::vector<std::int64_t>> parse_positive_list(const std::string& text) {
  std::vector<std::int64_t> values;
  std::stringstream list(text);
  for (std::string item; std::getline(list, item, ',');) {
    auto value = parse_positive(item);
    if (!value) return std::nullopt;
    values.push_back(*value);
  }
  if (values.empty()) return std::nullopt;
  return values;
}

inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon == std::string::npos) break;
      auto start = line.find_first_not_of(" \t", colon + 1);
      return start == std::string::npos ? "unknown" : line.substr(start);
    }
  }
  return "unknown";
}

// CPU time of the whole machine (busy and total, over all cores) and of this process, at one
// moment; two of them give the share that other processes used in between.
struct CpuSample {
  double machine_busy_s = 0;
  double machine_total_s = 0;
  double own_s = 0;
};

inline CpuSample sample_cpu() {
  CpuSample sample;
  std::ifstream stat("/proc/stat");
  std::string cpu;
  stat >> cpu;
  auto tick_seconds = 1.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::uint64_t value = 0;
  for (int field = 0; field < 8 && stat >> value; ++field) {
    sample.machine_total_s += static_cast<double>(value) * tick_seconds;
    if (field != 3 && field != 4)
      sample.machine_busy_s += static_cast<double>(value) * tick_seconds;
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](timeval t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  sample.own_s = seconds(usage.ru_utime) + seconds(usage.ru_stime);
  return sample;
}

// Share of the machine's CPU time that other processes used between two samples (our own
// time is left out: OpenBLAS's new threads spin for a while at start-up).
inline double others_busy_between(const CpuSample& before, const CpuSample& after) {
  double total = after.machine_total_s - before.machine_total_s;
  if (total <= 0) return 0.0;
  double others = (after.machine_busy_s - before.machine_busy_s) - (after.own_s - before.own_s);
  return std::max(0.0, others / total);
}

// The share over a short window before a run. On two cores one busy neighbour, a compiler
// say, slows an OpenMP team many times over.
inline double others_busy_fraction() {
  CpuSample before = sample_cpu();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  return others_busy_between(before, sample_cpu());
}

inline std::string git_commit() {
  FILE* pipe = popen("git -C '" LONGNET_SOURCE_ROOT "' rev-parse --short HEAD 2>/dev/null", "r");
  if (pipe == nullptr) return "unknown";
  char buffer[64] = {};
  std::string commit;
  if (std::fgets(buffer, sizeof buffer, pipe) != nullptr) commit = buffer;
  int status = pclose(pipe);
  while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) {
    commit.pop_back();
  }
  return status == 0 && !commit.empty() ? commit : "unknown";
}

struct Timing {
  double median_ms = 0;
  int reps = 0;
};

// How long time_median warms up and times. The defaults suit calls of a millisecond or less;
// calls of seconds want fewer warm-up calls so that a run stays short.
struct TimingPolicy {
  int min_reps = 7;
  int min_warmup_calls = 2;
  std::chrono::milliseconds warmup_floor{250};
  std::chrono::milliseconds timed_floor{500};
};

// Median wall time of fn. Warm-up runs for at least a quarter second as well as two calls: a
// thread pool left spinning by the previous library (OpenBLAS's pthreads or OpenMP's) must go
// to sleep before timing starts, or it steals one of the two cores. Timed calls go on past
// min_reps until half a second has passed, so short cases get a median of many samples.
template <class Fn>
Timing time_median(const TimingPolicy& policy, Fn&& fn) {
  auto warm_start = Clock::now();
  for (int i = 0; i < policy.min_warmup_calls || Clock::now() - warm_start < policy.warmup_floor;
       ++i) {
    fn();
  }
  std::vector<double> times;
  auto timed_start = Clock::now();
  while (static_cast<int>(times.size()) < policy.min_reps ||
         Clock::now() - timed_start < policy.timed_floor) {
    auto start = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], static_cast<int>(times.size())};
}

inline double round3(double x) { return std::round(x * 1000.0) / 1000.0; }

}  // namespace longnet::bench
