// The NCCL backend (dist/cuda/nccl.h). Host code only; built by nvcc with the rest of the
// CUDA sources because it includes the CUDA runtime's and NCCL's headers.
#include "dist/cuda/nccl.h"

#include <dlfcn.h>
#include <nccl.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>

#include "dist/arguments.h"
#include "dist/watchdog.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda/stream.h"

// Every NCCL call goes through this: a failure becomes a longnet::Error naming the call,
// NCCL's text for the code and its last error message.
#define LN_NCCL_CHECK(call) check_nccl((call), #call)

namespace longnet {
namespace {

// The NCCL entry points, looked up in the library at run time.
struct Nccl {
  decltype(&ncclGetUniqueId) get_unique_id;
  decltype(&ncclCommInitRank) comm_init_rank;
  decltype(&ncclCommDestroy) comm_destroy;
  decltype(&ncclCommAbort) comm_abort;
  decltype(&ncclGetErrorString) error_string;
  decltype(&ncclGetLastError) last_error;
  decltype(&ncclAllReduce) all_reduce;
  decltype(&ncclAllGather) all_gather;
  decltype(&ncclReduceScatter) reduce_scatter;
  decltype(&ncclBroadcast) broadcast;
  decltype(&ncclSend) send;
  decltype(&ncclRecv) recv;
};

// Loads NCCL once; the error (kept for later calls) says how to get it.
const Nccl* load_nccl(std::string* error) {
  static std::string failure;
  static const Nccl* api = []() -> const Nccl* {
    const char* named = std::getenv("LONGNET_NCCL_LIBRARY");
    const char* path = named != nullptr ? named : "libnccl.so.2";
    void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      failure = cat("NCCL could not be loaded from ", path, " (", dlerror(),
                    "): install NCCL (Debian/Ubuntu: libnccl2) or set LONGNET_NCCL_LIBRARY to "
                    "the path of libnccl.so.2 (PyTorch's wheels carry one in nvidia/nccl/lib)");
      return nullptr;
    }
    static Nccl loaded{};
    bool complete = true;
    auto find = [&](auto& slot, const char* name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(library, name));
      if (slot == nullptr) {
        complete = false;
        failure = cat("NCCL at ", path, " lacks ", name, "; NCCL 2.19 or newer is needed");
      }
    };
    find(loaded.get_unique_id, "ncclGetUniqueId");
    find(loaded.comm_init_rank, "ncclCommInitRank");
    find(loaded.comm_destroy, "ncclCommDestroy");
    find(loaded.comm_abort, "ncclCommAbort");
    find(loaded.error_string, "ncclGetErrorString");
    find(loaded.last_error, "ncclGetLastError");
    find(loaded.all_reduce, "ncclAllReduce");
    find(loaded.all_gather, "ncclAllGather");
    find(loaded.reduce_scatter, "ncclReduceScatter");
    find(loaded.broadcast, "ncclBroadcast");
    find(loaded.send, "ncclSend");
    find(loaded.recv, "ncclRecv");
    return complete ? &loaded : nullptr;
  }();
  if (api == nullptr && error != nullptr) *error = failure;
  return api;
}

const Nccl& nccl() {
  std::string error;
  const Nccl* api = load_nccl(&error);
  LN_CHECK(api != nullptr, error);
  return *api;
}

void check_nccl(ncclResult_t result, const char* call) {
  if (result == ncclSuccess) return;
  const Nccl& api = nccl();
  const char* detail = api.last_error(nullptr);
  throw Error(cat("NCCL: ", call, " failed: ", api.error_string(result),
                  detail != nullptr && *detail != '\0' ? cat(" (", detail, ")") : ""));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
  }
  throw Error(cat("NCCL: no type for ", name(dtype)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::avg:
      return ncclAvg;
    case ReduceOp::max:
      return ncclMax;
  }
  throw Error("NCCL: unknown reduce op");
}

// A CUDA event without timing, destroyed with its owner.
class Event {
 public:
  Event() { LN_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Whether the work before event on its stream has finished. Called from the watchdog's
// thread, so it never throws: an error other than "not ready" (the device is broken; the
// main thread will hear of it) counts as finished. The device is set first, so that this
// thread never makes a context on device 0.
bool reached(int device, const Event& event) {
  if (cudaSetDevice(device) != cudaSuccess) return true;
  cudaError_t status = cudaEventQuery(event.get());
  if (status == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  return true;
}

// What the watchdog does when an NCCL operation outlives the timeout. The main thread may
// be blocked in any CUDA call that waits for it, and a result that never came may already
// be in use, so there is no error to throw: this rank reports and exits, and the launcher
// then ends the other ranks (mpirun does on a non-zero exit).
[[noreturn]] void stop_on_timeout(int rank, const std::string& what, double seconds) {
  std::fprintf(stderr,
               "longnet: rank %d: NCCL %s has run %.1f s without finishing, longer than the "
               "communicator's timeout (dist.timeout_s): another rank stopped or hangs. This "
               "rank exits so that the launcher ends the run; resume from the last checkpoint.\n",
               rank, what.c_str(), seconds);
  std::fflush(stderr);
  std::_Exit(EXIT_FAILURE);
}

// An enqueued NCCL operation: done marks its end on the NCCL stream; finish runs on the
// device's stream once it waits for done (bf16 results narrowed back) and holds the
// tensors the operation reads and writes until then.
class NcclWork final : public Work {
 public:
  NcclWork(int device, std::shared_ptr<Event> done, std::function<void()> finish)
      : device_(device), done_(std::move(done)), finish_(std::move(finish)) {}

  // Dropped without wait(): the device's stream still waits for the operation before the
  // buffers go back to the allocator (whose reuse is ordered on that stream).
  ~NcclWork() override {
    if (waited_) return;
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) return;
    try {
      cudaSetDevice(device_);
      cudaStreamWaitEvent(cuda::current_stream(device_), done_->get(), 0);
    } catch (const Error&) {  // the stream exists (run() used it); nowhere to report anyway
    }
    cudaSetDevice(previous);
  }

  bool test() override {
    if (waited_) return true;
    cudaError_t status = cudaEventQuery(done_->get());
    if (status == cudaErrorNotReady) {
      cudaGetLastError();  // "not ready" is an answer, not an error for the next launch
      return false;
    }
    LN_CUDA_CHECK(status);
    return true;
  }

  void wait() override {
    if (waited_) return;
    cuda::DeviceGuard guard(device_);
    LN_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(device_), done_->get(), 0));
    if (finish_) finish_();
    waited_ = true;
  }

 private:
  int device_;
  std::shared_ptr<Event> done_;
  std::function<void()> finish_;
  bool waited_ = false;
};

// The fields of a call that every rank must agree on.
constexpr std::int64_t kMaxDims = 8;
constexpr std::int64_t kSignatureLength = 5 + kMaxDims;

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> host, int device)
      : host_(std::move(host)),
        device_(device),
        watchdog_(
            [rank = host_ != nullptr ? host_->rank() : -1](
                const std::string& what, double seconds) { stop_on_timeout(rank, what, seconds); },
            0.1) {
    LN_CHECK(host_ != nullptr, "make_nccl_communicator: needs the host communicator");
    LN_CHECK(device >= 0 && device < cuda::device_count(), "make_nccl_communicator: rank ",
             host_->rank(), " asked for cuda:", device, ", but this machine has ",
             cuda::device_count(), " CUDA device(s)");
    const Nccl& api = nccl();
    ncclUniqueId id{};
    static_assert(sizeof(ncclUniqueId) % sizeof(std::int32_t) == 0);
    Tensor id_words =
        zeros({static_cast<std::int64_t>(sizeof(id) / sizeof(std::int32_t))}, {DType::i32});
    if (host_->rank() == 0) {
      LN_NCCL_CHECK(api.get_unique_id(&id));
      std::memcpy(id_words.raw_data(), &id, sizeof(id));
    }
    host_->broadcast(id_words, 0);
    std::memcpy(&id, id_words.raw_data(), sizeof(id));
    cuda::DeviceGuard guard(device_);
    // NVLink multicast stays off (DESIGN.md section 7) unless the user chose otherwise.
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    LN_NCCL_CHECK(api.comm_init_rank(&comm_, host_->size(), id, host_->rank()));
    LN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }

  // Unwinding from an error, the peers may never join what is enqueued: abort the
  // communicator (its operations end) instead of waiting for them, so the program can
  // exit and the launcher end the other ranks. Otherwise finish and destroy it.
  ~NcclCommunicator() override {
    if (cudaSetDevice(device_) != cudaSuccess) return;
    if (std::uncaught_exceptions() > 0) {
      nccl().comm_abort(comm_);
    } else {
      cudaStreamSynchronize(stream_);
      nccl().comm_destroy(comm_);
    }
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string backend() const override { return "nccl+" + host_->backend(); }

  void all_reduce(const Tensor& t, ReduceOp op) override {
    if (t.device().is_cpu()) return host_->all_reduce(t, op);
    all_reduce_async(t, op)->wait();
  }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    if (t.device().is_cpu()) return host_->all_reduce_async(t, op);
    bool widen = t.dtype() == DType::bf16;
    Tensor acc;
    // The f32 copy is made before the ranks agree: running out of memory is then an error
    // on every rank, not a rank missing from the collective.
    agree(
        "all_reduce",
        [&] {
          check_all_reduce(t, op);
          acc = widen ? to(t, DType::f32) : t;
        },
        t, static_cast<std::int64_t>(op));
    auto done = run("all_reduce", t, [&] {
      LN_NCCL_CHECK(nccl().all_reduce(acc.raw_data(), acc.raw_data(),
                                      static_cast<std::size_t>(acc.numel()), nccl_type(acc.dtype()),
                                      nccl_op(op), comm_, stream_));
    });
    std::function<void()> finish = [acc, t, widen] {
      if (widen) copy_(t, acc);
    };
    return std::make_unique<NcclWork>(device_, std::move(done), finish);
  }

  void all_gather(const Tensor& in, const Tensor& out) override {
    if (in.device().is_cpu() && out.device().is_cpu()) return host_->all_gather(in, out);
    all_gather_async(in, out)->wait();
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    if (in.device().is_cpu() && out.device().is_cpu()) return host_->all_gather_async(in, out);
    agree(
        "all_gather", [&] { check_all_gather(in, out, rank(), size()); }, in, 0);
    auto count = static_cast<std::size_t>(in.numel());
    // NCCL's in-place form: the send buffer is the receiver's own slot.
    const void* send = is_own_slot(in, out, rank())
                           ? static_cast<const char*>(out.raw_data()) +
                                 count * element_size(in.dtype()) * static_cast<std::size_t>(rank())
                           : in.raw_data();
    auto done = run("all_gather", in, [&] {
      LN_NCCL_CHECK(
          nccl().all_gather(send, out.raw_data(), count, nccl_type(in.dtype()), comm_, stream_));
    });
    return std::make_unique<NcclWork>(device_, std::move(done), [in, out] {});
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override {
    if (in.device().is_cpu() && out.device().is_cpu()) {
      return host_->reduce_scatter(in, out, op);
    }
    reduce_scatter_async(in, out, op)->wait();
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    if (in.device().is_cpu() && out.device().is_cpu()) {
      return host_->reduce_scatter_async(in, out, op);
    }
    bool widen = in.dtype() == DType::bf16;
    Tensor src;
    Tensor acc;
    agree(
        "reduce_scatter",
        [&] {
          check_reduce_scatter(in, out, op, size());
          src = widen ? to(in, DType::f32) : in;
          acc = widen ? empty(out.shape(), {DType::f32, out.device()}) : out;
        },
        in, static_cast<std::int64_t>(op));
    auto done = run("reduce_scatter", in, [&] {
      LN_NCCL_CHECK(nccl().reduce_scatter(src.raw_data(), acc.raw_data(),
                                          static_cast<std::size_t>(acc.numel()),
                                          nccl_type(acc.dtype()), nccl_op(op), comm_, stream_));
    });
    // Holds src and acc until the operation ended on the device's stream.
    std::function<void()> finish = [src, acc, out, widen] {
      if (widen) copy_(out, acc);
    };
    return std::make_unique<NcclWork>(device_, std::move(done), finish);
  }

  void broadcast(const Tensor& t, int root) override {
    if (t.device().is_cpu()) return host_->broadcast(t, root);
    agree(
        "broadcast", [&] { check_broadcast(t, root, size()); }, t, root);
    auto done = run("broadcast", t, [&] {
      LN_NCCL_CHECK(nccl().broadcast(t.raw_data(), t.raw_data(),
                                     static_cast<std::size_t>(t.numel()), nccl_type(t.dtype()),
                                     root, comm_, stream_));
    });
    NcclWork(device_, std::move(done), nullptr).wait();
  }

  void send(const Tensor& t, int dst, int tag) override {
    if (t.device().is_cpu()) return host_->send(t, dst, tag);
    check_point_to_point(t, dst, tag, kMaxTag, rank(), size(), "send");
    check_here(t, "send");
    auto done = run(cat("send to rank ", dst, " of"), t, [&] {
      LN_NCCL_CHECK(nccl().send(t.raw_data(), bytes_of(t), ncclUint8, dst, comm_, stream_));
    });
    NcclWork(device_, std::move(done), nullptr).wait();
  }

  void recv(const Tensor& t, int src, int tag) override {
    if (t.device().is_cpu()) return host_->recv(t, src, tag);
    check_point_to_point(t, src, tag, kMaxTag, rank(), size(), "recv");
    check_here(t, "recv");
    auto done = run(cat("recv from rank ", src, " into"), t, [&] {
      LN_NCCL_CHECK(nccl().recv(t.raw_data(), bytes_of(t), ncclUint8, src, comm_, stream_));
    });
    NcclWork(device_, std::move(done), nullptr).wait();
  }

  // The host's barrier: every rank has called it once it returns (GPU work may still run).
  void barrier() override { host_->barrier(); }

  // The host's waits (argument agreement, CPU tensors) time out with an error; an NCCL
  // operation that runs longer makes the watchdog stop the process (stop_on_timeout).
  void set_timeout(double seconds) override {
    Communicator::set_timeout(seconds);
    host_->set_timeout(seconds);
    watchdog_.set_timeout(seconds);
  }

 private:
  static constexpr int kMaxTag = 32767;

  static std::size_t bytes_of(const Tensor& t) {
    return static_cast<std::size_t>(t.numel()) * element_size(t.dtype());
  }

  void check_here(const Tensor& t, const char* call) const {
    check_buffer(t, call);
    LN_CHECK(t.device() == Device::cuda(device_), call, ": this rank's NCCL communicator is on ",
             str(Device::cuda(device_)), ", got ", describe(t));
  }

  // Enqueues f's NCCL work on the NCCL stream after the work queued on the device's stream,
  // watched from its start to its end (the watchdog names it: call, tensor, sequence
  // number); returns the event that marks its end.
  template <class F>
  std::shared_ptr<Event> run(const std::string& call, const Tensor& t, F f) {
    cuda::DeviceGuard guard(device_);
    Event ready;
    LN_CUDA_CHECK(cudaEventRecord(ready.get(), cuda::current_stream(device_)));
    LN_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready.get(), 0));
    auto started = std::make_shared<Event>();
    LN_CUDA_CHECK(cudaEventRecord(started->get(), stream_));
    f();
    auto done = std::make_shared<Event>();
    LN_CUDA_CHECK(cudaEventRecord(done->get(), stream_));
    watchdog_.watch(
        cat(call, " ", describe(t), " (operation ", ++operations_, " of this communicator)"),
        [device = device_, started] { return reached(device, *started); },
        [device = device_, done] { return reached(device, *done); });
    return done;
  }

  // Runs check (this rank's argument checks, and the tensor's device), then gathers every
  // rank's signature through the host. Throws on every rank when a rank's check failed or
  // the signatures differ.
  void agree(const char* call, const std::function<void()>& check, const Tensor& t,
             std::int64_t param) {
    Tensor mine = full({kSignatureLength}, -1, {DType::i64});
    std::string error;
    try {
      check_here(t, call);
      check();
      LN_CHECK(t.dim() <= kMaxDims, call, ": at most ", kMaxDims, " dims, got ", describe(t));
      auto* s = mine.data<std::int64_t>();
      s[0] = 1;
      s[1] = static_cast<std::int64_t>(t.dtype());
      s[2] = param;
      s[3] = t.dim();
      s[4] = call_id(call);  // ranks in different collectives must not pair up
      for (std::int64_t d = 0; d < t.dim(); ++d) s[5 + d] = t.size(d);
    } catch (const Error& e) {
      error = e.what();
      mine.data<std::int64_t>()[0] = 0;
    }
    Tensor all = empty({size(), kSignatureLength}, {DType::i64});
    host_->all_gather(mine, all);
    if (!error.empty()) throw Error(error);
    const auto* rows = all.data<std::int64_t>();
    for (int r = 0; r < size(); ++r) {
      const std::int64_t* row = rows + r * kSignatureLength;
      LN_CHECK(row[0] == 1, call, ": rank ", r,
               " passed invalid arguments (its error says which), so no rank ran it");
      LN_CHECK(row[4] == rows[4], call, ": rank ", r, " is in ", call_name(row[4]),
               " while rank 0 is in ", call_name(rows[4]),
               "; every rank must make the same calls in the same order, so no rank ran it");
      LN_CHECK(std::equal(row, row + kSignatureLength, rows), call, ": rank ", r,
               " passed another dtype, shape or ", call, " parameter than rank 0 (", describe(t),
               " here); every rank must pass the same, so no rank ran it");
    }
  }

  std::unique_ptr<Communicator> host_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::int64_t operations_ = 0;
  // Destroyed after the destructor's body: a hang while it finishes the stream is caught.
  Watchdog watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host,
                                                     int device) {
  return std::make_unique<NcclCommunicator>(std::move(host), device);
}

bool nccl_available() { return cuda::device_count() > 0 && load_nccl(nullptr) != nullptr; }

}  // namespace longnet
