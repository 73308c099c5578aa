#include "tests/golden_fixture.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "tensor/copy.h"
#include "tensor/creation.h"

namespace longnet::fixtures {

using nlohmann::json;

json load_fixture(const std::string& name) {
  const char* root = std::getenv("LONGNET_SOURCE_ROOT");
  if (root == nullptr || *root == '\0') {
    throw std::runtime_error(
        "LONGNET_SOURCE_ROOT is not set: run through `meson test`, or set it to the source "
        "tree so that $LONGNET_SOURCE_ROOT/tests/golden/" +
        name + ".json exists");
  }
  auto path = std::filesystem::path(root) / "tests" / "golden" / (name + ".json");
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot open golden fixture " + path.string() +
                             "; regenerate it with /usr/bin/python3 tests/golden/make_golden.py");
  }
  return json::parse(in);
}

Golden golden(const json& doc, const std::string& key) {
  if (!doc.contains(key)) throw std::runtime_error("golden fixture has no tensor \"" + key + "\"");
  const json& t = doc.at(key);
  return {t.at("shape").get<Shape>(), t.at("data").get<std::vector<double>>()};
}

Tensor input(const json& doc, const std::string& key, DType dtype) {
  Golden g = golden(doc, key);
  return to(from_data<double>(g.data, g.shape), dtype);
}

Tensor index_input(const json& doc, const std::string& key) {
  const json& t = doc.at(key);
  return from_data<std::int64_t>(t.at("data").get<std::vector<std::int64_t>>(),
                                 t.at("shape").get<Shape>());
}

void check_close(const Tensor& actual, const json& doc, const std::string& key, Tolerance tol) {
  // A std::string: doctest would print a bare const char* as a pointer.
  const std::string where = "\"" + key + "\" in " + name(tol.dtype);
  INFO("golden tensor ", where);
  Golden expected = golden(doc, key);
  REQUIRE_MESSAGE(actual.defined(), "no value computed");
  CHECK(actual.dtype() == tol.dtype);
  REQUIRE_MESSAGE(actual.shape() == expected.shape, "shape ", str(actual.shape()), ", PyTorch has ",
                  str(expected.shape));
  std::vector<double> got = actual.to_vector<double>();
  REQUIRE(got.size() == expected.data.size());

  std::ostringstream report;
  report.precision(17);
  int mismatches = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double want = expected.data[i];
    double err = std::abs(got[i] - want);
    if (!(err <= tol.atol + tol.rtol * std::abs(want))) {  // also catches NaN
      if (++mismatches <= 8) {
        report << "\n  [" << i << "] got " << got[i] << ", PyTorch " << want << " (abs err " << err
               << ")";
      }
    }
  }
  CHECK_MESSAGE(mismatches == 0, mismatches, " of ", got.size(), " elements of ", where,
                " differ from PyTorch beyond rtol ", tol.rtol, ", atol ", tol.atol, report.str());
}

}  // namespace longnet::fixtures
