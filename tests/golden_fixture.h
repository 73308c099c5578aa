// Golden fixtures: tensors PyTorch computed in float64, stored by
// tests/golden/make_golden.py as {"shape": [...], "data": [...]} under
// $LONGNET_SOURCE_ROOT/tests/golden/<name>.json, and the elementwise check against them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace longnet::fixtures {

// |actual - expected| <= atol + rtol * |expected|, elementwise. The f32 atol covers
// cancellation: an output near 0 summed from O(1) f32 products keeps their ~1e-6 absolute
// error (measured up to 1.3e-6 on y of matmul_chain; f64 errors stay below 1e-14).
struct Tolerance {
  DType dtype;
  double rtol;
  double atol;
};
inline constexpr Tolerance kF64{DType::f64, 1e-10, 1e-12};
inline constexpr Tolerance kF32{DType::f32, 1e-5, 1e-5};

// The fixture's JSON document; a clear error when the file or the variable is missing.
nlohmann::json load_fixture(const std::string& name);

struct Golden {
  Shape shape;
  std::vector<double> data;
};
Golden golden(const nlohmann::json& doc, const std::string& key);

// A fixture tensor as a tensor of dtype (values cast from the stored f64).
Tensor input(const nlohmann::json& doc, const std::string& key, DType dtype);
// An integer fixture tensor as i64.
Tensor index_input(const nlohmann::json& doc, const std::string& key);

// Checks every element of actual against the fixture's tensor key; one CHECK per tensor,
// whose message lists the first mismatches.
void check_close(const Tensor& actual, const nlohmann::json& doc, const std::string& key,
                 Tolerance tol);

}  // namespace longnet::fixtures
