// A CUPTI activity tracer to preload into any CUDA program: it records every kernel, copy and
// memset on the device and every runtime and driver API call on the host, with start and end
// times, and writes them when the program exits. bench/kernel_gaps.py reads the file and says
// where the device sat idle and what the host was doing then.
//
//   export LONGNET_KERNEL_TRACE=/tmp/trace.tsv LD_PRELOAD=build/bench/liblongnet-kernel-trace.so
//   build/bench/longnet-bench-train --config c.json --steps 2 --warmup 1
//
// One line per record, tab-separated: a kind letter (K kernel, C copy, S memset, R runtime
// API, D driver API), start and end in ns, the correlation id (a launch's API record and its
// kernel share it), then the name (kernel or API function) or, for copies, the byte count.
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kBufferBytes = 8 << 20;

std::mutex g_mutex;
std::vector<std::string> g_lines;  // filled as CUPTI hands back buffers, written at exit

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "kernel_trace: %s: %s\n", what, text != nullptr ? text : "?");
}

std::string line(char kind, std::uint64_t start, std::uint64_t end, std::uint32_t id,
                 const std::string& what) {
  return std::string(1, kind) + '\t' + std::to_string(start) + '\t' + std::to_string(end) + '\t' +
         std::to_string(id) + '\t' + what;
}

std::string api_name(CUpti_CallbackDomain domain, CUpti_CallbackId id) {
  const char* name = nullptr;
  cuptiGetCallbackName(domain, id, &name);
  return name != nullptr ? name : "api" + std::to_string(id);
}

// Flushes CUPTI and writes the file, once: at exit, registered when the first buffer is asked
// for (after the CUDA runtime set up its own exit handlers, so this one runs before they tear
// the context down), and from the tracer's destructor otherwise.
void finish() {
  static std::once_flag once;
  std::call_once(once, [] {
    check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "flush");
    const char* path = std::getenv("LONGNET_KERNEL_TRACE");
    if (path == nullptr) path = "kernel_trace.tsv";
    const std::lock_guard<std::mutex> lock(g_mutex);
    // A process that ran no CUDA (a launcher such as timeout that inherited the preload)
    // leaves the file to the one that did.
    if (g_lines.empty()) return;
    std::FILE* f = std::fopen(path, "w");
    if (f == nullptr) {
      std::fprintf(stderr, "kernel_trace: cannot write %s\n", path);
      return;
    }
    for (const std::string& l : g_lines) std::fprintf(f, "%s\n", l.c_str());
    std::fclose(f);
    std::fprintf(stderr, "kernel_trace: %zu records in %s\n", g_lines.size(), path);
  });
}

void CUPTIAPI buffer_requested(std::uint8_t** buffer, std::size_t* size, std::size_t* max_records) {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(finish); });
  *buffer = static_cast<std::uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext /*ctx*/, std::uint32_t /*stream*/, std::uint8_t* buffer,
                               std::size_t /*size*/, std::size_t valid) {
  std::vector<std::string> lines;
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        lines.push_back(line('K', k->start, k->end, k->correlationId, k->name));
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* c = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        lines.push_back(line('C', c->start, c->end, c->correlationId,
                             std::to_string(c->bytes) + " kind " + std::to_string(c->copyKind)));
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* s = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
        lines.push_back(line('S', s->start, s->end, s->correlationId, std::to_string(s->bytes)));
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
      case CUPTI_ACTIVITY_KIND_DRIVER: {
        const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(record);
        const bool runtime = record->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
        lines.push_back(line(
            runtime ? 'R' : 'D', a->start, a->end, a->correlationId,
            api_name(runtime ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid)));
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
  const std::lock_guard<std::mutex> lock(g_mutex);
  g_lines.insert(g_lines.end(), lines.begin(), lines.end());
}

struct Tracer {
  Tracer() {
    check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register");
    for (CUpti_ActivityKind kind :
         {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
          CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME, CUPTI_ACTIVITY_KIND_DRIVER}) {
      check(cuptiActivityEnable(kind), "enable");
    }
  }
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;
  Tracer(Tracer&&) = delete;
  Tracer& operator=(Tracer&&) = delete;
  ~Tracer() { finish(); }
};

const Tracer g_tracer;

}  // namespace
