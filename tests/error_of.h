// What tests of error paths share: the message an action throws, and substring checks.
#pragma once

#include <string>

#include "tensor/error.h"

namespace longnet::testing {

// The message of the longnet::Error that f throws, or "no error".
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace longnet::testing
