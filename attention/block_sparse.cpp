#include "attention/block_sparse.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/cpu/common.h"
#include "attention/cuda/block_sparse.h"
#include "tensor/copy.h"
#include "tensor/creation.h"

namespace longnet {

namespace {
constexpr const char* kPatternNames[] = {"local_window", "dilated", "global_local",
                                         "content_adaptive"};
}

BlockPattern parse_block_pattern(const std::string& text) {
  for (int i = 0; i < 4; ++i) {
    if (text == kPatternNames[i]) return static_cast<BlockPattern>(i);
  }
  throw Error(cat("unknown block-sparse pattern \"", text,
                  "\" (valid: local_window, dilated, global_local, content_adaptive)"));
}

const char* name(BlockPattern pattern) { return kPatternNames[static_cast<int>(pattern)]; }

void BlockSparseConfig::validate() const {
  LN_CHECK(block_size >= 1, "block_size is ", block_size, "; valid: integers >= 1");
  LN_CHECK(density > 0 && density <= 1, "density is ", density,
           "; valid: (0, 1], the fraction of key blocks kept");
  LN_CHECK(global_blocks >= 0, "global_blocks is ", global_blocks, "; valid: integers >= 0");
  if (scale) {
    LN_CHECK(std::isfinite(*scale) && *scale > 0, "scale is ", *scale,
             "; valid: a finite number > 0 (default 1/sqrt(head dim))");
  }
}

namespace {

using cpu::Mat;
using cpu::MutRows;
using cpu::Rows;
using Geometry = cpu::AttentionGeometry;

std::int64_t blocks(std::int64_t n, std::int64_t size) { return (n + size - 1) / size; }

// Appends a window of size key blocks for query block qb: centred on qb and shifted to
// lie inside [0, nkb) so that it keeps size blocks when the sequence has them, or under
// causal masking the size blocks ending at qb.
void add_window(std::vector<std::int64_t>& out, std::int64_t qb, std::int64_t size,
                std::int64_t nkb, bool causal) {
  std::int64_t lo = causal ? qb - size + 1 : qb - (size - 1) / 2;
  std::int64_t hi = lo + size - 1;
  if (!causal && hi > nkb - 1) lo -= hi - (nkb - 1);
  if (!causal && lo < 0) hi -= lo;
  for (std::int64_t kb = std::max<std::int64_t>(lo, 0); kb <= std::min(hi, nkb - 1); ++kb) {
    out.push_back(kb);
  }
}

// Mean over the rows of block blk (positions [blk*bs, min(.., n))) of head h, batch b.
template <class T>
std::vector<T> pooled(const T* x, const Geometry& g, std::int64_t n, std::int64_t b, std::int64_t h,
                      std::int64_t blk, std::int64_t bs) {
  std::vector<T> mean(static_cast<std::size_t>(g.d), T(0));
  std::int64_t lo = blk * bs;
  std::int64_t hi = std::min(lo + bs, n);
  for (std::int64_t p = lo; p < hi; ++p) {
    const T* row = x + ((b * n + p) * g.heads + h) * g.d;
    for (std::int64_t e = 0; e < g.d; ++e) mean[e] += row[e] / static_cast<T>(hi - lo);
  }
  return mean;
}

// Drops key blocks after the query block under the causal mask; sorts and deduplicates.
void finish(std::vector<std::int64_t>& kept, std::int64_t qb, bool causal) {
  if (causal) std::erase_if(kept, [qb](std::int64_t kb) { return kb > qb; });
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
}

template <class T>
std::vector<std::vector<std::int64_t>> layout_of(const T* q, const T* k, const Geometry& g,
                                                 const BlockSparseConfig& c) {
  std::int64_t bs = c.block_size;
  std::int64_t nqb = blocks(g.nq, bs);
  std::int64_t nkb = blocks(g.nk, bs);
  std::vector<std::vector<std::int64_t>> out(static_cast<std::size_t>(g.batch * g.heads * nqb));
  if (c.pattern != BlockPattern::content_adaptive) {
    auto fixed = fixed_block_layout(c, g.nq, g.nk);
    for (std::int64_t i = 0; i < g.batch * g.heads; ++i) {
      std::copy(fixed.begin(), fixed.end(), out.begin() + i * nqb);
    }
    return out;
  }
  std::int64_t keep = kept_key_blocks(c, g.nk);
  for (std::int64_t b = 0; b < g.batch; ++b) {
    for (std::int64_t h = 0; h < g.heads; ++h) {
      std::vector<std::vector<T>> key_means;
      for (std::int64_t kb = 0; kb < nkb; ++kb)
        key_means.push_back(pooled(k, g, g.nk, b, h, kb, bs));
      for (std::int64_t qb = 0; qb < nqb; ++qb) {
        std::vector<std::int64_t> kept;
        std::vector<T> qm = pooled(q, g, g.nq, b, h, qb, bs);
        std::vector<std::pair<T, std::int64_t>> ranked;
        std::int64_t last = c.causal ? std::min(qb, nkb - 1) : nkb - 1;
        for (std::int64_t kb = 0; kb <= last; ++kb) {
          if (kb == qb) continue;  // the diagonal is always kept
          // One rounding per term in a fixed order (no contraction left to the compiler), as
          // the GPU computes it (attention/cuda/block_sparse.cu), so both keep the same blocks.
          T dot = 0;
          for (std::int64_t e = 0; e < g.d; ++e) dot = std::fma(qm[e], key_means[kb][e], dot);
          ranked.emplace_back(-dot, kb);  // sorts by larger dot, then lower block
        }
        std::sort(ranked.begin(), ranked.end());
        if (qb < nkb) kept.push_back(qb);
        for (const auto& [neg_dot, kb] : ranked) {
          if (static_cast<std::int64_t>(kept.size()) >= keep) break;
          kept.push_back(kb);
        }
        finish(kept, qb, c.causal);
        out[(b * g.heads + h) * nqb + qb] = std::move(kept);
      }
    }
  }
  return out;
}

// The rows of the kept key blocks of one (batch, head), gathered contiguously.
template <class T>
struct Gathered {
  Mat<T> keys;
  Mat<T> values;
  std::vector<std::int64_t> positions;  // ascending
};

template <class T>
Gathered<T> gather_blocks(const T* k, const T* v, const Geometry& g, std::int64_t b, std::int64_t h,
                          const std::vector<std::int64_t>& kept, std::int64_t bs) {
  Gathered<T> out;
  for (auto kb : kept) {
    for (std::int64_t p = kb * bs; p < std::min((kb + 1) * bs, g.nk); ++p)
      out.positions.push_back(p);
  }
  auto n = static_cast<Eigen::Index>(out.positions.size());
  out.keys.resize(n, g.d);
  out.values.resize(n, g.dv);
  for (Eigen::Index i = 0; i < n; ++i) {
    std::int64_t p = out.positions[i];
    out.keys.row(i) = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(
        k + ((b * g.nk + p) * g.heads + h) * g.d, g.d);
    out.values.row(i) = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(
        v + ((b * g.nk + p) * g.heads + h) * g.dv, g.dv);
  }
  return out;
}

// Calls f(qb, first_query, count, gathered, visible) for every query block of (b, h) that
// has keys; visible(a) is how many gathered keys row a may see.
template <class T, class F>
void for_each_query_block(const T* k, const T* v, const Geometry& g, std::int64_t b, std::int64_t h,
                          const std::vector<std::vector<std::int64_t>>& layout,
                          const BlockSparseConfig& c, F f) {
  std::int64_t bs = c.block_size;
  std::int64_t nqb = blocks(g.nq, bs);
  for (std::int64_t qb = 0; qb < nqb; ++qb) {
    const auto& kept = layout[(b * g.heads + h) * nqb + qb];
    if (kept.empty()) continue;
    Gathered<T> kv = gather_blocks(k, v, g, b, h, kept, bs);
    std::int64_t first = qb * bs;
    std::int64_t count = std::min(bs, g.nq - first);
    auto visible = [&](Eigen::Index a) -> Eigen::Index {
      if (!c.causal) return static_cast<Eigen::Index>(kv.positions.size());
      return std::upper_bound(kv.positions.begin(), kv.positions.end(), first + a) -
             kv.positions.begin();
    };
    f(first, count, kv, visible);
  }
}

template <class T>
void forward_kernel(const T* q, const T* k, const T* v, T* out, T* lse, const Geometry& g,
                    const std::vector<std::vector<std::int64_t>>& layout,
                    const BlockSparseConfig& c, T scale) {
  const T inf = std::numeric_limits<T>::infinity();
  std::int64_t qrow = g.heads * g.d;
  std::int64_t vrow = g.heads * g.dv;
  // Queries of blocks without keys keep 0 and -inf.
  std::fill(out, out + g.batch * g.nq * vrow, T(0));
  std::fill(lse, lse + g.batch * g.heads * g.nq, -inf);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < g.batch * g.heads; ++task) {
    std::int64_t b = task / g.heads;
    std::int64_t h = task % g.heads;
    for_each_query_block(
        k, v, g, b, h, layout, c,
        [&](std::int64_t first, std::int64_t count, const Gathered<T>& kv, auto visible) {
          Rows<T> qs(q + (b * g.nq + first) * qrow + h * g.d, count, g.d,
                     Eigen::OuterStride<>(qrow));
          Mat<T> p = scale * (qs * kv.keys.transpose());
          std::vector<T> top(static_cast<std::size_t>(count), -inf);
          for (std::int64_t a = 0; a < count; ++a) {
            if (visible(a) > 0) top[a] = p.row(a).head(visible(a)).maxCoeff();
          }
          cpu::exponentiate(p, visible, [&](Eigen::Index a) { return top[a]; });
          Mat<T> o = p * kv.values;
          for (std::int64_t a = 0; a < count; ++a) {
            T total = p.row(a).sum();
            if (total <= T(0)) continue;
            Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(
                out + (b * g.nq + first + a) * vrow + h * g.dv, g.dv) = o.row(a) / total;
            lse[(b * g.heads + h) * g.nq + first + a] = top[a] + std::log(total);
          }
        });
  }
}

template <class T>
void backward_kernel(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout,
                     T* dq, T* dk, T* dv, const Geometry& g,
                     const std::vector<std::vector<std::int64_t>>& layout,
                     const BlockSparseConfig& c, T scale) {
  const T inf = std::numeric_limits<T>::infinity();
  std::int64_t qrow = g.heads * g.d;
  std::int64_t vrow = g.heads * g.dv;
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < g.batch * g.heads; ++task) {
    std::int64_t b = task / g.heads;
    std::int64_t h = task % g.heads;
    for_each_query_block(
        k, v, g, b, h, layout, c,
        [&](std::int64_t first, std::int64_t count, const Gathered<T>& kv, auto visible) {
          Eigen::OuterStride<> qstride(qrow);
          Eigen::OuterStride<> vstride(vrow);
          Rows<T> qs(q + (b * g.nq + first) * qrow + h * g.d, count, g.d, qstride);
          Rows<T> os(out + (b * g.nq + first) * vrow + h * g.dv, count, g.dv, vstride);
          Rows<T> dos(dout + (b * g.nq + first) * vrow + h * g.dv, count, g.dv, vstride);
          const T* lse_h = lse + (b * g.heads + h) * g.nq + first;
          Mat<T> p = scale * (qs * kv.keys.transpose());
          // Rows with lse = -inf saw no key: they get no gradient.
          cpu::exponentiate(
              p, [&](Eigen::Index a) { return lse_h[a] == -inf ? Eigen::Index{0} : visible(a); },
              [&](Eigen::Index a) { return lse_h[a]; });
          Mat<T> dvals = p.transpose() * dos;
          Mat<T> ds = dos * kv.values.transpose();
          for (std::int64_t a = 0; a < count; ++a) {
            T dp = dos.row(a).dot(os.row(a));
            ds.row(a) = (p.row(a).array() * (ds.row(a).array() - dp)).matrix();
          }
          MutRows<T>(dq + (b * g.nq + first) * qrow + h * g.d, count, g.d, qstride).noalias() +=
              scale * ds * kv.keys;
          Mat<T> dkeys = scale * ds.transpose() * qs;
          for (std::size_t i = 0; i < kv.positions.size(); ++i) {
            std::int64_t pos = kv.positions[i];
            auto row = static_cast<Eigen::Index>(i);
            Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(
                dk + ((b * g.nk + pos) * g.heads + h) * g.d, g.d) += dkeys.row(row);
            Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(
                dv + ((b * g.nk + pos) * g.heads + h) * g.dv, g.dv) += dvals.row(row);
          }
        });
  }
}

template <class T>
std::vector<std::vector<std::int64_t>> layout_for(const Tensor& qc, const Tensor& kc,
                                                  const Geometry& g, const BlockSparseConfig& c) {
  return layout_of<T>(qc.data<T>(), kc.data<T>(), g, c);
}

// The inputs the CUDA kernels take (attention/cuda/block_sparse.h): those of the CPU on one
// device, bf16, D == Dv in {32, 64, 128}, the head dim contiguous.
Geometry check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  Geometry g = cpu::check_attention_shapes(q, k, v, op);
  LN_CHECK(q.dtype() == DType::bf16 && v.size(3) == q.size(3) &&
               cuda::block_sparse_head_dim_supported(q.size(3)),
           op, ": on cuda takes bf16 q, k and v with one head dim of 32, 64 or 128 (tensor ",
           "cores), got q ", describe(q), " and v ", describe(v), "; convert with to(t, ",
           "DType::bf16), change the head dim, or run on the cpu");
  for (const Tensor* t : {&q, &k, &v}) {
    LN_CHECK(t->stride(3) == 1, op, ": on cuda the head dim must be contiguous (stride 1), got ",
             "strides ", str(t->strides()), " for ", describe(*t), "; make it contiguous first");
  }
  return g;
}

}  // namespace

std::int64_t kept_key_blocks(const BlockSparseConfig& config, std::int64_t nk) {
  std::int64_t nkb = blocks(nk, config.block_size);
  return std::max<std::int64_t>(
      1, static_cast<std::int64_t>(std::ceil(config.density * static_cast<double>(nkb))));
}

std::vector<std::vector<std::int64_t>> fixed_block_layout(const BlockSparseConfig& c,
                                                          std::int64_t nq, std::int64_t nk) {
  c.validate();
  LN_CHECK(c.pattern != BlockPattern::content_adaptive,
           "fixed_block_layout: content_adaptive depends on q and k; use block_layout");
  std::int64_t nqb = blocks(nq, c.block_size);
  std::int64_t nkb = blocks(nk, c.block_size);
  std::int64_t keep = kept_key_blocks(c, nk);
  std::vector<std::vector<std::int64_t>> out(static_cast<std::size_t>(nqb));
  for (std::int64_t qb = 0; qb < nqb; ++qb) {
    std::vector<std::int64_t>& kept = out[qb];
    switch (c.pattern) {
      case BlockPattern::local_window:
        add_window(kept, qb, keep, nkb, c.causal);
        break;
      case BlockPattern::dilated: {
        auto rate = std::max<std::int64_t>(1, static_cast<std::int64_t>(1.0 / c.density));
        for (std::int64_t kb = qb % rate; kb < nkb; kb += rate) kept.push_back(kb);
        break;
      }
      case BlockPattern::global_local: {
        std::int64_t global = std::min(c.global_blocks, nkb);
        std::int64_t window = std::max<std::int64_t>(1, keep - global);
        for (std::int64_t kb = 0; kb < global; ++kb) kept.push_back(kb);
        add_window(kept, qb, window, nkb, c.causal);
        break;
      }
      case BlockPattern::content_adaptive:
        break;
    }
    finish(kept, qb, c.causal);
  }
  return out;
}

std::vector<std::vector<std::int64_t>> block_layout(const Tensor& q, const Tensor& k,
                                                    const BlockSparseConfig& config) {
  config.validate();
  Geometry g = cpu::check_attention_inputs(q, k, k, "block_layout");
  Tensor qc = cpu::attention_operand(q);
  Tensor kc = cpu::attention_operand(k);
  return qc.dtype() == DType::f64 ? layout_for<double>(qc, kc, g, config)
                                  : layout_for<float>(qc, kc, g, config);
}

AttentionOutput block_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const BlockSparseConfig& config) {
  config.validate();
  if (q.device().is_cuda()) {
    Geometry g = check_cuda_inputs(q, k, v, "block_sparse_attention");
    Tensor out = empty({g.batch, g.nq, g.heads, g.dv}, {q.dtype(), q.device()});
    Tensor lse = empty({g.batch, g.heads, g.nq}, {DType::f32, q.device()});
    cuda::block_sparse_attention_forward(q, k, v, config, cpu::attention_scale(config.scale, g.d),
                                         out, lse);
    return {out, lse};
  }
  Geometry g = cpu::check_attention_inputs(q, k, v, "block_sparse_attention");
  DType ct = cpu::attention_compute_dtype(q.dtype());
  Tensor qc = cpu::attention_operand(q);
  Tensor kc = cpu::attention_operand(k);
  Tensor vc = cpu::attention_operand(v);
  Tensor out = empty({g.batch, g.nq, g.heads, g.dv}, {ct});
  Tensor lse = empty({g.batch, g.heads, g.nq}, {ct});
  double scale = cpu::attention_scale(config.scale, g.d);
  if (ct == DType::f64) {
    forward_kernel<double>(qc.data<double>(), kc.data<double>(), vc.data<double>(),
                           out.data<double>(), lse.data<double>(), g,
                           layout_for<double>(qc, kc, g, config), config, scale);
  } else {
    forward_kernel<float>(qc.data<float>(), kc.data<float>(), vc.data<float>(), out.data<float>(),
                          lse.data<float>(), g, layout_for<float>(qc, kc, g, config), config,
                          static_cast<float>(scale));
  }
  return {to(out, q.dtype()), lse};
}

AttentionGrads block_sparse_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& out, const Tensor& lse,
                                               const Tensor& dout,
                                               const BlockSparseConfig& config) {
  config.validate();
  const char* op = "block_sparse_attention_backward";
  bool on_cuda = q.device().is_cuda();
  Geometry g = on_cuda ? check_cuda_inputs(q, k, v, op) : cpu::check_attention_inputs(q, k, v, op);
  LN_CHECK(out.shape() == Shape({g.batch, g.nq, g.heads, g.dv}) && dout.shape() == out.shape() &&
               lse.shape() == Shape({g.batch, g.heads, g.nq}),
           op, ": out ", describe(out), ", dout ", describe(dout), " and lse ", describe(lse),
           " do not fit q ", describe(q), " and v ", describe(v));
  if (on_cuda) {
    for (const Tensor* t : {&out, &dout, &lse}) check_same_device(q, *t, op);
    check_same_dtype(q, out, op);
    check_same_dtype(q, dout, op);
    LN_CHECK(lse.dtype() == DType::f32 && lse.is_contiguous(), op,
             ": lse must be the forward's contiguous f32 tensor, got ", describe(lse));
    LN_CHECK(out.stride(3) == 1 && dout.stride(3) == 1, op,
             ": on cuda the head dim of out and dout must be contiguous, got strides ",
             str(out.strides()), " and ", str(dout.strides()));
    AttentionGrads grads{empty(q.shape(), {q.dtype(), q.device()}),
                         empty(k.shape(), {k.dtype(), k.device()}),
                         empty(v.shape(), {v.dtype(), v.device()})};
    cuda::block_sparse_attention_backward(q, k, v, out, lse, dout, config,
                                          cpu::attention_scale(config.scale, g.d), grads.dq,
                                          grads.dk, grads.dv);
    return grads;
  }
  DType ct = cpu::attention_compute_dtype(q.dtype());
  Tensor qc = cpu::attention_operand(q);
  Tensor kc = cpu::attention_operand(k);
  Tensor vc = cpu::attention_operand(v);
  Tensor oc = cpu::attention_operand(out);
  Tensor doc = cpu::attention_operand(dout);
  Tensor lc = cpu::attention_operand(lse);
  AttentionGrads grads{zeros(q.shape(), {ct}), zeros(k.shape(), {ct}), zeros(v.shape(), {ct})};
  double scale = cpu::attention_scale(config.scale, g.d);
  if (ct == DType::f64) {
    backward_kernel<double>(
        qc.data<double>(), kc.data<double>(), vc.data<double>(), oc.data<double>(),
        lc.data<double>(), doc.data<double>(), grads.dq.data<double>(), grads.dk.data<double>(),
        grads.dv.data<double>(), g, layout_for<double>(qc, kc, g, config), config, scale);
  } else {
    backward_kernel<float>(qc.data<float>(), kc.data<float>(), vc.data<float>(), oc.data<float>(),
                           lc.data<float>(), doc.data<float>(), grads.dq.data<float>(),
                           grads.dk.data<float>(), grads.dv.data<float>(), g,
                           layout_for<float>(qc, kc, g, config), config, static_cast<float>(scale));
  }
  return {to(grads.dq, q.dtype()), to(grads.dk, k.dtype()), to(grads.dv, v.dtype())};
}

Variable block_sparse_attention(const Variable& q, const Variable& k, const Variable& v,
                                const BlockSparseConfig& config) {
  const Tensor& qd = q.data();
  const Tensor& kd = k.data();
  const Tensor& vd = v.data();
  AttentionOutput r = block_sparse_attention_forward(qd, kd, vd, config);
  Tensor out = r.out;
  Tensor lse = r.lse;
  return make_result(out, {q, k, v}, "block_sparse_attention", [=](const Tensor& g) {
    AttentionGrads d = block_sparse_attention_backward(qd, kd, vd, out, lse, g, config);
    return std::vector<Tensor>{d.dq, d.dk, d.dv};
  });
}

}  // namespace longnet
