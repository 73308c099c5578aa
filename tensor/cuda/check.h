// One macro checks every CUDA runtime call: the error names the call, file, line and
// CUDA's own text.
#pragma once

#include <cuda_runtime.h>

#include "tensor/error.h"

#define LN_CUDA_CHECK(call)                                                                      \
  do {                                                                                           \
    cudaError_t ln_status_ = (call);                                                             \
    if (ln_status_ != cudaSuccess) {                                                             \
      throw ::longnet::Error(::longnet::cat(#call, " failed at ", __FILE__, ":", __LINE__, ": ", \
                                            cudaGetErrorString(ln_status_)));                    \
    }                                                                                            \
  } while (0)
