// The Communicator: the ranks of one run and the collectives between them (DESIGN.md
// section 7). A program calls make_communicator() once; under mpirun/srun it gets the MPI
// backend, otherwise a single-process communicator (rank 0 of 1) that needs no MPI at run
// time.
//
// Contract, for every backend:
// - Tensors are defined and contiguous, and every dtype moves (f32, f64, bf16, i32, i64).
//   The MPI backend takes CPU tensors (GPU tensors will go through NCCL).
// - Every rank calls the same collectives in the same order with the same dtype, shape
//   and op or root. Where a backend can see a difference it throws on every rank, naming
//   what each rank passed, before any data moves; the MPI backend also throws on every rank
//   when one rank's arguments are invalid (non-contiguous, wrong shape, root out of range),
//   so no rank is left waiting in the collective.
// - Reductions: sum and max for every dtype, avg (the sum divided by size) for floating
//   dtypes. bf16 is reduced in f32: each rank widens its values to f32, the f32 values are
//   reduced, and the result is rounded to bf16 once (avg divides before rounding).
// - Floating sums may add in another order than a loop over ranks would. Every rank gets
//   the same bits (data parallel relies on it; MPI does not promise it in general, so
//   tests/test_dist.cpp checks it for the MPI in use).
// - Outputs are written in place; a tensor argument is a handle, so views may be passed.
// - Calls block until this rank's part is done. A rank that never arrives leaves the
//   others waiting until the communicator's timeout (set_timeout; none by default), when
//   their calls throw. NCCL's operations run in stream order with no host wait to throw
//   from: one that runs past the timeout makes its watchdog end the process (dist/watchdog.h).
// - The *_async calls (all_reduce, all_gather, reduce_scatter) start a collective and return
//   a Work to wait on later. They check and agree on their arguments when they start,
//   exactly as the blocking calls do (the MPI backend gathers every rank's arguments there:
//   a small blocking all-gather, so every rank must reach the call; a mismatch throws at the
//   call on every rank, before any data moves); then the data move in the background. Any
//   number may be in flight, together with blocking calls: every rank starts collectives in
//   the same order, whichever kind.
// - One thread at a time may use a communicator.
#pragma once

#include <limits>
#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace longnet {

enum class ReduceOp { sum, avg, max };

const char* name(ReduceOp op);

// A collective that an *_async call started. Until wait() returns, its tensors must be
// neither read nor written. Destroying a Work that has not finished waits for it (a
// started collective cannot be cancelled).
class Work {
 public:
  Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  virtual ~Work() = default;

  // Moves the collective on without blocking; true once it has finished (wait() then
  // returns at once).
  virtual bool test() = 0;
  // Returns once this rank's part is done and the result is in place.
  virtual void wait() = 0;
};

class Communicator {
 public:
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi" or "single-process".
  virtual std::string backend() const = 0;

  // t = op over ranks of every rank's t.
  virtual void all_reduce(const Tensor& t, ReduceOp op) = 0;
  // all_reduce, started: the result is in t once the Work's wait() returns.
  virtual std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) = 0;

  // out[r] = rank r's in: out has shape [size, in.shape...] and in's dtype. The result is
  // the concatenation along dim 0 viewed with a leading rank dim: reshape(out, {-1, ...})
  // gives the concatenation without a copy. in may be out[rank] itself (gathers in place);
  // any other overlap of in and out is an error.
  virtual void all_gather(const Tensor& in, const Tensor& out) = 0;
  // all_gather, started: the result is in out once the Work's wait() returns.
  virtual std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) = 0;

  // out = op over ranks of every rank's in[rank]: in has shape [size, out.shape...] and
  // out's dtype; in and out must not overlap. The inverse layout of all_gather.
  virtual void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) = 0;
  // reduce_scatter, started: the result is in out once the Work's wait() returns.
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                                     ReduceOp op) = 0;

  // t = root's t on every rank; root is in [0, size).
  virtual void broadcast(const Tensor& t, int root) = 0;

  // Point to point: recv(t, src, tag) receives what rank src sent with send(., dst, tag)
  // (tag >= 0). Messages with the same source and tag arrive in order. send may block
  // until the matching recv starts, so order ring passes to avoid a cycle of sends (e.g.
  // even ranks send first). A rank cannot send to itself. recv checks the byte count
  // against t (a message of another size is received and discarded, then an error); a
  // different dtype with the same byte count is not detected.
  virtual void send(const Tensor& t, int dst, int tag) = 0;
  virtual void recv(const Tensor& t, int src, int tag) = 0;

  // Returns once every rank has called it.
  virtual void barrier() = 0;

  // How long a call waits for the other ranks before it gives up with an error naming the
  // call (seconds > 0; the default, infinity, waits forever). After such an error the
  // communicator is unusable: the program should end, and the launcher then ends the other
  // ranks, so a rank that stopped or hangs stops the run instead of leaving it waiting.
  virtual void set_timeout(double seconds);
  double timeout() const { return timeout_; }

 private:
  double timeout_ = std::numeric_limits<double>::infinity();
};

// Under an MPI launcher (mpirun, srun: found from the environment, e.g.
// OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK) the MPI backend over all launched
// processes, initialising MPI on first use and finalising it at exit; otherwise the
// single-process communicator, which never touches MPI. Under a launcher in a build
// without MPI it is an error that says how to get MPI support.
std::unique_ptr<Communicator> make_communicator();

// This process's index among the launched processes of its node (from the launcher's
// OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID or PMIX_LOCAL_RANK), else its
// rank: the GPU it should use.
int local_rank(const Communicator& comm);

// Whether this build has the MPI backend.
bool built_with_mpi();

}  // namespace longnet
