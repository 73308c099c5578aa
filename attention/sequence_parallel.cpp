#include "attention/sequence_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/cpu/common.h"
#include "attention/cpu/head_plan.h"
#include "tensor/copy.h"
#include "tensor/creation.h"

namespace longnet {

SequenceSlice sequence_slice(std::int64_t n, int rank, int ranks) {
  LN_CHECK(ranks >= 1 && rank >= 0 && rank < ranks && n >= ranks, "sequence_slice: rank ", rank,
           " of ", ranks, " over ", n, " positions: need 0 <= rank < ranks <= n");
  return {n * rank / ranks, n * (rank + 1) / ranks};
}

namespace {

using cpu::count_selected;
using cpu::HeadPlan;
using cpu::Item;
using cpu::Mat;
using cpu::MutRows;
using cpu::Rows;
using cpu::visible;

// The ranks' slices and the branches' rows among them, the same on every rank.
struct Layout {
  std::int64_t n;
  std::int64_t batch, local, heads, d, dv;  // this rank's q (B, local, H, D), v's Dv
  int rank;
  int ranks;
  std::vector<std::int64_t> begin;  // begin[r] of rank r's slice; begin[ranks] = n

  // The segment length an item really has: one segment when w exceeds n.
  std::int64_t width(const Item& item) const { return std::min(item.w, n); }

  // How many of positions [0, x) the item selects.
  std::int64_t selected_before(const Item& item, std::int64_t x) const {
    std::int64_t w = width(item);
    return (x / w) * count_selected(item.j, w, item.r) + count_selected(item.j, x % w, item.r);
  }

  bool selects(const Item& item, std::int64_t position) const {
    std::int64_t in_segment = position % width(item);
    return in_segment >= item.j && (in_segment - item.j) % item.r == 0;
  }

  // Whether some segment of the item's branch holds positions of two ranks.
  bool crosses(const Item& item) const {
    for (int r = 1; r < ranks; ++r) {
      if (begin[r] % width(item) != 0) return true;
    }
    return false;
  }

  int owner(std::int64_t position) const {
    return static_cast<int>(std::upper_bound(begin.begin(), begin.end(), position) -
                            begin.begin()) -
           1;
  }
};

// A crossing branch's packed rows: for each head that uses it (slot s), the K and V rows of
// every rank's slice that the branch selects for that head, in position order, rank r's at
// [r, :, 0 .. count). Shapes (P, B, rows, slots, D) and (P, B, rows, slots, Dv).
struct Packed {
  std::vector<std::int64_t> slot;  // per head: its slot, or -1 when the head skips the branch
  std::vector<Item> items;         // per slot: the head's view of the branch
  std::int64_t rows = 0;           // the largest count of any rank and slot
  Tensor k;
  Tensor v;
};

// Calls f(head, slot, local, row) for each row this rank packs for a crossing branch: head
// h's selected position at local row `local` of the slice is packed row `row` of slot.
template <class F>
void for_each_packed_row(const Layout& lay, const Packed& p, F f) {
  std::int64_t a0 = lay.begin[lay.rank];
  for (std::int64_t h = 0; h < lay.heads; ++h) {
    std::int64_t s = p.slot[h];
    if (s < 0) continue;
    std::int64_t row = 0;
    for (std::int64_t pos = a0; pos < lay.begin[lay.rank + 1]; ++pos) {
      if (lay.selects(p.items[s], pos)) f(h, s, pos - a0, row++);
    }
  }
}

template <class T>
T* row_of(const Tensor& t, std::initializer_list<std::int64_t> index) {
  std::int64_t offset = 0;
  std::size_t dim = 0;
  for (std::int64_t i : index) offset += i * t.stride(static_cast<std::int64_t>(dim++));
  return t.data<T>() + offset;
}

// Every branch's packed rows, gathered from all ranks, or an undefined Packed for branches
// that stay inside slices. kc, vc: this rank's contiguous compute-dtype k and v.
template <class T>
std::vector<Packed> gather_branches(const Layout& lay, const std::vector<HeadPlan>& plans,
                                    std::int64_t branches, const Tensor& kc, const Tensor& vc,
                                    Communicator& comm) {
  std::vector<Packed> packed(static_cast<std::size_t>(branches));
  for (std::int64_t b = 0; b < branches; ++b) {
    Packed& p = packed[b];
    p.slot.assign(static_cast<std::size_t>(lay.heads), -1);
    for (std::int64_t h = 0; h < lay.heads; ++h) {
      for (const Item& item : plans[h].items) {
        if (item.branch != b) continue;
        p.slot[h] = static_cast<std::int64_t>(p.items.size());
        p.items.push_back(item);
      }
    }
    if (p.items.empty() || !lay.crosses(p.items.front())) continue;
    for (const Item& item : p.items) {
      for (int r = 0; r < lay.ranks; ++r) {
        p.rows = std::max(p.rows, lay.selected_before(item, lay.begin[r + 1]) -
                                      lay.selected_before(item, lay.begin[r]));
      }
    }
    auto slots = static_cast<std::int64_t>(p.items.size());
    DType ct = kc.dtype();
    Tensor mine_k = zeros({lay.batch, p.rows, slots, lay.d}, {ct});
    Tensor mine_v = zeros({lay.batch, p.rows, slots, lay.dv}, {ct});
    for_each_packed_row(
        lay, p, [&](std::int64_t h, std::int64_t s, std::int64_t local, std::int64_t row) {
          for (std::int64_t bt = 0; bt < lay.batch; ++bt) {
            std::copy_n(row_of<T>(kc, {bt, local, h}), lay.d, row_of<T>(mine_k, {bt, row, s}));
            std::copy_n(row_of<T>(vc, {bt, local, h}), lay.dv, row_of<T>(mine_v, {bt, row, s}));
          }
        });
    p.k = empty({lay.ranks, lay.batch, p.rows, slots, lay.d}, {ct});
    p.v = empty({lay.ranks, lay.batch, p.rows, slots, lay.dv}, {ct});
    comm.all_gather(mine_k, p.k);
    comm.all_gather(mine_v, p.v);
  }
  return packed;
}

// Where key row `position` of head h in item's branch lives: this rank's k (or dk) for a
// branch inside slices or a row of this rank, else the packed rows (or their gradients).
struct KeyRows {
  const Layout& lay;
  const Packed& packed;
  std::int64_t bt, h;

  template <class T>
  T* at(const Tensor& local, const Tensor& gathered, const Item& item,
        std::int64_t position) const {
    if (!gathered.defined()) return row_of<T>(local, {bt, position - lay.begin[lay.rank], h});
    int r = lay.owner(position);
    std::int64_t row =
        lay.selected_before(item, position) - lay.selected_before(item, lay.begin[r]);
    return row_of<T>(gathered, {r, bt, row, packed.slot[h]});
  }
};

// Calls f(t0, tq, nq, nk) for each segment of the item with selected queries in this rank's
// slice: queries are the segment's compact rows tq .. tq + nq, keys its compact rows 0 .. nk
// (compact row t at position t0 + j + t r), nk cut at the last query when causal.
template <class F>
void for_each_local_segment(const Layout& lay, const Item& item, bool causal, F f) {
  std::int64_t w = lay.width(item);
  std::int64_t a0 = lay.begin[lay.rank];
  std::int64_t a1 = lay.begin[lay.rank + 1];
  for (std::int64_t t0 = a0 / w * w; t0 < a1; t0 += w) {
    std::int64_t first = t0 + item.j;
    std::int64_t tq = count_selected(first, std::max(a0, t0), item.r);
    std::int64_t nq = count_selected(first, std::min(a1, t0 + w), item.r) - tq;
    std::int64_t nk = count_selected(first, std::min(lay.n, t0 + w), item.r);
    if (causal) nk = std::min(nk, tq + nq);
    if (nq > 0 && nk > 0) f(t0, tq, nq, nk);
  }
}

template <class T>
void gather_keys(const KeyRows& keys, const Tensor& local, const Tensor& gathered, const Item& item,
                 std::int64_t t0, Mat<T>& into) {
  for (Eigen::Index t = 0; t < into.rows(); ++t) {
    const T* src = keys.at<T>(local, gathered, item, t0 + item.j + t * item.r);
    std::copy_n(src, into.cols(), into.row(t).data());
  }
}

template <class T>
void scatter_add_keys(const KeyRows& keys, const Tensor& local, const Tensor& gathered,
                      const Item& item, std::int64_t t0, const Mat<T>& from) {
  for (Eigen::Index t = 0; t < from.rows(); ++t) {
    T* dst = keys.at<T>(local, gathered, item, t0 + item.j + t * item.r);
    for (Eigen::Index c = 0; c < from.cols(); ++c) dst[c] += from(t, c);
  }
}

template <class T>
void forward_ranks(const Layout& lay, const std::vector<HeadPlan>& plans,
                   const std::vector<Packed>& packed, const Tensor& qc, const Tensor& kc,
                   const Tensor& vc, const Tensor& out, const Tensor& lse, T scale, bool causal) {
  std::int64_t qrow = lay.heads * lay.d;
  std::int64_t a0 = lay.begin[lay.rank];
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < lay.batch * lay.heads; ++task) {
    std::int64_t bt = task / lay.heads;
    std::int64_t h = task % lay.heads;
    cpu::OnlineSoftmax<T> softmax(lay.local, lay.dv);
    for (const Item& item : plans[h].items) {
      const Packed& p = packed[item.branch];
      KeyRows keys{lay, p, bt, h};
      for_each_local_segment(
          lay, item, causal,
          [&](std::int64_t t0, std::int64_t tq, std::int64_t nq, std::int64_t nk) {
            std::int64_t first = t0 + item.j + tq * item.r - a0;  // local row of the first query
            Rows<T> qs(row_of<T>(qc, {bt, first, h}), nq, lay.d,
                       Eigen::OuterStride<>(item.r * qrow));
            Mat<T> ks(nk, lay.d);
            Mat<T> vs(nk, lay.dv);
            gather_keys(keys, kc, p.k, item, t0, ks);
            gather_keys(keys, vc, p.v, item, t0, vs);
            Mat<T> s = scale * (qs * ks.transpose());
            softmax.merge(
                s, vs, [&](Eigen::Index a) { return visible(tq + a, nk, causal); },
                [&](Eigen::Index a) { return first + a * item.r; });
          });
    }
    auto out_scale = static_cast<T>(plans[h].out_scale);
    for (std::int64_t pos = 0; pos < lay.local; ++pos) {
      *row_of<T>(lse, {bt, h, pos}) = softmax.finish(pos, out_scale, row_of<T>(out, {bt, pos, h}));
    }
  }
}

template <class T>
void backward_ranks(const Layout& lay, const std::vector<HeadPlan>& plans,
                    const std::vector<Packed>& packed, const std::vector<Tensor>& packed_dk,
                    const std::vector<Tensor>& packed_dv, const Tensor& qc, const Tensor& kc,
                    const Tensor& vc, const Tensor& oc, const Tensor& lc, const Tensor& doc,
                    const AttentionGrads& grads, T scale, bool causal) {
  std::int64_t qrow = lay.heads * lay.d;
  std::int64_t vrow = lay.heads * lay.dv;
  std::int64_t a0 = lay.begin[lay.rank];
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < lay.batch * lay.heads; ++task) {
    std::int64_t bt = task / lay.heads;
    std::int64_t h = task % lay.heads;
    const T* lse_h = row_of<T>(lc, {bt, h});
    // Dp = rowsum(dO * O): the same for the softmax output and the scaled output.
    std::vector<T> dp(static_cast<std::size_t>(lay.local));
    for (std::int64_t pos = 0; pos < lay.local; ++pos) {
      const T* o = row_of<T>(oc, {bt, pos, h});
      const T* g = row_of<T>(doc, {bt, pos, h});
      T total = 0;
      for (std::int64_t c = 0; c < lay.dv; ++c) total += g[c] * o[c];
      dp[pos] = total;
    }
    auto out_scale = static_cast<T>(plans[h].out_scale);
    for (const Item& item : plans[h].items) {
      const Packed& p = packed[item.branch];
      KeyRows keys{lay, p, bt, h};
      for_each_local_segment(
          lay, item, causal,
          [&](std::int64_t t0, std::int64_t tq, std::int64_t nq, std::int64_t nk) {
            std::int64_t first = t0 + item.j + tq * item.r - a0;
            Eigen::OuterStride<> q_stride(item.r * qrow);
            Eigen::OuterStride<> v_stride(item.r * vrow);
            Rows<T> qs(row_of<T>(qc, {bt, first, h}), nq, lay.d, q_stride);
            Rows<T> dos(row_of<T>(doc, {bt, first, h}), nq, lay.dv, v_stride);
            Mat<T> ks(nk, lay.d);
            Mat<T> vs(nk, lay.dv);
            gather_keys(keys, kc, p.k, item, t0, ks);
            gather_keys(keys, vc, p.v, item, t0, vs);
            Mat<T> s = scale * (qs * ks.transpose());
            // A query reached here saw at least one key in the forward pass: its lse is finite.
            cpu::exponentiate(
                s, [&](Eigen::Index a) { return visible(tq + a, nk, causal); },
                [&](Eigen::Index a) { return lse_h[first + a * item.r]; });
            Mat<T> d_out = out_scale * dos;
            Mat<T> ds = d_out * vs.transpose();  // dP
            for (std::int64_t a = 0; a < nq; ++a) {
              ds.row(a) =
                  (s.row(a).array() * (ds.row(a).array() - dp[first + a * item.r])).matrix();
            }
            MutRows<T>(row_of<T>(grads.dq, {bt, first, h}), nq, lay.d, q_stride).noalias() +=
                scale * ds * ks;
            Mat<T> dks = scale * ds.transpose() * qs;
            Mat<T> dvs = s.transpose() * d_out;
            scatter_add_keys(keys, grads.dk, packed_dk[item.branch], item, t0, dks);
            scatter_add_keys(keys, grads.dv, packed_dv[item.branch], item, t0, dvs);
          });
    }
  }
}

// Adds this rank's part of packed gradients (B, rows, slots, D) into its (B, local, H, D)
// gradient: the inverse of the packing in gather_branches.
template <class T>
void unpack_add(const Layout& lay, const Packed& p, const Tensor& mine, const Tensor& grad) {
  std::int64_t width = grad.size(3);
  for_each_packed_row(lay, p,
                      [&](std::int64_t h, std::int64_t s, std::int64_t local, std::int64_t row) {
                        for (std::int64_t bt = 0; bt < lay.batch; ++bt) {
                          const T* src = row_of<T>(mine, {bt, row, s});
                          T* dst = row_of<T>(grad, {bt, local, h});
                          for (std::int64_t c = 0; c < width; ++c) dst[c] += src[c];
                        }
                      });
}

Layout check_layout(const Tensor& q, const Tensor& k, const Tensor& v,
                    const DilatedAttentionConfig& config, std::int64_t n, Communicator& comm,
                    const char* op) {
  config.validate();
  cpu::check_attention_shapes(q, k, v, op);
  LN_CHECK(n >= comm.size(), op, ": ", n, " positions cannot be split over ", comm.size(),
           " ranks (each needs at least one)");
  SequenceSlice mine = sequence_slice(n, comm.rank(), comm.size());
  LN_CHECK(q.size(1) == k.size(1) && q.size(1) == mine.end - mine.begin, op, ": rank ", comm.rank(),
           " of ", comm.size(), " holds positions [", mine.begin, ", ", mine.end, ") of ", n,
           ", so q, k and v need ", mine.end - mine.begin, " rows, got q ", describe(q), ", k ",
           describe(k));
  Layout lay{n,         q.size(0),   q.size(1),   q.size(2), q.size(3),
             v.size(3), comm.rank(), comm.size(), {}};
  for (int r = 0; r <= comm.size(); ++r) {
    lay.begin.push_back(r == comm.size() ? n : sequence_slice(n, r, comm.size()).begin);
  }
  return lay;
}

// The first branch whose segments cross a slice boundary, or -1 when every segment lies in
// one rank's slice: then each rank's part is plain dilated attention over its own rows
// (every slice starts at a segment start of every branch).
std::int64_t first_crossing(const Layout& lay, const DilatedAttentionConfig& config) {
  for (std::size_t b = 0; b < config.segment_lengths.size(); ++b) {
    Item item{config.segment_lengths[b], config.dilation_rates[b], 0, static_cast<std::int64_t>(b)};
    if (lay.crosses(item)) return static_cast<std::int64_t>(b);
  }
  return -1;
}

// Crossing branches exchange rows through the CPU kernels only so far.
void check_crossing_on_cpu(const Layout& lay, const DilatedAttentionConfig& config,
                           std::int64_t crossing, const Tensor& q, const char* op) {
  if (q.device().is_cpu()) return;
  std::int64_t w = config.segment_lengths[crossing];
  std::int64_t boundary = 0;
  for (int r = 1; r < lay.ranks && boundary == 0; ++r) {
    if (lay.begin[r] % std::min(w, lay.n) != 0) boundary = lay.begin[r];
  }
  LN_CHECK(false, op, ": on ", str(q.device()), " every segment must lie inside one rank's ",
           "slice, but branch ", crossing, " (w = ", w, ", r = ", config.dilation_rates[crossing],
           ") has a segment across the slice boundary at position ", boundary, " of ", lay.n,
           "; use segment lengths that divide n / ranks = ", lay.n / lay.ranks,
           " (with n a multiple of the ranks), or CPU tensors");
}

template <class T>
AttentionOutput forward_in(const Layout& lay, const DilatedAttentionConfig& config, const Tensor& q,
                           const Tensor& k, const Tensor& v, Communicator& comm) {
  Tensor qc = cpu::attention_operand(q);
  Tensor kc = cpu::attention_operand(k);
  Tensor vc = cpu::attention_operand(v);
  auto plans = cpu::plan_heads(config, lay.heads);
  auto branches = static_cast<std::int64_t>(config.segment_lengths.size());
  auto packed = gather_branches<T>(lay, plans, branches, kc, vc, comm);
  Tensor out = empty({lay.batch, lay.local, lay.heads, lay.dv}, {qc.dtype()});
  Tensor lse = empty({lay.batch, lay.heads, lay.local}, {qc.dtype()});
  forward_ranks<T>(lay, plans, packed, qc, kc, vc, out, lse,
                   static_cast<T>(cpu::attention_scale(config.scale, lay.d)), config.causal);
  return {to(out, q.dtype()), lse};
}

template <class T>
AttentionGrads backward_in(const Layout& lay, const DilatedAttentionConfig& config, const Tensor& q,
                           const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                           const Tensor& dout, Communicator& comm) {
  Tensor qc = cpu::attention_operand(q);
  Tensor kc = cpu::attention_operand(k);
  Tensor vc = cpu::attention_operand(v);
  DType ct = qc.dtype();
  auto plans = cpu::plan_heads(config, lay.heads);
  auto branches = static_cast<std::int64_t>(config.segment_lengths.size());
  auto packed = gather_branches<T>(lay, plans, branches, kc, vc, comm);
  std::vector<Tensor> packed_dk;
  std::vector<Tensor> packed_dv;
  for (const Packed& p : packed) {
    packed_dk.push_back(p.k.defined() ? zeros(p.k.shape(), {ct}) : Tensor());
    packed_dv.push_back(p.v.defined() ? zeros(p.v.shape(), {ct}) : Tensor());
  }
  AttentionGrads grads{zeros(q.shape(), {ct}), zeros(k.shape(), {ct}), zeros(v.shape(), {ct})};
  backward_ranks<T>(lay, plans, packed, packed_dk, packed_dv, qc, kc, vc,
                    cpu::attention_operand(out), cpu::attention_operand(lse),
                    cpu::attention_operand(dout), grads,
                    static_cast<T>(cpu::attention_scale(config.scale, lay.d)), config.causal);
  for (std::size_t b = 0; b < packed.size(); ++b) {
    if (!packed[b].k.defined()) continue;
    for (auto [all, grad] :
         {std::pair{packed_dk[b], grads.dk}, std::pair{packed_dv[b], grads.dv}}) {
      Shape mine_shape(all.shape().begin() + 1, all.shape().end());
      Tensor mine = empty(mine_shape, {ct});
      comm.reduce_scatter(all, mine, ReduceOp::sum);
      unpack_add<T>(lay, packed[b], mine, grad);
    }
  }
  return {to(grads.dq, q.dtype()), to(grads.dk, k.dtype()), to(grads.dv, v.dtype())};
}

}  // namespace

AttentionOutput sequence_parallel_attention_forward(const Tensor& q, const Tensor& k,
                                                    const Tensor& v,
                                                    const DilatedAttentionConfig& config,
                                                    std::int64_t n, Communicator& comm) {
  const char* op = "sequence_parallel_attention";
  Layout lay = check_layout(q, k, v, config, n, comm, op);
  std::int64_t crossing = first_crossing(lay, config);
  if (crossing < 0) return dilated_attention_forward(q, k, v, config);
  check_crossing_on_cpu(lay, config, crossing, q, op);
  cpu::check_attention_inputs(q, k, v, op);
  if (cpu::attention_compute_dtype(q.dtype()) == DType::f64) {
    return forward_in<double>(lay, config, q, k, v, comm);
  }
  return forward_in<float>(lay, config, q, k, v, comm);
}

AttentionGrads sequence_parallel_attention_backward(const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const Tensor& out,
                                                    const Tensor& lse, const Tensor& dout,
                                                    const DilatedAttentionConfig& config,
                                                    std::int64_t n, Communicator& comm) {
  const char* op = "sequence_parallel_attention_backward";
  Layout lay = check_layout(q, k, v, config, n, comm, op);
  std::int64_t crossing = first_crossing(lay, config);
  if (crossing < 0) return dilated_attention_backward(q, k, v, out, lse, dout, config);
  check_crossing_on_cpu(lay, config, crossing, q, op);
  cpu::check_attention_inputs(q, k, v, op);
  LN_CHECK(out.shape() == Shape({lay.batch, lay.local, lay.heads, lay.dv}) &&
               dout.shape() == out.shape() &&
               lse.shape() == Shape({lay.batch, lay.heads, lay.local}) && out.device().is_cpu() &&
               dout.device().is_cpu() && lse.device().is_cpu(),
           op, ": out ", describe(out), ", dout ", describe(dout), " and lse ", describe(lse),
           " do not fit q ", describe(q), " and v ", describe(v));
  if (cpu::attention_compute_dtype(q.dtype()) == DType::f64) {
    return backward_in<double>(lay, config, q, k, v, out, lse, dout, comm);
  }
  return backward_in<float>(lay, config, q, k, v, out, lse, dout, comm);
}

Variable sequence_parallel_dilated_attention(const Variable& q, const Variable& k,
                                             const Variable& v,
                                             const DilatedAttentionConfig& config, std::int64_t n,
                                             Communicator& comm) {
  const Tensor& qd = q.data();
  const Tensor& kd = k.data();
  const Tensor& vd = v.data();
  AttentionOutput r = sequence_parallel_attention_forward(qd, kd, vd, config, n, comm);
  Tensor out = r.out;
  Tensor lse = r.lse;
  Communicator* c = &comm;
  return make_result(out, {q, k, v}, "sequence_parallel_dilated_attention", [=](const Tensor& g) {
    AttentionGrads d = sequence_parallel_attention_backward(qd, kd, vd, out, lse, g, config, n, *c);
    return std::vector<Tensor>{d.dq, d.dk, d.dv};
  });
}

namespace {

class SequenceParallelKernel final : public Attention {
 public:
  SequenceParallelKernel(DilatedAttentionConfig c, std::int64_t n, Communicator& comm)
      : c_(std::move(c)), n_(n), comm_(&comm) {}
  Variable forward(const Variable& q, const Variable& k, const Variable& v) const override {
    return sequence_parallel_dilated_attention(q, k, v, c_, n_, *comm_);
  }
  std::string describe() const override {
    return cat("sequence-parallel dilated attention, ",
               c_.mode == DilatedMode::paper ? "paper" : "grouped", " mode, ", n_,
               " positions over ", comm_->size(), " ranks (cpu kernel)");
  }

 private:
  DilatedAttentionConfig c_;
  std::int64_t n_;
  Communicator* comm_;
};

}  // namespace

std::shared_ptr<const Attention> make_sequence_parallel_attention(const AttentionConfig& config,
                                                                  std::int64_t n,
                                                                  Communicator& comm) {
  validate(config);
  LN_CHECK(n >= comm.size(), "sequence-parallel attention: ", n, " positions cannot be split over ",
           comm.size(), " ranks (each needs at least one)");
  DilatedAttentionConfig dilated;
  if (const auto* dense = std::get_if<DenseAttentionConfig>(&config)) {
    dilated = {{n}, {1}, DilatedMode::paper, dense->causal, dense->scale};
  } else if (const auto* d = std::get_if<DilatedAttentionConfig>(&config)) {
    dilated = *d;
  } else if (const auto* a = std::get_if<AutoAttentionConfig>(&config)) {
    dilated = a->dilated;
  } else {
    LN_CHECK(false, "sequence-parallel attention: attention \"", kind_name(config),
             "\" has no sequence-parallel form; use dense, dilated or auto");
  }
  return std::make_shared<SequenceParallelKernel>(dilated, n, comm);
}

}  // namespace longnet
