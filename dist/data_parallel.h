// Data parallel training (DESIGN.md section 7): every rank holds the same parameters, runs
// forward and backward on its own part of the batch, and ends the step with every
// parameter's gradient averaged over the ranks, so that identical optimizer steps keep
// the replicas identical.
//
//   DataParallel dp(model.parameters(), comm, config);  // rank 0's values on every rank
//   for each micro-batch i of a step (gradient accumulation over A micro-batches):
//     dp.set_sync(i == A - 1);  // nothing is sent on the others
//     loss_i.backward();
//   dp.synchronize();           // every gradient now the average over ranks
//   optimizer step; zero the gradients
//
// Buckets. In a backward pass with sync on, each parameter joins the open bucket when its
// gradient is final (its gradient-ready hook: autograd/variable.h), so buckets fill in the
// order gradients become ready. The open bucket is flushed, i.e. its gradients are copied
// into one flat buffer and their reduction is started (an async all-reduce, or the
// compressed exchange of dist/compression.h) while backward continues, as soon as it
// holds at least first_bucket_mb (the step's first bucket) or bucket_mb (later ones) of
// gradients (MB = 2^20 bytes), or bucket_tensors tensors. synchronize() adds the
// parameters the pass never reached (in parameter order), flushes the last bucket, waits
// for every bucket in flush order and writes the averaged gradients into the parameters.
//
// Parameters without a gradient: one the pass reached without giving it a gradient, or
// never reached, counts as a zero gradient, and after synchronize() holds the average
// (zeros when no rank had a gradient for it; then AdamW still decays its moments, where a
// single process would skip it).
//
// Every rank must run the same backward passes over the same graph, so that parameters
// become ready in the same order and the buckets agree; synchronize() checks that the
// ranks' buckets match (one small all-reduce) and throws on every rank when they do not.
// Parameters: leaves that require grad, of one floating dtype and one device. The
// communicator and the parameters must outlive the DataParallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/variable.h"
#include "dist/communicator.h"
#include "dist/compression.h"

namespace longnet {

struct DataParallelConfig {
  double first_bucket_mb = 1;
  double bucket_mb = 25;
  std::int64_t bucket_tensors = 32;
  CompressionConfig compression;
};

// An error naming the field unless config is valid.
void validate(const DataParallelConfig& config);

class DataParallel {
 public:
  // Broadcasts every parameter from rank 0, then hooks the parameters' gradients.
  DataParallel(std::vector<Variable> parameters, Communicator& comm,
               const DataParallelConfig& config = {});
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;
  // Removes the hooks; waits for reductions still in flight.
  ~DataParallel();

  // Whether backward passes send gradients (on by default). Off: the gradients only
  // accumulate locally, as in a micro-step of gradient accumulation.
  void set_sync(bool on) { sync_ = on; }

  // Ends a step whose last backward ran with sync on: see the top of this file. Errors:
  // sync off; ranks whose buckets differ.
  void synchronize();

  // Of the last synchronize(): bytes this rank handed to collectives for the step, and its
  // buckets in flush order as indices into the parameters.
  std::int64_t bytes_sent() const { return bytes_sent_; }
  const std::vector<std::vector<std::size_t>>& buckets() const { return buckets_; }

  // Drops the error-feedback residuals (dist/compression.h): after a step whose update was skipped,
  // they hold its gradients.
  void clear_error_feedback() { reducer_->clear_residuals(); }

  // Parameter i's error-feedback residual shaped like the parameter (undefined without one),
  // and its replacement (a resumed run's; an error without compression).
  Tensor error_feedback(std::size_t i) const;
  void set_error_feedback(std::size_t i, const Tensor& value);
  // Parameter i's PowerSGD Q (undefined otherwise), and its replacement.
  Tensor warm_start(std::size_t i) const { return reducer_->warm_start(i); }
  void set_warm_start(std::size_t i, const Tensor& q) { reducer_->set_warm_start(i, q); }

 private:
  void on_ready(std::size_t i);
  void flush();

  std::vector<Variable> parameters_;
  Communicator& comm_;
  DataParallelConfig config_;
  std::unique_ptr<GradientReducer> reducer_;
  std::vector<std::size_t> hooks_;
  bool sync_ = true;

  // The step in progress.
  std::vector<bool> ready_;
  std::vector<std::size_t> open_;  // the open bucket
  std::int64_t open_bytes_ = 0;
  std::vector<std::vector<std::size_t>> flushed_;
  std::vector<std::unique_ptr<PendingReduction>> pending_;  // one per flushed bucket
  std::int64_t bytes_at_start_ = 0;

  // The last synchronize().
  std::vector<std::vector<std::size_t>> buckets_;
  std::int64_t bytes_sent_ = 0;
};

}  // namespace longnet
