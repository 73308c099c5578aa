#include "tensor/tensor.h"

#include <cstdint>

#include "tensor/copy.h"

namespace longnet {

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, Strides strides, std::int64_t offset,
               DType dtype)
    : storage_(std::move(storage)),
      shape_(std::move(shape)),
      strides_(std::move(strides)),
      offset_(offset),
      dtype_(dtype) {
  LN_CHECK(shape_.size() == strides_.size(), "tensor with shape ", str(shape_), " given ",
           strides_.size(), " strides");
  for (auto s : shape_) LN_CHECK(s >= 0, "negative size in shape ", str(shape_));
}

std::int64_t Tensor::size(std::int64_t d) const { return shape_[wrap_dim(d, dim(), "size")]; }
std::int64_t Tensor::stride(std::int64_t d) const { return strides_[wrap_dim(d, dim(), "stride")]; }

Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to be out of place
  std::int64_t expected = 1;
  for (auto d = dim() - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != expected) return false;
    expected *= shape_[d];
  }
  return true;
}

void* Tensor::raw_data() const {
  LN_CHECK(defined(), "data access on an undefined tensor");
  return static_cast<char*>(storage_->data()) +
         offset_ * static_cast<std::int64_t>(element_size(dtype_));
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = contiguous(to(to(*this, Device::cpu()), dtype_of<T>()));
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<std::int32_t> Tensor::to_vector<std::int32_t>() const;
template std::vector<std::int64_t> Tensor::to_vector<std::int64_t>() const;

double Tensor::item() const {
  LN_CHECK(numel() == 1, "item() needs a one-element tensor, got ", describe(*this));
  return to_vector<double>()[0];
}

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined tensor";
  return cat(name(t.dtype()), str(t.shape()), " ", str(t.device()));
}

Tensor empty(const Shape& shape, TensorOptions options) {
  for (auto s : shape) LN_CHECK(s >= 0, "empty: negative size in shape ", str(shape));
  auto bytes = static_cast<std::size_t>(numel(shape)) * element_size(options.dtype);
  return Tensor(std::make_shared<Storage>(bytes, options.device), shape, contiguous_strides(shape),
                0, options.dtype);
}

void check_defined(const Tensor& t, const char* op) {
  LN_CHECK(t.defined(), op, ": got an undefined tensor");
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  LN_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch: ", describe(a), " vs ", describe(b));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  LN_CHECK(a.device() == b.device(), op, ": device mismatch: ", describe(a), " vs ", describe(b));
}

void check_cpu(const Tensor& t, const char* op) {
  LN_CHECK(t.device().is_cpu(), op, " is not implemented for ", describe(t),
           " yet; move the tensor to the cpu");
}

}  // namespace longnet
