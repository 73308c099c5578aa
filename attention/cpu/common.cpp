#include "attention/cpu/common.h"

#include <cmath>

#include "tensor/copy.h"

namespace longnet::cpu {

AttentionGeometry check_attention_shapes(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const char* op) {
  for (const Tensor* t : {&q, &k, &v}) {
    check_defined(*t, op);
    LN_CHECK(t->dim() == 4, op, ": q, k and v must be (batch, seq, heads, head_dim), got ",
             describe(*t));
  }
  check_same_device(q, k, op);
  check_same_device(q, v, op);
  check_same_dtype(q, k, op);
  check_same_dtype(q, v, op);
  LN_CHECK(q.size(0) == k.size(0) && q.size(0) == v.size(0) && q.size(2) == k.size(2) &&
               q.size(2) == v.size(2) && q.size(3) == k.size(3) && k.size(1) == v.size(1),
           op, ": q ", describe(q), ", k ", describe(k), " and v ", describe(v),
           " disagree: batch and heads must match, q and k share head_dim, k and v share seq");
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3), v.size(3)};
}

AttentionGeometry check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const char* op) {
  for (const Tensor* t : {&q, &k, &v}) {
    check_defined(*t, op);
    check_cpu(*t, op);
  }
  AttentionGeometry g = check_attention_shapes(q, k, v, op);
  LN_CHECK(is_floating(q.dtype()), op, ": needs a floating dtype, got ", describe(q));
  return g;
}

DType attention_compute_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

Tensor attention_operand(const Tensor& t) {
  return contiguous(to(t, attention_compute_dtype(t.dtype())));
}

double attention_scale(std::optional<double> scale, std::int64_t head_dim) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(std::max<std::int64_t>(head_dim, 1)));
}

}  // namespace longnet::cpu
