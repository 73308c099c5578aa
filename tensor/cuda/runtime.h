// The CUDA runtime as the rest of the engine sees it. No CUDA header leaks out of
// tensor/cuda/. In a build without CUDA every call that needs a device throws an error
// that says how to get one; device_count() is then 0.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tensor/device.h"
#include "tensor/dtype.h"

namespace longnet::cuda {

bool built_with_cuda();

// Number of usable devices: 0 without a driver, without a device, or without CUDA in
// the build. Never throws.
int device_count();

void* allocate(std::size_t bytes, int device);
void release(void* ptr, int device) noexcept;

// Copies bytes between any two devices (host<->device, device<->device). Synchronous.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                std::size_t bytes);

// Writes value (converted to dtype) to n contiguous elements at dst on device.
void fill(void* dst, DType dtype, double value, std::int64_t n, int device);

}  // namespace longnet::cuda
