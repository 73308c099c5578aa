// How data parallel averages a bucket of gradients over the ranks (DESIGN.md section 7):
// exactly ("none"), or compressed ("topk", "powersgd") with error feedback: what a rank's
// compressed message leaves out of its gradient is kept as a residual and added to its
// next gradient, so no gradient mass is lost, only delayed.
//
// "none"      one all-reduce (avg) of the bucket's gradients, flattened.
// "topk"      per bucket, acc = gradients + residuals (f32, or f64 for f64 gradients);
//             the k = ceil(topk_ratio x numel) elements of largest magnitude (ties: the
//             lower index) are sent as (i32 index, value) pairs by all-gather, and every
//             rank adds all ranks' pairs into zeros in rank order and divides by the number
//             of ranks (so every rank gets the same bits); the residual is acc with the
//             sent elements zeroed: sent + residual == acc exactly. Selection runs where
//             the gradients are (take_top_k below).
// "powersgd"  per tensor, a gradient of dim >= 2 is a matrix M (n = shape[0] rows) of
//             rank r = min(powersgd_rank, n, m); it is compressed when
//             n m >= powersgd_min_compression x r (n + m), else (and for vectors) it is
//             averaged exactly with the bucket's other such tensors. For a compressed one,
//             M = gradient + residual; P = M Q is averaged over ranks and orthonormalised
//             (Gram-Schmidt on its columns, in f64 on the host: one round trip for all of
//             a bucket's Ps), Q = M^T P is averaged, and the result is
//             P Q^T; residual = M - P Q^T. Q persists across steps (warm start) and starts
//             as normal draws from a seed fixed per tensor, the same on every rank. One
//             all-reduce carries the bucket's Ps, one its Qs.
//
// Bytes sent count what this rank hands to collectives (the tensors' sizes), not what the
// transport moves on the wire.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace longnet {

enum class Compression { none, topk, powersgd };
// "none" | "topk" | "powersgd"; anything else is an error listing the valid names.
Compression parse_compression(const std::string& name);
const char* name(Compression compression);

struct CompressionConfig {
  Compression kind = Compression::none;
  double topk_ratio = 0.01;  // (0, 1]
  std::int64_t powersgd_rank = 4;
  // A matrix is compressed when that sends at most 1 / this of it (PyTorch's default, 2).
  double powersgd_min_compression = 2;
};

// An error naming the field unless config is valid.
void validate(const CompressionConfig& config);

// Top-k's selection: writes the indices (i32, ascending) of the k elements of acc (contiguous
// 1-d f32 or f64, at most INT_MAX elements, 1 <= k <= numel) of largest magnitude (NaN counts
// as the largest; ties: the lower index) to index and their values to values (both [k], on
// acc's device), and zeros them in acc. On a GPU the same elements in the same order
// (dist/cuda/topk.h).
void take_top_k(const Tensor& acc, std::int64_t k, const Tensor& index, const Tensor& values);

// One bucket's reduction in flight.
class PendingReduction {
 public:
  virtual ~PendingReduction() = default;
  // Moves the communication on without blocking.
  virtual void poll() = 0;
  // Waits for the communication (and runs what is left of it); returns the averaged
  // gradient of each tensor of the bucket, in the bucket's order and shape.
  virtual std::vector<Tensor> finish() = 0;
};

// Averages buckets of gradients over comm's ranks. Keeps each tensor's state between
// steps (residual, PowerSGD's Q) under the id start() gives it; a tensor keeps its id and
// shape for the reducer's life. Every rank starts the same buckets (ids, shapes, dtype) in
// the same order and finishes them in that order.
class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  // Starts averaging one bucket: grads[j] is this rank's gradient of tensor ids[j];
  // all floating, of one dtype and device.
  virtual std::unique_ptr<PendingReduction> start(const std::vector<std::size_t>& ids,
                                                  const std::vector<Tensor>& grads) = 0;
  // Tensor id's residual (error feedback), shaped like its gradient; undefined when it has
  // none (no compression, or not compressed yet).
  virtual Tensor residual(std::size_t id) const = 0;
  // Drops every residual (after a step whose update was skipped, say); PowerSGD keeps Q.
  virtual void clear_residuals() = 0;
  // Makes value tensor id's residual (a resumed run's): the element count of its gradient,
  // any shape, dtype and device (converted to the reducer's). An error without compression.
  virtual void set_residual(std::size_t id, const Tensor& value) = 0;
  // PowerSGD's Q of tensor id (the same on every rank; undefined for other compressions or
  // before the tensor's first step), and its replacement (a resumed run's).
  virtual Tensor warm_start(std::size_t /*id*/) const { return {}; }
  virtual void set_warm_start(std::size_t id, const Tensor& q);
  // Bytes this rank has handed to collectives so far.
  std::int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  std::int64_t bytes_sent_ = 0;
};

std::unique_ptr<GradientReducer> make_gradient_reducer(const CompressionConfig& config,
                                                       Communicator& comm);

}  // namespace longnet
