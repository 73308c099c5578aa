// A build without CUDA: no NCCL communicator.
#include "dist/cuda/nccl.h"

namespace longnet {

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> /*host*/,
                                                     int device) {
  throw Error(cat("make_nccl_communicator: cuda:", device,
                  " needs a build with CUDA support; reconfigure with -Dcuda=enabled"));
}

bool nccl_available() { return false; }

}  // namespace longnet
