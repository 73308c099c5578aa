#include "attention/dilated.h"

#include "attention/cpu/common.h"
#include "attention/cpu/head_plan.h"
#include "attention/cuda/dilated.h"

#include <cmath>
#include <limits>

#include "tensor/copy.h"
#include "tensor/creation.h"

namespace longnet {

void DilatedAttentionConfig::validate() const {
  LN_CHECK(!segment_lengths.empty(), "segment_lengths must not be empty (one entry per branch)");
  LN_CHECK(segment_lengths.size() == dilation_rates.size(), "segment_lengths has ",
           segment_lengths.size(), " entries but dilation_rates has ", dilation_rates.size(),
           "; they must have one entry per branch each");
  for (std::size_t i = 0; i < segment_lengths.size(); ++i) {
    LN_CHECK(segment_lengths[i] >= 1, "segment_lengths[", i, "] is ", segment_lengths[i],
             "; valid: integers >= 1");
    LN_CHECK(dilation_rates[i] >= 1, "dilation_rates[", i, "] is ", dilation_rates[i],
             "; valid: integers >= 1");
  }
  if (scale) {
    LN_CHECK(std::isfinite(*scale) && *scale > 0, "scale is ", *scale,
             "; valid: a finite number > 0 (default 1/sqrt(head dim))");
  }
}

namespace {

using cpu::count_selected;
using cpu::HeadPlan;
using cpu::Item;
using cpu::plan_heads;
using cpu::visible;
using Geometry = cpu::AttentionGeometry;
using cpu::Mat;
using cpu::MutRows;
using cpu::Rows;

// Calls f(first, nq, nk) for every segment of the item holding at least one selected query
// and one selected key; first is the position of compact row 0.
template <class F>
void for_each_segment(const Item& item, const Geometry& g, F f) {
  std::int64_t n = std::max(g.nq, g.nk);
  std::int64_t w = std::min(item.w, n);  // longer segments are one segment
  for (std::int64_t t0 = 0; t0 < n; t0 += w) {
    std::int64_t first = t0 + item.j;
    std::int64_t nq = count_selected(first, std::min(t0 + w, g.nq), item.r);
    std::int64_t nk = count_selected(first, std::min(t0 + w, g.nk), item.r);
    if (nq > 0 && nk > 0) f(first, nq, nk);
  }
}

template <class T>
void forward_kernel(const T* q, const T* k, const T* v, T* out, T* lse, const Geometry& g,
                    const std::vector<HeadPlan>& plans, T scale, bool causal) {
  std::int64_t qrow = g.heads * g.d;  // element stride between positions
  std::int64_t vrow = g.heads * g.dv;
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < g.batch * g.heads; ++task) {
    std::int64_t b = task / g.heads;
    std::int64_t h = task % g.heads;
    const HeadPlan& plan = plans[h];
    const T* qh = q + b * g.nq * qrow + h * g.d;
    const T* kh = k + b * g.nk * qrow + h * g.d;
    const T* vh = v + b * g.nk * vrow + h * g.dv;
    // Merged across branches and segments, per query position.
    cpu::OnlineSoftmax<T> softmax(g.nq, g.dv);
    for (const Item& item : plan.items) {
      for_each_segment(item, g, [&](std::int64_t first, std::int64_t nq, std::int64_t nk) {
        Rows<T> qs(qh + first * qrow, nq, g.d, Eigen::OuterStride<>(item.r * qrow));
        Rows<T> ks(kh + first * qrow, nk, g.d, Eigen::OuterStride<>(item.r * qrow));
        Rows<T> vs(vh + first * vrow, nk, g.dv, Eigen::OuterStride<>(item.r * vrow));
        Mat<T> s = scale * (qs * ks.transpose());
        softmax.merge(
            s, vs, [&](Eigen::Index a) { return visible(a, nk, causal); },
            [&](Eigen::Index a) { return first + a * item.r; });
      });
    }
    auto out_scale = static_cast<T>(plan.out_scale);
    for (std::int64_t pos = 0; pos < g.nq; ++pos) {
      lse[(b * g.heads + h) * g.nq + pos] =
          softmax.finish(pos, out_scale, out + (b * g.nq + pos) * vrow + h * g.dv);
    }
  }
}

template <class T>
void backward_kernel(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout,
                     T* dq, T* dk, T* dv, const Geometry& g, const std::vector<HeadPlan>& plans,
                     T scale, bool causal) {
  std::int64_t qrow = g.heads * g.d;
  std::int64_t vrow = g.heads * g.dv;
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < g.batch * g.heads; ++task) {
    std::int64_t b = task / g.heads;
    std::int64_t h = task % g.heads;
    const HeadPlan& plan = plans[h];
    std::int64_t qoff = b * g.nq * qrow + h * g.d;
    std::int64_t koff = b * g.nk * qrow + h * g.d;
    std::int64_t voff = b * g.nk * vrow + h * g.dv;
    std::int64_t ooff = b * g.nq * vrow + h * g.dv;
    const T* lse_h = lse + (b * g.heads + h) * g.nq;
    // Dp = rowsum(dO * O): the same for the softmax output and the scaled output.
    std::vector<T> dp(static_cast<std::size_t>(g.nq));
    for (std::int64_t pos = 0; pos < g.nq; ++pos) {
      T total = 0;
      for (std::int64_t d = 0; d < g.dv; ++d) {
        total += dout[ooff + pos * vrow + d] * out[ooff + pos * vrow + d];
      }
      dp[pos] = total;
    }
    T out_scale = static_cast<T>(plan.out_scale);
    for (const Item& item : plan.items) {
      for_each_segment(item, g, [&](std::int64_t first, std::int64_t nq, std::int64_t nk) {
        Eigen::OuterStride<> qs_stride(item.r * qrow);
        Eigen::OuterStride<> vs_stride(item.r * vrow);
        Rows<T> qs(q + qoff + first * qrow, nq, g.d, qs_stride);
        Rows<T> ks(k + koff + first * qrow, nk, g.d, qs_stride);
        Rows<T> vs(v + voff + first * vrow, nk, g.dv, vs_stride);
        Rows<T> dos(dout + ooff + first * vrow, nq, g.dv, vs_stride);
        Mat<T> p = scale * (qs * ks.transpose());
        // A row reached here saw at least one key in the forward pass, so its lse is finite.
        cpu::exponentiate(
            p, [&](Eigen::Index a) { return visible(a, nk, causal); },
            [&](Eigen::Index a) { return lse_h[first + a * item.r]; });
        Mat<T> d_out = out_scale * dos;
        MutRows<T>(dv + voff + first * vrow, nk, g.dv, vs_stride).noalias() +=
            p.transpose() * d_out;
        Mat<T> ds = d_out * vs.transpose();  // dP
        for (std::int64_t a = 0; a < nq; ++a) {
          ds.row(a) = (p.row(a).array() * (ds.row(a).array() - dp[first + a * item.r])).matrix();
        }
        MutRows<T>(dq + qoff + first * qrow, nq, g.d, qs_stride).noalias() += scale * ds * ks;
        MutRows<T>(dk + koff + first * qrow, nk, g.d, qs_stride).noalias() +=
            scale * ds.transpose() * qs;
      });
    }
  }
}

// The inputs the CUDA kernels take: those of the CPU, on one device, f32 or bf16, rows
// addressed through strides (the last stride 1), head dims the kernels hold.
Geometry check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  Geometry g = cpu::check_attention_shapes(q, k, v, op);
  LN_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::bf16, op,
           ": on cuda takes f32 or bf16 inputs, got ", describe(q), "; convert with to(t, f32)");
  LN_CHECK(q.size(3) <= cuda::kMaxAttentionHeadDim && v.size(3) <= cuda::kMaxAttentionHeadDim, op,
           ": head dims up to ", cuda::kMaxAttentionHeadDim, " on cuda, got q ", describe(q),
           " and v ", describe(v), "; use more heads or the cpu");
  for (const Tensor* t : {&q, &k, &v}) {
    LN_CHECK(t->stride(3) == 1 || t->size(3) == 1, op,
             ": on cuda the head dim must be contiguous (stride 1), got strides ",
             str(t->strides()), " for ", describe(*t), "; make it contiguous first");
  }
  return g;
}

// The dtype a result of inputs of dtype `input` takes.
DType result_dtype(ResultDtype result, DType input) {
  return result == ResultDtype::input ? input : cpu::attention_compute_dtype(input);
}

}  // namespace

AttentionOutput dilated_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const DilatedAttentionConfig& config,
                                          ResultDtype result) {
  config.validate();
  DType out_dtype = result_dtype(result, q.dtype());
  if (q.device().is_cuda()) {
    Geometry g = check_cuda_inputs(q, k, v, "dilated_attention");
    Tensor out = empty({g.batch, g.nq, g.heads, g.dv}, {out_dtype, q.device()});
    Tensor lse = empty({g.batch, g.heads, g.nq}, {DType::f32, q.device()});
    cuda::dilated_attention_forward(q, k, v, config, cpu::attention_scale(config.scale, g.d), out,
                                    lse);
    return {out, lse};
  }
  Geometry g = cpu::check_attention_inputs(q, k, v, "dilated_attention");
  DType ct = cpu::attention_compute_dtype(q.dtype());
  Tensor qc = cpu::attention_operand(q);
  Tensor kc = cpu::attention_operand(k);
  Tensor vc = cpu::attention_operand(v);
  Tensor out = empty({g.batch, g.nq, g.heads, g.dv}, {ct});
  Tensor lse = empty({g.batch, g.heads, g.nq}, {ct});
  auto plans = plan_heads(config, g.heads);
  double scale = cpu::attention_scale(config.scale, g.d);
  if (ct == DType::f64) {
    forward_kernel<double>(qc.data<double>(), kc.data<double>(), vc.data<double>(),
                           out.data<double>(), lse.data<double>(), g, plans, scale, config.causal);
  } else {
    forward_kernel<float>(qc.data<float>(), kc.data<float>(), vc.data<float>(), out.data<float>(),
                          lse.data<float>(), g, plans, static_cast<float>(scale), config.causal);
  }
  return {to(out, out_dtype), lse};
}

AttentionGrads dilated_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& out, const Tensor& lse, const Tensor& dout,
                                          const DilatedAttentionConfig& config, ResultDtype result,
                                          double out_scale) {
  config.validate();
  LN_CHECK(std::isfinite(out_scale) && out_scale > 0, "dilated_attention_backward: out_scale is ",
           out_scale, "; it must be finite and > 0");
  bool on_cuda = q.device().is_cuda();
  DType grad_dtype = result_dtype(result, q.dtype());  // q, k and v share a dtype (checked)
  Geometry g = on_cuda ? check_cuda_inputs(q, k, v, "dilated_attention_backward")
                       : cpu::check_attention_inputs(q, k, v, "dilated_attention_backward");
  LN_CHECK(out.shape() == Shape({g.batch, g.nq, g.heads, g.dv}) && dout.shape() == out.shape() &&
               lse.shape() == Shape({g.batch, g.heads, g.nq}),
           "dilated_attention_backward: out ", describe(out), ", dout ", describe(dout),
           " and lse ", describe(lse), " do not fit q ", describe(q), " and v ", describe(v));
  if (on_cuda) {
    const char* op = "dilated_attention_backward";
    for (const Tensor* t : {&out, &dout, &lse}) check_same_device(q, *t, op);
    check_same_dtype(q, out, op);
    check_same_dtype(q, dout, op);
    LN_CHECK(lse.dtype() == DType::f32 && lse.is_contiguous(), op,
             ": lse must be the forward's contiguous f32 tensor, got ", describe(lse));
    LN_CHECK((out.stride(3) == 1 || g.dv == 1) && (dout.stride(3) == 1 || g.dv == 1), op,
             ": on cuda the head dim of out and dout must be contiguous, got strides ",
             str(out.strides()), " and ", str(dout.strides()));
    AttentionGrads grads{empty(q.shape(), {grad_dtype, q.device()}),
                         empty(k.shape(), {grad_dtype, k.device()}),
                         empty(v.shape(), {grad_dtype, v.device()})};
    cuda::dilated_attention_backward(q, k, v, out, lse, dout, config,
                                     cpu::attention_scale(config.scale, g.d), out_scale, grads.dq,
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
  auto plans = plan_heads(config, g.heads);
  for (HeadPlan& plan : plans) plan.out_scale *= out_scale;
  double scale = cpu::attention_scale(config.scale, g.d);
  if (ct == DType::f64) {
    backward_kernel<double>(qc.data<double>(), kc.data<double>(), vc.data<double>(),
                            oc.data<double>(), lc.data<double>(), doc.data<double>(),
                            grads.dq.data<double>(), grads.dk.data<double>(),
                            grads.dv.data<double>(), g, plans, scale, config.causal);
  } else {
    backward_kernel<float>(qc.data<float>(), kc.data<float>(), vc.data<float>(), oc.data<float>(),
                           lc.data<float>(), doc.data<float>(), grads.dq.data<float>(),
                           grads.dk.data<float>(), grads.dv.data<float>(), g, plans,
                           static_cast<float>(scale), config.causal);
  }
  return {to(grads.dq, grad_dtype), to(grads.dk, grad_dtype), to(grads.dv, grad_dtype)};
}

Variable dilated_attention(const Variable& q, const Variable& k, const Variable& v,
                           const DilatedAttentionConfig& config) {
  const Tensor& qd = q.data();
  const Tensor& kd = k.data();
  const Tensor& vd = v.data();
  AttentionOutput r = dilated_attention_forward(qd, kd, vd, config);
  Tensor out = r.out;
  Tensor lse = r.lse;
  return make_result(out, {q, k, v}, "dilated_attention", [=](const Tensor& g) {
    AttentionGrads d = dilated_attention_backward(qd, kd, vd, out, lse, g, config);
    return std::vector<Tensor>{d.dq, d.dk, d.dv};
  });
}

Variable dense_attention(const Variable& q, const Variable& k, const Variable& v, bool causal,
                         std::optional<double> scale) {
  LN_CHECK(q.dim() == 4 && k.dim() == 4, "dense_attention: q and k must be (batch, seq, heads, ",
           "head_dim), got ", describe(q.data()), " and ", describe(k.data()));
  std::int64_t n = std::max<std::int64_t>({q.size(1), k.size(1), 1});
  DilatedAttentionConfig config{{n}, {1}, DilatedMode::paper, causal, scale};
  return dilated_attention(q, k, v, config);
}

}  // namespace longnet
