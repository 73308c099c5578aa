// The GPU communicator: collectives of CUDA tensors through NCCL, CPU tensors through the
// host communicator of the same ranks (MPI), which also bootstraps NCCL (rank 0 draws the
// unique id and broadcasts it). Every rank uses one device; a tensor on another device is
// an error.
//
// NCCL is loaded at run time (dlopen of libnccl.so.2, or the file LONGNET_NCCL_LIBRARY
// names): a CUDA build starts on machines without NCCL, and only this call needs it.
//
// GPU calls are stream-ordered rather than host-blocking: each enqueues its NCCL operation
// on the communicator's own stream after the work already queued on the device's stream,
// and makes the device's stream wait for it, so every later kernel and copy (and so every
// read on the host) sees the result; the host itself does not wait. An async call's wait()
// makes the device's stream wait; test() says whether the operation has finished. bf16 is
// reduced in f32 as on the MPI backend. Arguments are agreed across ranks through the host
// communicator before anything is enqueued, so a mismatch is an error on every rank, not
// a hang. send/recv pair in order per peer (NCCL has no tags; the tag is only checked), and
// recv cannot see the sender's byte count: a size mismatch is not detected. Destroyed while
// an exception unwinds, the communicator aborts (ncclCommAbort) instead of waiting for
// peers that may never come. NCCL_NVLS_ENABLE is set to 0 unless already set.
#pragma once

#include <memory>

#include "dist/communicator.h"

namespace longnet {

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host,
                                                     int device);

// Whether NCCL can be loaded here (false in a build without CUDA).
bool nccl_available();

}  // namespace longnet
