#include "dist/arguments.h"

#include <iterator>
#include <string_view>

namespace longnet {
namespace {

// Both are contiguous (checked first), so each covers one range of its storage's elements.
bool overlap(const Tensor& a, const Tensor& b) {
  if (a.storage() != b.storage() || a.numel() == 0 || b.numel() == 0) return false;
  return a.offset() < b.offset() + b.numel() && b.offset() < a.offset() + a.numel();
}

void check_reduce_op(DType dtype, ReduceOp op, const char* call) {
  LN_CHECK(op != ReduceOp::avg || is_floating(dtype), call,
           ": avg needs a floating dtype (f32, f64, bf16), got ", name(dtype),
           "; use sum and divide where truncation is meant");
}

void check_same_layout(const Tensor& in, const Tensor& out, const char* call) {
  check_same_dtype(in, out, call);
  check_same_device(in, out, call);
}

}  // namespace

void check_buffer(const Tensor& t, const char* call) {
  check_defined(t, call);
  LN_CHECK(t.is_contiguous(), call, ": needs a contiguous tensor, got ", describe(t),
           " with strides ", str(t.strides()), "; pass contiguous(t) and copy the result back");
}

void check_all_reduce(const Tensor& t, ReduceOp op) {
  check_buffer(t, "all_reduce");
  check_reduce_op(t.dtype(), op, "all_reduce");
}

void check_all_gather(const Tensor& in, const Tensor& out, int rank, int size) {
  check_buffer(in, "all_gather");
  check_buffer(out, "all_gather");
  check_same_layout(in, out, "all_gather");
  Shape expected{size};
  expected.insert(expected.end(), in.shape().begin(), in.shape().end());
  LN_CHECK(out.shape() == expected, "all_gather: out must have shape ", str(expected),
           " ([size, in.shape...]) for in ", describe(in), ", got ", describe(out));
  LN_CHECK(is_own_slot(in, out, rank) || !overlap(in, out),
           "all_gather: in overlaps out other than as out[rank] (rank ", rank, ")");
}

void check_reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, int size) {
  check_buffer(in, "reduce_scatter");
  check_buffer(out, "reduce_scatter");
  check_same_layout(in, out, "reduce_scatter");
  Shape expected{size};
  expected.insert(expected.end(), out.shape().begin(), out.shape().end());
  LN_CHECK(in.shape() == expected, "reduce_scatter: in must have shape ", str(expected),
           " ([size, out.shape...]) for out ", describe(out), ", got ", describe(in));
  LN_CHECK(!overlap(in, out), "reduce_scatter: in and out overlap");
  check_reduce_op(in.dtype(), op, "reduce_scatter");
}

void check_broadcast(const Tensor& t, int root, int size) {
  check_buffer(t, "broadcast");
  LN_CHECK(root >= 0 && root < size, "broadcast: root ", root, " is not a rank (ranks 0..",
           size - 1, ")");
}

void check_point_to_point(const Tensor& t, int peer, int tag, int max_tag, int rank, int size,
                          const char* call) {
  check_buffer(t, call);
  LN_CHECK(peer >= 0 && peer < size, call, ": rank ", peer, " is not a rank (ranks 0..", size - 1,
           ")");
  LN_CHECK(peer != rank, call, ": rank ", peer,
           " is this rank; a rank cannot send to or receive from itself");
  LN_CHECK(tag >= 0 && tag <= max_tag, call, ": tag ", tag, " is outside [0, ", max_tag, "]");
}

bool is_own_slot(const Tensor& in, const Tensor& out, int rank) {
  return in.storage() == out.storage() && in.numel() * out.size(0) == out.numel() &&
         in.offset() == out.offset() + rank * in.numel();
}

namespace {

constexpr const char* kCalls[] = {"all_reduce", "all_gather", "reduce_scatter", "broadcast"};
constexpr std::int64_t kCallCount = std::size(kCalls);

}  // namespace

std::int64_t call_id(const char* call) {
  for (std::int64_t i = 0; i < kCallCount; ++i) {
    if (std::string_view(call) == kCalls[i]) return i + 1;
  }
  throw Error(cat("call_id: \"", call, "\" is not a collective with agreed arguments"));
}

const char* call_name(std::int64_t id) {
  return id >= 1 && id <= kCallCount ? kCalls[id - 1] : "?";
}

}  // namespace longnet
