#include "dist/compression.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "dist/cuda/topk.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/matmul.h"
#include "tensor/random.h"
#include "tensor/view.h"

namespace longnet {
namespace {

// The Philox key of PowerSGD's first Q for tensor id is kQSeed + id.
constexpr std::uint64_t kQSeed = 0x706f77657273676cULL;  // "powersgl"

std::int64_t bytes_of(const Tensor& t) {
  return t.numel() * static_cast<std::int64_t>(element_size(t.dtype()));
}

// Compressed values are kept and summed in f32 (f64 for f64 gradients).
DType accumulation_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

void check_bucket(const std::vector<std::size_t>& ids, const std::vector<Tensor>& grads) {
  LN_CHECK(!grads.empty() && ids.size() == grads.size(), "gradient reducer: a bucket needs one id ",
           "per gradient and at least one, got ", ids.size(), " ids and ", grads.size(),
           " gradients");
  for (const Tensor& g : grads) {
    check_defined(g, "gradient reducer");
    LN_CHECK(is_floating(g.dtype()), "gradient reducer: gradients are floating, got ", describe(g));
    check_same_dtype(grads.front(), g, "gradient reducer");
    check_same_device(grads.front(), g, "gradient reducer");
  }
}

// The tensors flattened, cast to dtype and joined: a fresh contiguous vector.
Tensor joined(const std::vector<Tensor>& parts, DType dtype) {
  std::vector<Tensor> flat;
  flat.reserve(parts.size());
  for (const Tensor& p : parts) flat.push_back(reshape(to(p, dtype), {-1}));
  return concat(flat, 0);
}

// Views of consecutive pieces of flat with the given shapes.
std::vector<Tensor> pieces(const Tensor& flat, const std::vector<Shape>& shapes) {
  std::vector<Tensor> out;
  std::int64_t offset = 0;
  for (const Shape& shape : shapes) {
    out.push_back(reshape(narrow(flat, 0, offset, numel(shape)), shape));
    offset += numel(shape);
  }
  return out;
}

std::vector<Shape> shapes_of(const std::vector<Tensor>& tensors) {
  std::vector<Shape> shapes;
  shapes.reserve(tensors.size());
  for (const Tensor& t : tensors) shapes.push_back(t.shape());
  return shapes;
}

// ---- none ----

class AveragePending final : public PendingReduction {
 public:
  AveragePending(Tensor flat, std::unique_ptr<Work> work, std::vector<Shape> shapes)
      : flat_(std::move(flat)), work_(std::move(work)), shapes_(std::move(shapes)) {}
  void poll() override { work_->test(); }
  std::vector<Tensor> finish() override {
    work_->wait();
    return pieces(flat_, shapes_);
  }

 private:
  Tensor flat_;
  std::unique_ptr<Work> work_;
  std::vector<Shape> shapes_;
};

class AverageReducer final : public GradientReducer {
 public:
  explicit AverageReducer(Communicator& comm) : comm_(comm) {}

  std::unique_ptr<PendingReduction> start(const std::vector<std::size_t>& ids,
                                          const std::vector<Tensor>& grads) override {
    check_bucket(ids, grads);
    Tensor flat = joined(grads, grads.front().dtype());
    auto work = comm_.all_reduce_async(flat, ReduceOp::avg);
    bytes_sent_ += bytes_of(flat);
    return std::make_unique<AveragePending>(flat, std::move(work), shapes_of(grads));
  }
  Tensor residual(std::size_t /*id*/) const override { return {}; }
  void clear_residuals() override {}
  void set_residual(std::size_t id, const Tensor& /*value*/) override {
    throw Error(cat("set_residual: tensor ", id, " has no residual: compression is \"none\""));
  }

 private:
  Communicator& comm_;
};

// ---- topk ----

// The k indices of acc's largest magnitudes (NaN counts as the largest; ties: the lower
// index), ascending.
template <class T>
std::vector<std::int32_t> top_k_indices(const T* acc, std::int64_t n, std::int64_t k) {
  auto key = [&](std::int32_t i) {
    T a = std::abs(acc[i]);
    return std::isnan(a) ? std::numeric_limits<T>::infinity() : a;
  };
  std::vector<std::int32_t> index(static_cast<std::size_t>(n));
  std::iota(index.begin(), index.end(), 0);
  std::nth_element(index.begin(), index.begin() + (k - 1), index.end(),
                   [&](std::int32_t a, std::int32_t b) {
                     T x = key(a);
                     T y = key(b);
                     return x > y || (x == y && a < b);
                   });
  index.resize(static_cast<std::size_t>(k));
  std::sort(index.begin(), index.end());
  return index;
}

// Moves acc's top k elements into index and values (acc keeps zeros there).
template <class T>
void take_top_k_cpu(const Tensor& acc, std::int64_t k, const Tensor& index, const Tensor& values) {
  T* a = acc.data<T>();
  std::vector<std::int32_t> chosen = top_k_indices(a, acc.numel(), k);
  T* v = values.data<T>();
  std::int32_t* i = index.data<std::int32_t>();
  for (std::size_t j = 0; j < chosen.size(); ++j) {
    i[j] = chosen[j];
    v[j] = a[chosen[j]];
    a[chosen[j]] = 0;
  }
}

class TopKPending final : public PendingReduction {
 public:
  TopKPending(Tensor index, Tensor values, std::vector<std::unique_ptr<Work>> works,
              std::vector<Shape> shapes, std::int64_t n)
      : index_(std::move(index)),
        values_(std::move(values)),
        works_(std::move(works)),
        shapes_(std::move(shapes)),
        n_(n) {}

  void poll() override {
    for (auto& w : works_) w->test();
  }

  std::vector<Tensor> finish() override {
    for (auto& w : works_) w->wait();
    // sum = (every rank's pairs added into zeros, rank by rank) / ranks. One rank's indices
    // are distinct, so on a GPU no two additions of a launch meet: every rank gets the same
    // bits, on either device.
    Tensor sum = zeros({n_}, {values_.dtype(), values_.device()});
    for (std::int64_t r = 0; r < index_.size(0); ++r) {
      try {
        index_add_(sum, 0, squeeze(narrow(index_, 0, r, 1), 0),
                   squeeze(narrow(values_, 0, r, 1), 0));
      } catch (const Error& e) {
        throw Error(cat("topk: rank ", r, " sent an index outside the bucket of ", n_,
                        " elements (", e.what(), "); every rank must start the same buckets"));
      }
    }
    sum = div(sum, scalar(static_cast<double>(index_.size(0)), {sum.dtype(), sum.device()}));
    return pieces(sum, shapes_);
  }

 private:
  Tensor index_;   // [ranks, k] gathered
  Tensor values_;  // [ranks, k] gathered
  std::vector<std::unique_ptr<Work>> works_;
  std::vector<Shape> shapes_;
  std::int64_t n_;
};

class TopKReducer final : public GradientReducer {
 public:
  TopKReducer(Communicator& comm, double ratio) : comm_(comm), ratio_(ratio) {}

  std::unique_ptr<PendingReduction> start(const std::vector<std::size_t>& ids,
                                          const std::vector<Tensor>& grads) override {
    check_bucket(ids, grads);
    DType dtype = accumulation_dtype(grads.front().dtype());
    Device device = grads.front().device();
    std::vector<Tensor> parts;
    for (std::size_t j = 0; j < grads.size(); ++j) {
      Tensor g = to(grads[j], dtype);
      auto r = residuals_.find(ids[j]);
      parts.push_back(r == residuals_.end() ? g
                                            : add(g, reshape(to(r->second, device), g.shape())));
    }
    Tensor acc = joined(parts, dtype);  // becomes the residual below
    std::int64_t n = acc.numel();
    LN_CHECK(n <= INT_MAX, "topk: a bucket of ", n, " elements is more than i32 indices address (",
             INT_MAX, "); use a smaller dist.bucket_mb");
    auto k = std::clamp<std::int64_t>(
        static_cast<std::int64_t>(std::ceil(ratio_ * static_cast<double>(n))), 1, n);
    Tensor index = empty({k}, {DType::i32, device});
    Tensor values = empty({k}, {dtype, device});
    take_top_k(acc, k, index, values);
    std::vector<Shape> shapes = shapes_of(grads);
    std::vector<Tensor> residuals = pieces(acc, shapes);
    for (std::size_t j = 0; j < ids.size(); ++j) residuals_[ids[j]] = residuals[j];

    int ranks = comm_.size();
    Tensor all_index = empty({ranks, k}, {DType::i32, device});
    Tensor all_values = empty({ranks, k}, {dtype, device});
    std::vector<std::unique_ptr<Work>> works;
    works.push_back(comm_.all_gather_async(index, all_index));
    works.push_back(comm_.all_gather_async(values, all_values));
    bytes_sent_ += bytes_of(index) + bytes_of(values);
    return std::make_unique<TopKPending>(all_index, all_values, std::move(works), shapes, n);
  }

  Tensor residual(std::size_t id) const override {
    auto r = residuals_.find(id);
    return r == residuals_.end() ? Tensor() : r->second;
  }
  void clear_residuals() override { residuals_.clear(); }
  // Kept flat; start() moves it to its gradient's device and gives it its shape.
  void set_residual(std::size_t id, const Tensor& value) override {
    residuals_[id] = reshape(to(to(value, Device::cpu()), accumulation_dtype(value.dtype())), {-1});
  }

 private:
  Communicator& comm_;
  double ratio_;
  std::unordered_map<std::size_t, Tensor> residuals_;  // on the gradients' device
};

}  // namespace

void take_top_k(const Tensor& acc, std::int64_t k, const Tensor& index, const Tensor& values) {
  LN_CHECK(acc.dim() == 1 && acc.is_contiguous() &&
               (acc.dtype() == DType::f32 || acc.dtype() == DType::f64) && acc.numel() <= INT_MAX,
           "take_top_k: acc must be a contiguous 1-d f32 or f64 tensor of at most ", INT_MAX,
           " elements, got ", describe(acc));
  LN_CHECK(k >= 1 && k <= acc.numel(), "take_top_k: k = ", k, " for ", acc.numel(),
           " elements; valid: 1 to ", acc.numel());
  LN_CHECK(index.device() == acc.device() && index.dtype() == DType::i32 &&
               index.shape() == Shape{k} && index.is_contiguous() &&
               values.device() == acc.device() && values.dtype() == acc.dtype() &&
               values.shape() == Shape{k} && values.is_contiguous(),
           "take_top_k: index ", describe(index), " and values ", describe(values),
           " must be contiguous [", k, "] i32 and ", name(acc.dtype()), " on ", str(acc.device()));
  if (acc.device().is_cuda()) {
    cuda::take_top_k(acc, k, index, values);
  } else if (acc.dtype() == DType::f64) {
    take_top_k_cpu<double>(acc, k, index, values);
  } else {
    take_top_k_cpu<float>(acc, k, index, values);
  }
}

namespace {

// ---- powersgd ----

// Orthonormalises the columns of p (row-major n x r) in place by modified Gram-Schmidt,
// accumulating in f64; a column that vanishes stays zero.
template <class T>
void orthonormalize_columns(T* p, std::int64_t n, std::int64_t r) {
  for (std::int64_t c = 0; c < r; ++c) {
    for (std::int64_t b = 0; b < c; ++b) {
      double dot = 0;
      for (std::int64_t i = 0; i < n; ++i) dot += double{p[i * r + c]} * double{p[i * r + b]};
      for (std::int64_t i = 0; i < n; ++i) {
        p[i * r + c] = static_cast<T>(p[i * r + c] - dot * p[i * r + b]);
      }
    }
    double norm = 0;
    for (std::int64_t i = 0; i < n; ++i) norm += double{p[i * r + c]} * double{p[i * r + c]};
    norm = std::sqrt(norm);
    if (norm == 0) continue;
    for (std::int64_t i = 0; i < n; ++i) p[i * r + c] = static_cast<T>(p[i * r + c] / norm);
  }
}

// Orthonormalises the columns of each P (shapes n x r) joined in flat, in place, with one
// round trip to the host for all of them.
void orthonormalize_columns(const Tensor& flat, const std::vector<Shape>& shapes) {
  Tensor host = contiguous(to(flat, Device::cpu()));
  std::int64_t offset = 0;
  for (const Shape& shape : shapes) {
    if (host.dtype() == DType::f64) {
      orthonormalize_columns(host.data<double>() + offset, shape[0], shape[1]);
    } else {
      orthonormalize_columns(host.data<float>() + offset, shape[0], shape[1]);
    }
    offset += numel(shape);
  }
  if (host.raw_data() != flat.raw_data()) copy_(flat, host);
}

struct LowRank {
  std::size_t id;
  std::size_t slot;  // position in the bucket
  Tensor m;          // gradient + residual, n x m
};

class PowerSgdReducer;

class PowerSgdPending final : public PendingReduction {
 public:
  PowerSgdPending(PowerSgdReducer& reducer, std::vector<LowRank> low_rank, Tensor ps,
                  std::unique_ptr<Work> ps_work, std::vector<std::size_t> plain_slots, Tensor plain,
                  std::unique_ptr<Work> plain_work, std::vector<Shape> shapes)
      : reducer_(reducer),
        low_rank_(std::move(low_rank)),
        ps_(std::move(ps)),
        ps_work_(std::move(ps_work)),
        plain_slots_(std::move(plain_slots)),
        plain_(std::move(plain)),
        plain_work_(std::move(plain_work)),
        shapes_(std::move(shapes)) {}

  void poll() override {
    if (ps_work_) ps_work_->test();
    if (plain_work_) plain_work_->test();
  }

  std::vector<Tensor> finish() override;

 private:
  PowerSgdReducer& reducer_;
  std::vector<LowRank> low_rank_;
  Tensor ps_;  // every P, flattened and joined
  std::unique_ptr<Work> ps_work_;
  std::vector<std::size_t> plain_slots_;
  Tensor plain_;  // the uncompressed gradients, flattened and joined
  std::unique_ptr<Work> plain_work_;
  std::vector<Shape> shapes_;
};

class PowerSgdReducer final : public GradientReducer {
 public:
  PowerSgdReducer(Communicator& comm, std::int64_t rank, double min_compression)
      : comm_(comm), rank_(rank), min_compression_(min_compression) {}

  // The rank a gradient of this shape is compressed at; 0 when it goes uncompressed.
  std::int64_t rank_for(const Shape& shape) const {
    if (shape.size() < 2 || shape[0] == 0) return 0;
    std::int64_t n = shape[0];
    std::int64_t m = numel(shape) / n;
    std::int64_t r = std::min({rank_, n, m});
    bool saves = static_cast<double>(n) * static_cast<double>(m) >=
                 min_compression_ * static_cast<double>(r) * static_cast<double>(n + m);
    return saves ? r : 0;
  }

  std::unique_ptr<PendingReduction> start(const std::vector<std::size_t>& ids,
                                          const std::vector<Tensor>& grads) override {
    check_bucket(ids, grads);
    DType dtype = accumulation_dtype(grads.front().dtype());
    std::vector<LowRank> low_rank;
    std::vector<Tensor> ps;
    std::vector<std::size_t> plain_slots;
    std::vector<Tensor> plain;
    for (std::size_t j = 0; j < grads.size(); ++j) {
      const Tensor& g = grads[j];
      std::int64_t r = rank_for(g.shape());
      if (r == 0) {
        plain_slots.push_back(j);
        plain.push_back(g);
        continue;
      }
      std::int64_t n = g.size(0);
      Tensor matrix = reshape(to(g, dtype), {n, g.numel() / n});
      auto residual = residuals_.find(ids[j]);
      Tensor m =
          residual == residuals_.end()
              ? clone(matrix)
              : add(matrix, reshape(to(to(residual->second, g.device()), dtype), matrix.shape()));
      Tensor& q = qs_[ids[j]];
      if (!q.defined()) {
        Generator gen(kQSeed + ids[j]);
        q = randn({m.size(1), r}, gen, {dtype, g.device()});
      }
      q = to(to(q, g.device()), dtype);  // a restored Q may come from the CPU
      ps.push_back(matmul(m, q));
      low_rank.push_back({ids[j], j, m});
    }
    Tensor all_ps;
    std::unique_ptr<Work> ps_work;
    if (!ps.empty()) {
      all_ps = joined(ps, dtype);
      ps_work = comm_.all_reduce_async(all_ps, ReduceOp::avg);
      bytes_sent_ += bytes_of(all_ps);
    }
    Tensor all_plain;
    std::unique_ptr<Work> plain_work;
    if (!plain.empty()) {
      all_plain = joined(plain, plain.front().dtype());
      plain_work = comm_.all_reduce_async(all_plain, ReduceOp::avg);
      bytes_sent_ += bytes_of(all_plain);
    }
    return std::make_unique<PowerSgdPending>(*this, std::move(low_rank), all_ps, std::move(ps_work),
                                             std::move(plain_slots), all_plain,
                                             std::move(plain_work), shapes_of(grads));
  }

  Tensor residual(std::size_t id) const override {
    auto r = residuals_.find(id);
    return r == residuals_.end() ? Tensor() : r->second;
  }
  void clear_residuals() override { residuals_.clear(); }
  // Kept as given; start() gives it its matrix shape, dtype and device.
  void set_residual(std::size_t id, const Tensor& value) override { residuals_[id] = value; }
  Tensor warm_start(std::size_t id) const override {
    auto q = qs_.find(id);
    return q == qs_.end() ? Tensor() : q->second;
  }
  // start() moves it to the gradient's device and dtype.
  void set_warm_start(std::size_t id, const Tensor& q) override { qs_[id] = q; }

 private:
  friend class PowerSgdPending;

  Communicator& comm_;
  std::int64_t rank_;
  double min_compression_;
  std::unordered_map<std::size_t, Tensor> qs_;         // m x r, the last averaged Q
  std::unordered_map<std::size_t, Tensor> residuals_;  // n x m
};

std::vector<Tensor> PowerSgdPending::finish() {
  std::vector<Tensor> out(shapes_.size());
  if (plain_work_) {
    plain_work_->wait();
    std::vector<Shape> shapes;
    for (std::size_t slot : plain_slots_) shapes.push_back(shapes_[slot]);
    std::vector<Tensor> averaged = pieces(plain_, shapes);
    for (std::size_t i = 0; i < plain_slots_.size(); ++i) out[plain_slots_[i]] = averaged[i];
  }
  if (low_rank_.empty()) return out;
  ps_work_->wait();
  std::vector<Shape> p_shapes;
  std::vector<Shape> q_shapes;
  for (const LowRank& l : low_rank_) {
    std::int64_t r = reducer_.qs_.at(l.id).size(1);
    p_shapes.push_back({l.m.size(0), r});
    q_shapes.push_back({l.m.size(1), r});
  }
  orthonormalize_columns(ps_, p_shapes);
  std::vector<Tensor> ps = pieces(ps_, p_shapes);
  std::vector<Tensor> qs;
  for (std::size_t i = 0; i < low_rank_.size(); ++i) {
    qs.push_back(matmul(transpose(low_rank_[i].m, 0, 1), ps[i]));
  }
  Tensor all_qs = joined(qs, ps_.dtype());
  reducer_.comm_.all_reduce(all_qs, ReduceOp::avg);
  reducer_.bytes_sent_ += bytes_of(all_qs);
  qs = pieces(all_qs, q_shapes);
  for (std::size_t i = 0; i < low_rank_.size(); ++i) {
    const LowRank& l = low_rank_[i];
    Tensor approx = matmul(ps[i], transpose(qs[i], 0, 1));
    reducer_.qs_[l.id] = qs[i];
    reducer_.residuals_[l.id] = sub(l.m, approx);
    out[l.slot] = reshape(approx, shapes_[l.slot]);
  }
  return out;
}

}  // namespace

Compression parse_compression(const std::string& name) {
  for (Compression c : {Compression::none, Compression::topk, Compression::powersgd}) {
    if (name == longnet::name(c)) return c;
  }
  throw Error(cat("unknown compression '", name, "'; valid: none, topk, powersgd"));
}

const char* name(Compression compression) {
  switch (compression) {
    case Compression::none:
      return "none";
    case Compression::topk:
      return "topk";
    case Compression::powersgd:
      break;
  }
  return "powersgd";
}

void validate(const CompressionConfig& config) {
  LN_CHECK(config.topk_ratio > 0 && config.topk_ratio <= 1, "topk_ratio is ", config.topk_ratio,
           "; valid: (0, 1]");
  LN_CHECK(config.powersgd_rank >= 1, "powersgd_rank is ", config.powersgd_rank,
           "; valid: integers >= 1");
  LN_CHECK(config.powersgd_min_compression >= 0, "powersgd_min_compression is ",
           config.powersgd_min_compression, "; valid: numbers >= 0");
}

std::unique_ptr<GradientReducer> make_gradient_reducer(const CompressionConfig& config,
                                                       Communicator& comm) {
  validate(config);
  switch (config.kind) {
    case Compression::none:
      return std::make_unique<AverageReducer>(comm);
    case Compression::topk:
      return std::make_unique<TopKReducer>(comm, config.topk_ratio);
    case Compression::powersgd:
      break;
  }
  return std::make_unique<PowerSgdReducer>(comm, config.powersgd_rank,
                                           config.powersgd_min_compression);
}

void GradientReducer::set_warm_start(std::size_t id, const Tensor& /*q*/) {
  throw Error(cat("set_warm_start: tensor ", id, " has no warm start: not PowerSGD"));
}

}  // namespace longnet
