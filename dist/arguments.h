// What every communicator checks of a call's arguments before any data moves, so that a
// call that fails on one backend fails the same way on the others. Each check throws a
// longnet::Error naming the call.
#pragma once

#include "dist/communicator.h"

namespace longnet {

// A tensor the call reads or writes: defined and contiguous.
void check_buffer(const Tensor& t, const char* call);

// all_reduce: avg needs a floating dtype.
void check_all_reduce(const Tensor& t, ReduceOp op);

// all_gather: out has shape [size, in.shape...] and in's dtype and device; in is out[rank]
// or does not overlap out.
void check_all_gather(const Tensor& in, const Tensor& out, int rank, int size);

// reduce_scatter: in has shape [size, out.shape...] and out's dtype and device; they do
// not overlap; avg needs a floating dtype.
void check_reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, int size);

// broadcast: root is a rank.
void check_broadcast(const Tensor& t, int root, int size);

// send and recv: peer is another rank, tag is in [0, max_tag].
void check_point_to_point(const Tensor& t, int peer, int tag, int max_tag, int rank, int size,
                          const char* call);

// The collectives whose arguments ranks agree on, numbered for the agreement message (the
// async forms share their blocking form's number): all_reduce 1, all_gather 2,
// reduce_scatter 3, broadcast 4. Another name is an error.
std::int64_t call_id(const char* call);
const char* call_name(std::int64_t id);

// Whether in is exactly out[rank] (same storage, offset and element count).
bool is_own_slot(const Tensor& in, const Tensor& out, int rank);

}  // namespace longnet
