// Plumbing shared by the CPU attention kernels: input checks, Eigen row views of the
// (B, N, H, D) layout, and the masked row exponentials of the softmax.
#pragma once

#include <Eigen/Core>
#include <optional>

#include "tensor/tensor.h"

namespace longnet::cpu {

struct AttentionGeometry {
  std::int64_t batch, nq, nk, heads, d, dv;
};

// q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv), one floating dtype, on the CPU.
AttentionGeometry check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const char* op);

// The dtype kernels compute in (f64 for f64, f32 otherwise) and t contiguous in it.
DType attention_compute_dtype(DType dtype);
Tensor attention_operand(const Tensor& t);
double attention_scale(std::optional<double> scale, std::int64_t head_dim);

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Rows = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using MutRows = Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>>;

// Replaces row a of scores s by exp(s - shift(a)) over its first visible(a) entries and 0
// beyond them. Masked entries are set to 0 explicitly: a vectorised exp of -inf is not
// exactly 0, and causality must be exact.
template <class T, class Visible, class Shift>
void exponentiate(Mat<T>& s, Visible visible, Shift shift) {
  for (Eigen::Index a = 0; a < s.rows(); ++a) {
    Eigen::Index n = visible(a);
    s.row(a).head(n) = (s.row(a).head(n).array() - shift(a)).exp().matrix();
    s.row(a).tail(s.cols() - n).setZero();
  }
}

}  // namespace longnet::cpu
