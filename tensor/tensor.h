// Tensor: a value handle onto shared storage with a shape, element strides, an element
// offset, a dtype and (through the storage) a device. Copying a Tensor copies the handle;
// views share storage. Ops are free functions in the other tensor/ headers.
#pragma once

#include <memory>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/shape.h"
#include "tensor/storage.h"

namespace longnet {

class Tensor {
 public:
  Tensor() = default;  // undefined: holds nothing
  Tensor(std::shared_ptr<Storage> storage, Shape shape, Strides strides, std::int64_t offset,
         DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  std::int64_t size(std::int64_t dim) const;  // negative dims count from the end
  std::int64_t stride(std::int64_t dim) const;
  std::int64_t numel() const { return longnet::numel(shape_); }
  std::int64_t offset() const { return offset_; }
  DType dtype() const { return dtype_; }
  Device device() const;
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Address of element [0, ..., 0]. data<T>() checks that T matches the dtype.
  void* raw_data() const;
  template <class T>
  T* data() const {
    LN_CHECK(dtype_of<T>() == dtype_, "data<", name(dtype_of<T>()), ">() on a ", name(dtype_),
             " tensor of shape ", str(shape_));
    return static_cast<T*>(raw_data());
  }

  // Host copy of the elements in row-major order, converted to T.
  template <class T>
  std::vector<T> to_vector() const;
  // The single element of a one-element tensor, as double.
  double item() const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Strides strides_;
  std::int64_t offset_ = 0;
  DType dtype_ = DType::f32;
};

// "f32[2, 3] cpu"
std::string describe(const Tensor& t);

// An uninitialised contiguous tensor.
struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
};
Tensor empty(const Shape& shape, TensorOptions options = {});

// Checks shared by ops: an error names op and shows what was given.
void check_defined(const Tensor& t, const char* op);
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
void check_same_device(const Tensor& a, const Tensor& b, const char* op);
void check_cpu(const Tensor& t, const char* op);

}  // namespace longnet
