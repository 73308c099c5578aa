#include "attention/sequence_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/cpu/common.h"
#include "attention/cpu/head_plan.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/view.h"

namespace longnet {

SequenceSlice sequence_slice(std::int64_t n, int rank, int ranks) {
  LN_CHECK(ranks >= 1 && rank >= 0 && rank < ranks && n >= ranks, "sequence_slice: rank ", rank,
           " of ", ranks, " over ", n, " positions: need 0 <= rank < ranks <= n");
  return {n * rank / ranks, n * (rank + 1) / ranks};
}

namespace {

using cpu::count_selected;
using cpu::Item;

constexpr double kInf = std::numeric_limits<double>::infinity();
// Every index here is built from the layout, in range: no check (on a GPU a check waits for
// its kernel).
constexpr IndexCheck kTrust = IndexCheck::trust;

// The ranks' slices, the same on every rank.
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

  // Whether some segment of the item's branch holds positions of two ranks.
  bool crosses(const Item& item) const {
    for (int r = 1; r < ranks; ++r) {
      if (begin[r] % width(item) != 0) return true;
    }
    return false;
  }

  // This rank's positions that the item selects, as rows of its slice, in order.
  std::vector<std::int64_t> selected_rows(const Item& item) const {
    std::int64_t w = width(item);
    std::int64_t a0 = begin[rank];
    std::int64_t a1 = begin[rank + 1];
    std::vector<std::int64_t> rows;
    for (std::int64_t t0 = a0 / w * w; t0 < a1; t0 += w) {
      std::int64_t p = t0 + item.j;
      if (p < a0) p += (a0 - p + item.r - 1) / item.r * item.r;
      for (; p < std::min(a1, t0 + w); p += item.r) rows.push_back(p - a0);
    }
    return rows;
  }
};

// One attention call that computes part of a class on this rank: compact query rows
// [q0, q1) against compact key rows [k0, k1), under config (one branch of rate 1).
struct Piece {
  std::int64_t q0, q1, k0, k1;
  DilatedAttentionConfig config;
};

// This rank's part of a class: its compact query rows [qa, qb), the compact key rows
// [k0, k1) they see, and the calls that cover them. Whole segments from a segment start on
// are one call over their compact rows. A first segment that began on an earlier rank is
// split off: without the causal mask its queries see all of its keys (one segment in the
// call); with it, they see all keys before qa (a call without the mask) and the keys from qa
// on under the mask (a call that starts at qa): the two merge like branches. The attention
// kernels then never need a query offset.
struct ClassWork {
  std::int64_t qa = 0, qb = 0, k0 = 0, k1 = 0;
  std::vector<Piece> pieces;
};

// The heads that see one branch with one offset j (paper mode: the heads h with
// h mod r = j; grouped mode: a group). For each of them the branch's selected positions,
// in order, form one compact sequence: its segments are `per_segment` compact rows (the last
// may be shorter), and the branch on these heads is attention with one branch of rate 1 and
// segments of per_segment rows over the compact rows. Rank r holds compact rows
// [starts[r], starts[r + 1]).
struct HeadClass {
  Item item{};
  std::vector<std::int64_t> heads;
  double out_scale = 1;   // the factor grouped mode puts on a branch's output
  bool crossing = false;  // some segment holds positions of two ranks
  std::int64_t per_segment = 0;
  std::vector<std::int64_t> starts;
  Tensor rows;      // this rank's (position, head) pairs, position-major: local * H + head
  Tensor lse_rows;  // the same pairs head-major in a (H, local) layout: head * local + position
  ClassWork work;   // this rank's attention calls
  Tensor packed;    // a crossing class: where compact rows [work.k0, work.k1) lie in the
                    // all-gathered packed rows (see packed_index)

  std::int64_t count(int rank) const { return starts[rank + 1] - starts[rank]; }
  std::int64_t most_rows() const {
    std::int64_t most = 0;
    for (std::size_t r = 0; r + 1 < starts.size(); ++r) {
      most = std::max(most, starts[r + 1] - starts[r]);
    }
    return most;
  }
  std::int64_t head_count() const { return static_cast<std::int64_t>(heads.size()); }
};

ClassWork work_of(const Layout& lay, const HeadClass& c, bool causal, double scale) {
  std::int64_t qa = c.starts[lay.rank];
  std::int64_t qb = c.starts[lay.rank + 1];
  std::int64_t total = c.starts.back();
  ClassWork work{qa, qb, qa, qb, {}};
  auto one_segment = [&](std::int64_t q0, std::int64_t q1, std::int64_t k0, std::int64_t k1,
                         bool masked) {
    work.pieces.push_back(
        {q0, q1, k0, k1, {{std::max(q1 - q0, k1 - k0)}, {1}, DilatedMode::paper, masked, scale}});
  };
  std::int64_t s = c.per_segment;
  std::int64_t q0 = qa;
  if (qa < qb && qa % s != 0) {
    std::int64_t first = qa / s * s;
    q0 = std::min(first + s, qb);
    work.k0 = first;
    if (causal) {
      one_segment(qa, q0, first, qa, false);
      one_segment(qa, q0, qa, q0, true);
    } else {
      work.k1 = std::min(first + s, total);
      one_segment(qa, q0, first, work.k1, false);
    }
  }
  if (q0 < qb) {
    std::int64_t k1 = causal ? qb : std::min(total, (qb + s - 1) / s * s);
    work.k1 = std::max(work.k1, k1);
    work.pieces.push_back({q0, qb, q0, k1, {{s}, {1}, DilatedMode::paper, causal, scale}});
  }
  return work;
}

Tensor index_tensor(const std::vector<std::int64_t>& values, Device device) {
  return from_data(values, {static_cast<std::int64_t>(values.size())}, device);
}

// Where the compact key rows [work.k0, work.k1) of a crossing class lie in the
// all-gathered packed rows (ranks x most_rows, each rank's rows from the start of its slot).
Tensor packed_index(const HeadClass& c, Device device) {
  std::int64_t rows = c.most_rows();
  std::vector<std::int64_t> at;
  for (std::int64_t i = c.work.k0; i < c.work.k1; ++i) {
    auto r = std::upper_bound(c.starts.begin(), c.starts.end(), i) - c.starts.begin() - 1;
    at.push_back(r * rows + i - c.starts[r]);
  }
  return index_tensor(at, device);
}

// Every (branch, offset) class with rows somewhere in the sequence, in the same order on
// every rank, with this rank's index tensors and attention calls.
std::vector<HeadClass> head_classes(const Layout& lay, const DilatedAttentionConfig& config,
                                    Device device) {
  double scale = cpu::attention_scale(config.scale, lay.d);
  auto plans = cpu::plan_heads(config, lay.heads);
  std::vector<HeadClass> classes;
  for (std::int64_t h = 0; h < lay.heads; ++h) {
    for (const Item& item : plans[h].items) {
      auto same = std::find_if(classes.begin(), classes.end(), [&](const HeadClass& c) {
        return c.item.branch == item.branch && c.item.j == item.j;
      });
      if (same != classes.end()) {
        same->heads.push_back(h);
        continue;
      }
      HeadClass c;
      c.item = item;
      c.heads = {h};
      c.out_scale = plans[h].out_scale;
      c.crossing = lay.crosses(item);
      c.per_segment = count_selected(item.j, lay.width(item), item.r);
      for (std::int64_t b : lay.begin) c.starts.push_back(lay.selected_before(item, b));
      if (c.starts.back() > 0) classes.push_back(std::move(c));
    }
  }
  for (HeadClass& c : classes) {
    std::vector<std::int64_t> positions = lay.selected_rows(c.item);
    std::vector<std::int64_t> rows;
    std::vector<std::int64_t> lse_rows;
    for (std::int64_t p : positions) {
      for (std::int64_t h : c.heads) rows.push_back(p * lay.heads + h);
    }
    for (std::int64_t h : c.heads) {
      for (std::int64_t p : positions) lse_rows.push_back(h * lay.local + p);
    }
    c.rows = index_tensor(rows, device);
    c.lse_rows = index_tensor(lse_rows, device);
    c.work = work_of(lay, c, config.causal, scale);
    if (c.crossing && c.work.k0 < c.work.k1) {
      c.packed = packed_index(c, device);
    }
  }
  return classes;
}

// t (B, local, H, X) as (B, local * H, X), the layout rows_of picks from (one copy at most,
// made once for all classes).
Tensor flat_rows(const Layout& lay, const Tensor& t) {
  return reshape(contiguous(t), {lay.batch, lay.local * lay.heads, t.size(3)});
}

// This rank's rows of a class from flat (flat_rows): (B, count, heads, X).
Tensor rows_of(const Layout& lay, const HeadClass& c, const Tensor& flat) {
  return reshape(index_select(flat, 1, c.rows, kTrust),
                 {lay.batch, c.count(lay.rank), c.head_count(), flat.size(2)});
}

// The inverse of rows_of: adds t (B, count, heads, X) into flat (B, local * H, X) at this
// rank's rows of the class.
void add_rows_of(const Layout& lay, const HeadClass& c, const Tensor& t, const Tensor& flat) {
  std::int64_t mine = c.count(lay.rank);
  if (mine == 0) return;
  index_add_(flat, 1, c.rows, reshape(t, {lay.batch, mine * c.head_count(), flat.size(2)}), kTrust);
}

// Rows [from, to) of dim dim of t, relative to t's first row `origin`, contiguous.
Tensor part(const Tensor& t, std::int64_t dim, std::int64_t origin, std::int64_t from,
            std::int64_t to) {
  return contiguous(narrow(t, dim, from - origin, to - from));
}

// The compact key rows [k0, k1) = [work.k0, work.k1) of a class, K (B, rows, heads, D) and
// V (B, rows, heads, Dv), on their way. For a class inside slices they are this rank's own
// rows; for a crossing class every rank's rows are all-gathered, K and V side by side (only
// the selected rows travel), started by start_key_rows so that the gather runs while the
// previous class computes, and picked by finish_key_rows.
struct KeyRows {
  Tensor k, v;                 // the rows, once there
  Tensor send;                 // a crossing class: this rank's rows, padded to most_rows
  Tensor all;                  // and every rank's, (ranks, most_rows, B, heads, D + Dv)
  std::unique_ptr<Work> work;  // the all-gather in flight
};

// From flat K and V (flat_rows). A crossing class takes part in the collective even when
// this rank has no rows of it; every rank starts the classes' gathers in the same order.
KeyRows start_key_rows(const Layout& lay, const HeadClass& c, const Tensor& kf, const Tensor& vf,
                       Communicator& comm) {
  KeyRows g;
  Tensor ks = rows_of(lay, c, kf);
  Tensor vs = rows_of(lay, c, vf);
  if (!c.crossing) {
    std::int64_t from = c.work.k0 - c.starts[lay.rank];
    g.k = narrow(ks, 1, from, c.work.k1 - c.work.k0);
    g.v = narrow(vs, 1, from, c.work.k1 - c.work.k0);
    return g;
  }
  std::int64_t rows = c.most_rows();
  TensorOptions options{ks.dtype(), ks.device()};
  g.send = zeros({rows, lay.batch, c.head_count(), lay.d + lay.dv}, options);
  Tensor mine = narrow(g.send, 0, 0, ks.size(1));
  copy_(narrow(mine, 3, 0, lay.d), permute(ks, {1, 0, 2, 3}));
  copy_(narrow(mine, 3, lay.d, lay.dv), permute(vs, {1, 0, 2, 3}));
  g.all = empty({lay.ranks, rows, lay.batch, c.head_count(), lay.d + lay.dv}, options);
  g.work = comm.all_gather_async(g.send, g.all);
  return g;
}

void finish_key_rows(const Layout& lay, const HeadClass& c, KeyRows& g) {
  if (!c.crossing) return;
  g.work->wait();
  std::int64_t x = lay.d + lay.dv;
  Tensor kv = empty({lay.batch, 0, c.head_count(), x}, {g.all.dtype(), g.all.device()});
  if (c.work.k0 < c.work.k1) {
    Tensor picked =
        index_select(reshape(g.all, {lay.ranks * c.most_rows(), lay.batch, c.head_count(), x}), 0,
                     c.packed, kTrust);
    kv = contiguous(permute(picked, {1, 0, 2, 3}));
  }
  g.k = narrow(kv, 3, 0, lay.d);
  g.v = narrow(kv, 3, lay.d, lay.dv);
}

// Runs step(c, K rows, V rows) over the classes in order, each class's gather started before
// the class before it computes.
template <class Step>
void with_key_rows(const Layout& lay, const std::vector<HeadClass>& classes, const Tensor& kf,
                   const Tensor& vf, Communicator& comm, Step step) {
  KeyRows now;
  if (!classes.empty()) now = start_key_rows(lay, classes.front(), kf, vf, comm);
  for (std::size_t i = 0; i < classes.size(); ++i) {
    KeyRows next;
    if (i + 1 < classes.size()) next = start_key_rows(lay, classes[i + 1], kf, vf, comm);
    finish_key_rows(lay, classes[i], now);
    step(classes[i], now.k, now.v);
    now = std::move(next);
  }
}

// The gradient of a class's compact key rows [work.k0, work.k1) on its way back to the
// ranks that hold those rows: for a crossing class a reduce-scatter of the packed layout
// start_key_rows gathered, started by start_key_grads and added by finish_key_grads, so that
// it overlaps the next class's computation.
struct KeyGrads {
  const HeadClass* c = nullptr;
  Tensor all;                  // every rank's part, (ranks, most_rows, B, heads, X)
  Tensor back;                 // this rank's rows summed over the ranks, (most_rows, B, heads, X)
  std::unique_ptr<Work> work;  // the reduce-scatter in flight
};

// Adds g, the gradient of the class's key rows (B, rows, heads, X), to grad (B, local * H, X):
// at once for a class inside slices; for a crossing class it starts the reduce-scatter
// (every rank, in the same order, rows or not) and finish_key_grads adds the result.
KeyGrads start_key_grads(const Layout& lay, const HeadClass& c, const Tensor& g, const Tensor& grad,
                         Communicator& comm) {
  KeyGrads r;
  r.c = &c;
  std::int64_t x = grad.size(2);
  if (!c.crossing) {
    add_rows_of(lay, c, g, grad);
    return r;
  }
  std::int64_t rows = c.most_rows();
  TensorOptions options{g.dtype(), g.device()};
  Tensor all = zeros({lay.ranks * rows, lay.batch, c.head_count(), x}, options);
  if (c.packed.defined()) {
    index_add_(all, 0, c.packed, contiguous(permute(g, {1, 0, 2, 3})), kTrust);
  }
  r.all = reshape(all, {lay.ranks, rows, lay.batch, c.head_count(), x});
  r.back = empty({rows, lay.batch, c.head_count(), x}, options);
  r.work = comm.reduce_scatter_async(r.all, r.back, ReduceOp::sum);
  return r;
}

void finish_key_grads(const Layout& lay, KeyGrads& r, const Tensor& grad) {
  if (!r.work) return;
  r.work->wait();
  const HeadClass& c = *r.c;
  Tensor own = permute(narrow(r.back, 0, 0, c.count(lay.rank)), {1, 0, 2, 3});
  add_rows_of(lay, c, contiguous(own), grad);
}

// log(exp(a) + exp(b)), -inf where both are.
Tensor log_add_exp(const Tensor& a, const Tensor& b) {
  Tensor top = maximum(a, b);
  Tensor shift = where(gt(top, -kInf), top, scalar(0, {top.dtype(), top.device()}));
  return add(shift, log(add(exp(sub(a, shift)), exp(sub(b, shift)))));
}

// exp(lse - total) of a class's rows, (B, heads, count) -> (B, count, heads, 1): the share of
// a part with log-denominator lse in a softmax whose log-denominator is total.
Tensor share(const Tensor& lse, const Tensor& total) {
  return unsqueeze(permute(exp(sub(lse, total)), {0, 2, 1}), 3);
}

// Merges a part (out, lse) of some rows into the running (acc, acc_lse) of those rows, in
// place: acc (B, n, heads, Dv), acc_lse (B, heads, n).
void merge_into(const Tensor& acc, const Tensor& acc_lse, const Tensor& out, const Tensor& lse) {
  Tensor total = log_add_exp(acc_lse, lse);
  copy_(acc, add(mul(acc, share(acc_lse, total)), mul(out, share(lse, total))));
  copy_(acc_lse, total);
}

// What one rank computes for one call: the layout and, when some segment crosses a slice
// boundary, the classes (built once for a forward pass and its backward).
struct Plan {
  Layout lay;
  std::vector<HeadClass> classes;
  bool crossing = false;
};

AttentionOutput forward_in(const Plan& plan, const DilatedAttentionConfig& config, const Tensor& q,
                           const Tensor& k, const Tensor& v, Communicator& comm) {
  const Layout& lay = plan.lay;
  const std::vector<HeadClass>& classes = plan.classes;
  DType ct = cpu::attention_compute_dtype(q.dtype());
  TensorOptions options{ct, q.device()};
  Tensor qf = flat_rows(lay, q);
  Tensor kf = flat_rows(lay, k);
  Tensor vf = flat_rows(lay, v);
  // Each class's output and log-denominators on this rank's rows: (B, count, heads, Dv),
  // (B, heads, count).
  std::vector<AttentionOutput> parts;
  auto compute = [&](const HeadClass& c, const Tensor& ks, const Tensor& vs) {
    const ClassWork& w = c.work;
    Tensor qs = rows_of(lay, c, qf);
    Tensor out = zeros({lay.batch, w.qb - w.qa, c.head_count(), lay.dv}, options);
    Tensor lse = full({lay.batch, c.head_count(), w.qb - w.qa}, -kInf, options);
    for (const Piece& p : w.pieces) {
      // Each piece stays in the compute dtype: the result is rounded once, at the end.
      AttentionOutput o =
          dilated_attention_forward(part(qs, 1, w.qa, p.q0, p.q1), part(ks, 1, w.k0, p.k0, p.k1),
                                    part(vs, 1, w.k0, p.k0, p.k1), p.config, ResultDtype::compute);
      merge_into(narrow(out, 1, p.q0 - w.qa, p.q1 - p.q0), narrow(lse, 2, p.q0 - w.qa, p.q1 - p.q0),
                 o.out, o.lse);
    }
    parts.push_back({out, lse});
  };
  with_key_rows(lay, classes, kf, vf, comm, compute);
  // One softmax over the branches: the log-denominators of each branch (its classes hold
  // disjoint heads) merge into the total, -inf where no branch selects a position.
  Tensor total = full({lay.batch, lay.heads * lay.local}, -kInf, options);
  auto branches = static_cast<std::int64_t>(config.segment_lengths.size());
  for (std::int64_t b = 0; b < branches; ++b) {
    Tensor lse = zeros({lay.batch, lay.heads * lay.local}, options);
    Tensor seen = zeros({1, lay.heads * lay.local}, options);
    for (std::size_t i = 0; i < classes.size(); ++i) {
      const HeadClass& c = classes[i];
      if (c.item.branch != b || c.count(lay.rank) == 0) continue;
      std::int64_t pairs = c.count(lay.rank) * c.head_count();
      index_add_(lse, 1, c.lse_rows, reshape(parts[i].lse, {lay.batch, pairs}), kTrust);
      index_add_(seen, 1, c.lse_rows, ones({1, pairs}, options), kTrust);
    }
    total = log_add_exp(total, where(seen, lse, scalar(-kInf, options)));
  }
  Tensor out = zeros({lay.batch, lay.local * lay.heads, lay.dv}, options);
  for (std::size_t i = 0; i < classes.size(); ++i) {
    const HeadClass& c = classes[i];
    std::int64_t mine = c.count(lay.rank);
    if (mine == 0) continue;
    Tensor class_total =
        reshape(index_select(total, 1, c.lse_rows, kTrust), {lay.batch, c.head_count(), mine});
    Tensor weighted = mul(mul(parts[i].out, share(parts[i].lse, class_total)), c.out_scale);
    add_rows_of(lay, c, weighted, out);
  }
  return {to(reshape(out, {lay.batch, lay.local, lay.heads, lay.dv}), q.dtype()),
          reshape(total, {lay.batch, lay.heads, lay.local})};
}

AttentionGrads backward_in(const Plan& plan, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& out, const Tensor& lse, const Tensor& dout,
                           Communicator& comm) {
  const Layout& lay = plan.lay;
  DType ct = cpu::attention_compute_dtype(q.dtype());
  TensorOptions options{ct, q.device()};
  Tensor lse_flat = reshape(to(contiguous(lse), ct), {lay.batch, lay.heads * lay.local});
  Tensor qf = flat_rows(lay, q);
  Tensor kf = flat_rows(lay, k);
  Tensor vf = flat_rows(lay, v);
  Tensor of = flat_rows(lay, out);
  Tensor gf = flat_rows(lay, dout);
  Tensor dq = zeros({lay.batch, lay.local * lay.heads, lay.d}, options);
  // dK and dV side by side, as K and V travel: one reduce-scatter per crossing class.
  Tensor dkv = zeros({lay.batch, lay.local * lay.heads, lay.d + lay.dv}, options);
  KeyGrads returning;
  auto differentiate = [&](const HeadClass& c, const Tensor& ks, const Tensor& vs) {
    const ClassWork& w = c.work;
    std::int64_t mine = w.qb - w.qa;
    Tensor qs = rows_of(lay, c, qf);
    // out = out_scale times the branch's attention (grouped mode): the kernels take the
    // scale, so out and dout go in as they are.
    Tensor os = rows_of(lay, c, of);
    Tensor gs = rows_of(lay, c, gf);
    Tensor ls =
        reshape(index_select(lse_flat, 1, c.lse_rows, kTrust), {lay.batch, c.head_count(), mine});
    Tensor dqs = zeros({lay.batch, mine, c.head_count(), lay.d}, options);
    Tensor dkvs = zeros({lay.batch, w.k1 - w.k0, c.head_count(), lay.d + lay.dv}, options);
    Tensor dks = narrow(dkvs, 3, 0, lay.d);
    Tensor dvs = narrow(dkvs, 3, lay.d, lay.dv);
    for (const Piece& p : w.pieces) {
      AttentionGrads pg =
          dilated_attention_backward(part(qs, 1, w.qa, p.q0, p.q1), part(ks, 1, w.k0, p.k0, p.k1),
                                     part(vs, 1, w.k0, p.k0, p.k1), part(os, 1, w.qa, p.q0, p.q1),
                                     part(ls, 2, w.qa, p.q0, p.q1), part(gs, 1, w.qa, p.q0, p.q1),
                                     p.config, ResultDtype::compute, c.out_scale);
      add_(narrow(dqs, 1, p.q0 - w.qa, p.q1 - p.q0), pg.dq);
      add_(narrow(dks, 1, p.k0 - w.k0, p.k1 - p.k0), pg.dk);
      add_(narrow(dvs, 1, p.k0 - w.k0, p.k1 - p.k0), pg.dv);
    }
    add_rows_of(lay, c, dqs, dq);
    // This class's dK/dV start back while the previous class's arrive.
    KeyGrads next = start_key_grads(lay, c, dkvs, dkv, comm);
    finish_key_grads(lay, returning, dkv);
    returning = std::move(next);
  };
  with_key_rows(lay, plan.classes, kf, vf, comm, differentiate);
  finish_key_grads(lay, returning, dkv);
  auto shaped = [&](const Tensor& t, const Tensor& like) {
    return to(reshape(contiguous(t), {lay.batch, lay.local, lay.heads, t.size(2)}), like.dtype());
  };
  return {shaped(dq, q), shaped(narrow(dkv, 2, 0, lay.d), k),
          shaped(narrow(dkv, 2, lay.d, lay.dv), v)};
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

// Whether some branch has a segment across a slice boundary. When none does (every slice
// starts at a segment start of every branch), each rank's part is plain dilated attention
// over its own rows.
bool any_crossing(const Layout& lay, const DilatedAttentionConfig& config) {
  for (std::size_t b = 0; b < config.segment_lengths.size(); ++b) {
    Item item{config.segment_lengths[b], config.dilation_rates[b], 0, static_cast<std::int64_t>(b)};
    if (lay.crosses(item)) return true;
  }
  return false;
}

Plan plan_for(const Tensor& q, const Tensor& k, const Tensor& v,
              const DilatedAttentionConfig& config, std::int64_t n, Communicator& comm,
              const char* op) {
  Plan plan{check_layout(q, k, v, config, n, comm, op), {}, false};
  plan.crossing = any_crossing(plan.lay, config);
  if (plan.crossing) plan.classes = head_classes(plan.lay, config, q.device());
  return plan;
}

AttentionOutput forward_with(const Plan& plan, const Tensor& q, const Tensor& k, const Tensor& v,
                             const DilatedAttentionConfig& config, Communicator& comm) {
  if (!plan.crossing) return dilated_attention_forward(q, k, v, config);
  return forward_in(plan, config, q, k, v, comm);
}

AttentionGrads backward_with(const Plan& plan, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const Tensor& dout,
                             const DilatedAttentionConfig& config, Communicator& comm) {
  if (!plan.crossing) return dilated_attention_backward(q, k, v, out, lse, dout, config);
  const Layout& lay = plan.lay;
  LN_CHECK(out.shape() == Shape({lay.batch, lay.local, lay.heads, lay.dv}) &&
               dout.shape() == out.shape() &&
               lse.shape() == Shape({lay.batch, lay.heads, lay.local}) &&
               out.device() == q.device() && dout.device() == q.device() &&
               lse.device() == q.device() && out.dtype() == q.dtype() && dout.dtype() == q.dtype(),
           "sequence_parallel_attention_backward: out ", describe(out), ", dout ", describe(dout),
           " and lse ", describe(lse), " do not fit q ", describe(q), " and v ", describe(v));
  return backward_in(plan, q, k, v, out, lse, dout, comm);
}

}  // namespace

AttentionOutput sequence_parallel_attention_forward(const Tensor& q, const Tensor& k,
                                                    const Tensor& v,
                                                    const DilatedAttentionConfig& config,
                                                    std::int64_t n, Communicator& comm) {
  Plan plan = plan_for(q, k, v, config, n, comm, "sequence_parallel_attention");
  return forward_with(plan, q, k, v, config, comm);
}

AttentionGrads sequence_parallel_attention_backward(const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const Tensor& out,
                                                    const Tensor& lse, const Tensor& dout,
                                                    const DilatedAttentionConfig& config,
                                                    std::int64_t n, Communicator& comm) {
  Plan plan = plan_for(q, k, v, config, n, comm, "sequence_parallel_attention_backward");
  return backward_with(plan, q, k, v, out, lse, dout, config, comm);
}

// The plan (with its index tensors) is made once for the forward pass and kept for the
// backward pass.
Variable sequence_parallel_dilated_attention(const Variable& q, const Variable& k,
                                             const Variable& v,
                                             const DilatedAttentionConfig& config, std::int64_t n,
                                             Communicator& comm) {
  const Tensor& qd = q.data();
  const Tensor& kd = k.data();
  const Tensor& vd = v.data();
  auto plan = std::make_shared<const Plan>(
      plan_for(qd, kd, vd, config, n, comm, "sequence_parallel_dilated_attention"));
  AttentionOutput r = forward_with(*plan, qd, kd, vd, config, comm);
  Tensor out = r.out;
  Tensor lse = r.lse;
  Communicator* c = &comm;
  return make_result(out, {q, k, v}, "sequence_parallel_dilated_attention", [=](const Tensor& g) {
    AttentionGrads d = backward_with(*plan, qd, kd, vd, out, lse, g, config, *c);
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
               " positions over ", comm_->size(), " ranks");
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
