// Plumbing shared by the CPU attention kernels: input checks, Eigen row views of the
// (B, N, H, D) layout, and the masked row exponentials of the softmax.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "tensor/tensor.h"

namespace longnet::cpu {

struct AttentionGeometry {
  std::int64_t batch, nq, nk, heads, d, dv;
};

// q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv): defined, one dtype, one device (any).
AttentionGeometry check_attention_shapes(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const char* op);
// The same, and a floating dtype on the CPU.
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

// The running softmax of one head's query rows, merged over blocks of keys (segments,
// branches) in any order: per row the largest score so far, the sum of exponentials
// relative to it, and the values weighted the same way.
template <class T>
class OnlineSoftmax {
 public:
  OnlineSoftmax(std::int64_t rows, std::int64_t dv)
      : acc_(Mat<T>::Zero(rows, dv)),
        max_(static_cast<std::size_t>(rows), -std::numeric_limits<T>::infinity()),
        sum_(static_cast<std::size_t>(rows), T(0)) {}

  // Merges the block of scores s (query a against the block's keys, of which the first
  // visible(a) count) with values vs into row row(a); s is overwritten.
  template <class Values, class Visible, class Row>
  void merge(Mat<T>& s, const Values& vs, Visible visible, Row row) {
    std::vector<T> block_max(static_cast<std::size_t>(s.rows()));
    for (Eigen::Index a = 0; a < s.rows(); ++a) block_max[a] = s.row(a).head(visible(a)).maxCoeff();
    exponentiate(s, visible, [&](Eigen::Index a) { return block_max[a]; });
    Mat<T> u = s * vs;
    for (Eigen::Index a = 0; a < s.rows(); ++a) {
      std::int64_t r = row(a);
      T top = std::max(max_[r], block_max[a]);
      T old_weight =
          max_[r] == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(max_[r] - top);
      T new_weight = std::exp(block_max[a] - top);
      acc_.row(r) = acc_.row(r) * old_weight + u.row(a) * new_weight;
      sum_[r] = sum_[r] * old_weight + s.row(a).sum() * new_weight;
      max_[r] = top;
    }
  }

  // Writes row r's output times out_scale to o[0, dv) and returns its logsumexp; a row no
  // key reached gets zeros and -inf.
  T finish(std::int64_t r, T out_scale, T* o) const {
    bool reached = sum_[r] > T(0);
    for (Eigen::Index c = 0; c < acc_.cols(); ++c) {
      o[c] = reached ? acc_(r, c) / sum_[r] * out_scale : T(0);
    }
    return reached ? max_[r] + std::log(sum_[r]) : -std::numeric_limits<T>::infinity();
  }

 private:
  Mat<T> acc_;
  std::vector<T> max_;
  std::vector<T> sum_;
};

}  // namespace longnet::cpu
