#include "dist/data_parallel.h"

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/view.h"

namespace longnet {
namespace {

std::int64_t cap_bytes(double mb) { return static_cast<std::int64_t>(mb * (1 << 20)); }

std::int64_t bytes_of(const Variable& p) {
  return p.numel() * static_cast<std::int64_t>(element_size(p.dtype()));
}

// FNV-1a over the buckets' parameter indices and boundaries, in 63 bits.
std::int64_t layout_hash(const std::vector<std::vector<std::size_t>>& buckets) {
  std::uint64_t h = 14695981039346656037ULL;
  auto mix = [&](std::uint64_t v) {
    h ^= v;
    h *= 1099511628211ULL;
  };
  for (const auto& bucket : buckets) {
    for (std::size_t i : bucket) mix(i);
    mix(~std::uint64_t{0});
  }
  return static_cast<std::int64_t>(h >> 1);
}

// Throws on every rank unless every rank's buckets are these.
void check_buckets_agree(const std::vector<std::vector<std::size_t>>& buckets, Communicator& comm) {
  std::int64_t mine = layout_hash(buckets);
  Tensor hash = from_data<std::int64_t>({mine, -mine}, {2});
  comm.all_reduce(hash, ReduceOp::max);  // the largest hash and the smallest
  LN_CHECK(hash.data<std::int64_t>()[0] == mine && hash.data<std::int64_t>()[1] == -mine,
           "DataParallel::synchronize: the ranks' buckets differ (their parameters became ready ",
           "in different orders, or different parameters got gradients), so their gradients ",
           "cannot be averaged; every rank must run the same backward passes over the same graph");
}

}  // namespace

void validate(const DataParallelConfig& config) {
  LN_CHECK(config.first_bucket_mb > 0, "first_bucket_mb is ", config.first_bucket_mb,
           "; valid: numbers > 0");
  LN_CHECK(config.bucket_mb > 0, "bucket_mb is ", config.bucket_mb, "; valid: numbers > 0");
  LN_CHECK(config.bucket_tensors >= 1, "bucket_tensors is ", config.bucket_tensors,
           "; valid: integers >= 1");
  validate(config.compression);
}

DataParallel::DataParallel(std::vector<Variable> parameters, Communicator& comm,
                           const DataParallelConfig& config)
    : parameters_(std::move(parameters)),
      comm_(comm),
      config_(config),
      ready_(parameters_.size(), false) {
  validate(config_);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const Variable& p = parameters_[i];
    LN_CHECK(p.defined() && p.is_leaf() && p.requires_grad(), "DataParallel: parameter ", i,
             " must be a leaf Variable that requires grad");
    const Variable& first = parameters_.front();
    LN_CHECK(p.dtype() == first.dtype() && p.device() == first.device(),
             "DataParallel: the parameters must share one dtype and device; parameter 0 is ",
             describe(first.data()), ", parameter ", i, " is ", describe(p.data()));
  }
  reducer_ = make_gradient_reducer(config_.compression, comm_);
  for (const Variable& p : parameters_) comm_.broadcast(p.data(), 0);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    hooks_.push_back(parameters_[i].add_grad_ready_hook([this, i](const Tensor&) {
      if (sync_) on_ready(i);
    }));
  }
}

DataParallel::~DataParallel() {
  for (std::size_t i = 0; i < hooks_.size(); ++i) parameters_[i].remove_grad_ready_hook(hooks_[i]);
}

void DataParallel::on_ready(std::size_t i) {
  LN_CHECK(!ready_[i], "DataParallel: parameter ", i, " became ready twice in one step; call ",
           "synchronize() after each backward pass with sync on");
  ready_[i] = true;
  open_.push_back(i);
  open_bytes_ += bytes_of(parameters_[i]);
  double cap = flushed_.empty() ? config_.first_bucket_mb : config_.bucket_mb;
  if (open_bytes_ >= cap_bytes(cap) ||
      static_cast<std::int64_t>(open_.size()) >= config_.bucket_tensors) {
    flush();
  }
  for (auto& p : pending_) p->poll();
}

void DataParallel::flush() {
  std::vector<Tensor> grads;
  for (std::size_t i : open_) {
    const Variable& p = parameters_[i];
    grads.push_back(p.grad().defined() ? p.grad() : zeros_like(p.data()));
  }
  pending_.push_back(reducer_->start(open_, grads));
  flushed_.push_back(std::move(open_));
  open_.clear();
  open_bytes_ = 0;
}

void DataParallel::synchronize() {
  LN_CHECK(sync_, "DataParallel::synchronize: sync is off, so this step sent no gradient; run ",
           "the step's last backward pass after set_sync(true)");
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    if (!ready_[i]) on_ready(i);
  }
  if (!open_.empty()) flush();
  std::vector<std::vector<std::size_t>> buckets = std::move(flushed_);
  std::vector<std::unique_ptr<PendingReduction>> pending = std::move(pending_);
  flushed_.clear();
  pending_.clear();
  ready_.assign(parameters_.size(), false);

  check_buckets_agree(buckets, comm_);
  for (std::size_t b = 0; b < buckets.size(); ++b) {
    std::vector<Tensor> averaged = pending[b]->finish();
    for (std::size_t j = 0; j < buckets[b].size(); ++j) {
      const Variable& p = parameters_[buckets[b][j]];
      if (!p.grad().defined()) p.set_grad(zeros_like(p.data()));
      copy_(p.grad(), averaged[j]);
    }
  }
  bytes_sent_ = reducer_->bytes_sent() - bytes_at_start_;
  bytes_at_start_ = reducer_->bytes_sent();
  buckets_ = std::move(buckets);
}

Tensor DataParallel::error_feedback(std::size_t i) const {
  Tensor r = reducer_->residual(i);
  return r.defined() ? reshape(r, parameters_.at(i).shape()) : r;
}

void DataParallel::set_error_feedback(std::size_t i, const Tensor& value) {
  LN_CHECK(value.numel() == parameters_.at(i).numel(), "set_error_feedback: parameter ", i, " ",
           describe(parameters_[i].data()), " gets a residual ", describe(value));
  reducer_->set_residual(i, value);
}

}  // namespace longnet
