// The MPI backend. Collectives and point-to-point calls are started non-blocking and
// completed in wait_for(), the one place that waits on other ranks; a blocking all_reduce
// or all_gather is its async version waited on at once. Before a collective moves any
// data, every rank's arguments are gathered (agree()), so invalid or mismatched arguments
// on any rank make every rank throw instead of hanging or moving garbage.
#include "dist/mpi.h"

#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "dist/arguments.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"

// Every MPI call goes through this: the communicator's error handler is
// MPI_ERRORS_RETURN, and a failure becomes a longnet::Error naming the call.
#define LN_MPI_CHECK(call) check_mpi((call), #call)

namespace longnet {
namespace {

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  std::array<char, MPI_MAX_ERROR_STRING> text{};
  int length = 0;
  MPI_Error_string(code, text.data(), &length);
  throw Error(cat("MPI: ", call, " failed: ", std::string(text.data(), length)));
}

void initialize() {
  int initialized = 0;
  LN_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    LN_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }
  int level = 0;
  LN_MPI_CHECK(MPI_Query_thread(&level));
  LN_CHECK(level >= MPI_THREAD_SERIALIZED, "MPI: initialised with thread level ", level,
           "; the communicator needs MPI_THREAD_SERIALIZED (", MPI_THREAD_SERIALIZED, ")");
}

// The type elements move as. bf16 moves as its 16 bits; it is never reduced as bf16.
MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::bf16:
      return MPI_UINT16_T;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      break;
  }
  return MPI_INT64_T;
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::max ? MPI_MAX : MPI_SUM; }

// MPI counts are int.
void check_count(std::int64_t count, const Tensor& t, const char* call) {
  LN_CHECK(count <= INT_MAX, call, ": ", describe(t), " is more than one MPI call moves (", INT_MAX,
           " elements, or bytes for send and recv); split it");
}

void check_host(const Tensor& t, const char* call) {
  LN_CHECK(t.device().is_cpu(), call, ": the MPI communicator moves CPU tensors, got ", describe(t),
           "; GPU tensors will go through the NCCL communicator (not built yet)");
}

// reduce_scatter and all_reduce of bf16 reduce an f32 copy (acc): avg divides it, and the
// result is rounded into out once.
void finish_reduction(const Tensor& acc, const Tensor& out, ReduceOp op, int size) {
  if (op == ReduceOp::avg) {
    binary_out(BinaryOp::div, acc, scalar(size, {acc.dtype()}), acc);
  }
  if (acc.raw_data() != out.raw_data()) copy_(out, acc);
}

// Buffers of calls given up after a timeout: MPI may still write into them, so they are
// never freed.
void abandon(std::shared_ptr<const void> buffers) {
  static std::vector<std::shared_ptr<const void>> graveyard;
  graveyard.push_back(std::move(buffers));
}

// Polls until done() is true: the one place this backend waits on other ranks. After a
// while it sleeps between polls, so that ranks sharing cores leave them to the ranks with
// work. Past timeout seconds it throws: a rank that stopped or hangs then stops the others
// (their error ends the program, and the launcher ends the rest) instead of leaving them
// waiting forever.
void wait_for(const char* call, const std::function<bool()>& done, double timeout, int rank) {
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now();
  for (std::int64_t polls = 0; !done(); ++polls) {
    if (polls < 1000) continue;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited > timeout) {
      throw Error(cat(call, ": rank ", rank, " waited ", timeout,
                      " s for the other ranks (the communicator's timeout, dist.timeout_s in ",
                      "longnet-train): a rank has stopped, hangs or called another collective; ",
                      "giving up"));
    }
  }
}

// A started collective. It holds the buffers MPI reads and writes until the request
// completes; then finish (when given) runs: a reduction's avg and bf16 rounding.
class MpiWork final : public Work {
 public:
  MpiWork(const char* call, MPI_Request request, std::vector<Tensor> buffers, double timeout,
          int rank, std::function<void()> finish = {})
      : call_(call),
        request_(request),
        buffers_(std::move(buffers)),
        timeout_(timeout),
        rank_(rank),
        finish_(std::move(finish)) {}

  ~MpiWork() override {
    // MPI cannot cancel a collective, and its buffers must outlive it. An error here has
    // nowhere to go: the caller has stopped waiting already.
    try {
      wait();
    } catch (const Error&) {
    }
  }

  bool test() override {
    if (!done_) {
      int complete = 0;
      LN_MPI_CHECK(MPI_Test(&request_, &complete, MPI_STATUS_IGNORE));
      if (complete) {
        done_ = true;
        if (finish_) finish_();
        buffers_.clear();
      }
    }
    return done_;
  }

  void wait() override {
    if (done_ || given_up_) return;
    try {
      wait_for(
          call_, [&] { return test(); }, timeout_, rank_);
    } catch (const Error&) {
      given_up_ = true;
      abandon(std::make_shared<std::vector<Tensor>>(std::move(buffers_)));
      throw;
    }
  }

 private:
  const char* call_;
  MPI_Request request_;
  std::vector<Tensor> buffers_;
  double timeout_;
  int rank_;
  std::function<void()> finish_;
  bool done_ = false;
  bool given_up_ = false;  // timed out: the buffers are abandoned
};

// What every rank must pass alike to a collective, and whether this rank's arguments were
// valid: gathered from every rank before any data moves.
struct Signature {
  static constexpr int kDims = 8;  // dims past these are compared through numel only
  std::int64_t valid = 0;
  std::int64_t call = 0;  // call_id: ranks in different collectives must not pair up
  std::int64_t dtype = 0;
  std::int64_t param = 0;  // the ReduceOp or the root
  std::int64_t ndim = 0;
  std::int64_t numel = 0;
  std::array<std::int64_t, kDims> dims{};

  bool operator==(const Signature&) const = default;
};

Signature signature_of(const char* call, const Tensor& t, std::int64_t param) {
  Signature s;
  s.valid = 1;
  s.call = call_id(call);
  s.dtype = static_cast<std::int64_t>(t.dtype());
  s.param = param;
  s.ndim = t.dim();
  s.numel = t.numel();
  for (std::int64_t d = 0; d < std::min<std::int64_t>(t.dim(), Signature::kDims); ++d) {
    s.dims[d] = t.size(d);
  }
  return s;
}

// What a collective's param means, for error messages.
enum class Param { none, op, root };

// with_call: name the collective too (when the ranks are in different ones).
std::string describe(const Signature& s, Param param, bool with_call) {
  std::string text = cat(with_call ? cat(call_name(s.call), ' ') : std::string(),
                         name(static_cast<DType>(s.dtype)), '[');
  for (std::int64_t d = 0; d < std::min<std::int64_t>(s.ndim, Signature::kDims); ++d) {
    text += cat(d > 0 ? ", " : "", s.dims[d]);
  }
  text += s.ndim > Signature::kDims ? ", ...]" : "]";
  if (param == Param::op) text += cat(' ', name(static_cast<ReduceOp>(s.param)));
  if (param == Param::root) text += cat(" root ", s.param);
  return text;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    initialize();
    LN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
    LN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    LN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    LN_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    int* tag_ub = nullptr;
    int found = 0;
    // MPI_TAG_UB is set on MPI_COMM_WORLD only.
    LN_MPI_CHECK(
        MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, static_cast<void*>(&tag_ub), &found));
    if (found) max_tag_ = *tag_ub;
  }

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(const Tensor& t, ReduceOp op) override { all_reduce_async(t, op)->wait(); }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    agree(
        "all_reduce",
        [&] {
          check_all_reduce(t, op);
          check_host(t, "all_reduce");
          check_count(t.numel(), t, "all_reduce");
        },
        t, static_cast<std::int64_t>(op), Param::op);
    Tensor acc = t.dtype() == DType::bf16 ? to(t, DType::f32) : t;
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, acc.raw_data(), static_cast<int>(acc.numel()),
                                mpi_type(acc.dtype()), mpi_op(op), comm_, &request));
    int size = size_;
    return std::make_unique<MpiWork>("all_reduce", request, std::vector<Tensor>{acc}, timeout(),
                                     rank_,
                                     [acc, t, op, size] { finish_reduction(acc, t, op, size); });
  }

  void all_gather(const Tensor& in, const Tensor& out) override {
    all_gather_async(in, out)->wait();
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    agree(
        "all_gather",
        [&] {
          check_all_gather(in, out, rank_, size_);
          check_host(in, "all_gather");
          check_count(in.numel(), in, "all_gather");
        },
        in, 0, Param::none);
    const void* send = is_own_slot(in, out, rank_) ? MPI_IN_PLACE : in.raw_data();
    auto count = static_cast<int>(in.numel());
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Iallgather(send, count, mpi_type(in.dtype()), out.raw_data(), count,
                                mpi_type(in.dtype()), comm_, &request));
    return std::make_unique<MpiWork>("all_gather", request, std::vector<Tensor>{in, out}, timeout(),
                                     rank_);
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override {
    reduce_scatter_async(in, out, op)->wait();
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    agree(
        "reduce_scatter",
        [&] {
          check_reduce_scatter(in, out, op, size_);
          check_host(in, "reduce_scatter");
          check_count(in.numel(), in, "reduce_scatter");
        },
        in, static_cast<std::int64_t>(op), Param::op);
    bool widen = in.dtype() == DType::bf16;
    Tensor src = widen ? to(in, DType::f32) : in;
    Tensor acc = widen ? empty(out.shape(), {DType::f32}) : out;
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Ireduce_scatter_block(src.raw_data(), acc.raw_data(),
                                           static_cast<int>(acc.numel()), mpi_type(acc.dtype()),
                                           mpi_op(op), comm_, &request));
    int size = size_;
    return std::make_unique<MpiWork>(
        "reduce_scatter", request, std::vector<Tensor>{src, acc}, timeout(), rank_,
        [acc, out, op, size] { finish_reduction(acc, out, op, size); });
  }

  void broadcast(const Tensor& t, int root) override {
    agree(
        "broadcast",
        [&] {
          check_broadcast(t, root, size_);
          check_host(t, "broadcast");
          check_count(t.numel(), t, "broadcast");
        },
        t, root, Param::root);
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Ibcast(t.raw_data(), static_cast<int>(t.numel()), mpi_type(t.dtype()), root,
                            comm_, &request));
    wait(request, "broadcast", std::make_shared<Tensor>(t));
  }

  // Point to point moves bytes, so that recv can compare byte counts.
  void send(const Tensor& t, int dst, int tag) override {
    std::int64_t bytes = checked_bytes(t, dst, tag, "send");
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(
        MPI_Isend(t.raw_data(), static_cast<int>(bytes), MPI_BYTE, dst, tag, comm_, &request));
    wait(request, "send", std::make_shared<Tensor>(t));
  }

  void recv(const Tensor& t, int src, int tag) override {
    std::int64_t bytes = checked_bytes(t, src, tag, "recv");
    MPI_Message message = MPI_MESSAGE_NULL;
    MPI_Status status;
    wait_for(
        "recv",
        [&] {
          int found = 0;
          LN_MPI_CHECK(MPI_Improbe(src, tag, comm_, &found, &message, &status));
          return found != 0;
        },
        timeout(), rank_);
    int sent = 0;
    LN_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &sent));
    if (sent != bytes) {
      std::vector<char> discard(static_cast<std::size_t>(sent));
      LN_MPI_CHECK(MPI_Mrecv(discard.data(), sent, MPI_BYTE, &message, MPI_STATUS_IGNORE));
      throw Error(cat("recv: rank ", src, " sent ", sent, " bytes with tag ", tag, ", but ",
                      describe(t), " holds ", bytes, "; the message was discarded"));
    }
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Imrecv(t.raw_data(), sent, MPI_BYTE, &message, &request));
    wait(request, "recv", std::make_shared<Tensor>(t));
  }

  void barrier() override {
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Ibarrier(comm_, &request));
    wait(request, "barrier", nullptr);
  }

 private:
  // Runs check (this rank's argument checks), then gathers every rank's signature. Throws on
  // every rank when any rank's check failed or the signatures differ; returns on every
  // rank otherwise.
  void agree(const char* call, const std::function<void()>& check, const Tensor& t,
             std::int64_t param, Param meaning) {
    // On the heap: a call given up after a timeout leaves them to MPI.
    auto signatures = std::make_shared<std::vector<Signature>>(static_cast<std::size_t>(size_ + 1));
    Signature& mine = signatures->back();
    std::string error;
    try {
      check();
      mine = signature_of(call, t, param);
    } catch (const Error& e) {
      error = e.what();
    }
    MPI_Request request = MPI_REQUEST_NULL;
    LN_MPI_CHECK(MPI_Iallgather(&mine, sizeof(Signature), MPI_BYTE, signatures->data(),
                                sizeof(Signature), MPI_BYTE, comm_, &request));
    wait(request, call, signatures);
    std::vector<Signature> all(signatures->begin(), signatures->end() - 1);
    if (!error.empty()) throw Error(error);
    for (int r = 0; r < size_; ++r) {
      LN_CHECK(all[r].valid, call, ": rank ", r,
               " passed invalid arguments (its error says which), so no rank ran it");
    }
    if (std::all_of(all.begin(), all.end(), [&](const Signature& s) { return s == all[0]; })) {
      return;
    }
    bool calls_differ = std::any_of(all.begin(), all.end(),
                                    [&](const Signature& s) { return s.call != all[0].call; });
    std::string ranks;
    for (int r = 0; r < size_; ++r) {
      ranks += cat(r > 0 ? ", " : "", "rank ", r, " has ", describe(all[r], meaning, calls_differ));
    }
    throw Error(cat(call, ": ranks disagree (", ranks,
                    "); every rank must make the same call with the same dtype, shape",
                    meaning == Param::op     ? " and op"
                    : meaning == Param::root ? " and root"
                                             : "",
                    ", so no rank ran it"));
  }

  // send and recv: this rank's checks; the message size in bytes.
  std::int64_t checked_bytes(const Tensor& t, int peer, int tag, const char* call) const {
    check_point_to_point(t, peer, tag, max_tag_, rank_, size_, call);
    check_host(t, call);
    std::int64_t bytes = t.numel() * static_cast<std::int64_t>(element_size(t.dtype()));
    check_count(bytes, t, call);
    return bytes;
  }

  // Waits for request; after a timeout the buffers it uses (kept) are abandoned to MPI.
  void wait(MPI_Request& request, const char* call, std::shared_ptr<const void> kept) {
    try {
      wait_for(
          call,
          [&] {
            int done = 0;
            LN_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
            return done != 0;
          },
          timeout(), rank_);
    } catch (const Error&) {
      abandon(std::move(kept));
      throw;
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int max_tag_ = 32767;  // the least MPI_TAG_UB that MPI allows
};

}  // namespace

bool built_with_mpi() { return true; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  return std::make_unique<MpiCommunicator>();
}

}  // namespace longnet
