// Element types. f32 is the working type, bf16 the storage type of mixed precision,
// f64 serves gradcheck and accumulation, i32/i64 hold indices.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>

#include "tensor/error.h"

namespace longnet {

enum class DType : std::uint8_t { f32, f64, bf16, i32, i64 };

const char* name(DType dtype);
std::size_t element_size(DType dtype);
bool is_floating(DType dtype);
std::ostream& operator<<(std::ostream& out, DType dtype);

// Brain float: the top 16 bits of an IEEE f32. Conversion rounds to nearest even;
// NaN stays NaN.
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  explicit bf16(float value) {
    auto u = std::bit_cast<std::uint32_t>(value);
    if (std::isnan(value)) {
      bits = static_cast<std::uint16_t>((u >> 16) | 0x40U);
    } else {
      std::uint32_t rounding = 0x7FFFU + ((u >> 16) & 1U);
      bits = static_cast<std::uint16_t>((u + rounding) >> 16);
    }
  }
  explicit operator float() const { return std::bit_cast<float>(std::uint32_t{bits} << 16); }
};

// The C++ type stored for each dtype, and the type arithmetic is done in.
template <class T>
struct compute_type {
  using type = T;
};
template <>
struct compute_type<bf16> {
  using type = float;
};
template <class T>
using compute_t = typename compute_type<T>::type;

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<std::int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<std::int64_t>() {
  return DType::i64;
}

template <class T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ type of dtype.
template <class F>
decltype(auto) dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32:
      return f(TypeTag<float>{});
    case DType::f64:
      return f(TypeTag<double>{});
    case DType::bf16:
      return f(TypeTag<bf16>{});
    case DType::i32:
      return f(TypeTag<std::int32_t>{});
    case DType::i64:
      break;
  }
  return f(TypeTag<std::int64_t>{});
}

// Like dispatch, for the floating dtypes only; other dtypes are an error naming op.
template <class F>
decltype(auto) dispatch_floating(DType dtype, const char* op, F&& f) {
  LN_CHECK(is_floating(dtype), op, ": expected a floating dtype (f32, f64, bf16), got ",
           name(dtype));
  switch (dtype) {
    case DType::f64:
      return f(TypeTag<double>{});
    case DType::bf16:
      return f(TypeTag<bf16>{});
    default:
      break;
  }
  return f(TypeTag<float>{});
}

}  // namespace longnet
