// One macro per library checks every CUDA runtime and cuBLAS call: the error names the
// call, file, line and the library's own text. Included only by .cu files (it pulls in
// CUDA headers).
#pragma once

#include <cublas_v2.h>
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

#define LN_CUBLAS_CHECK(call)                                                                    \
  do {                                                                                           \
    cublasStatus_t ln_status_ = (call);                                                          \
    if (ln_status_ != CUBLAS_STATUS_SUCCESS) {                                                   \
      throw ::longnet::Error(::longnet::cat(#call, " failed at ", __FILE__, ":", __LINE__, ": ", \
                                            cublasGetStatusString(ln_status_)));                 \
    }                                                                                            \
  } while (0)
