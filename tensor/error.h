// Errors: every user-facing failure is a longnet::Error whose message says what was
// wrong with which shapes, dtypes or devices, so the caller can act on it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace longnet {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace longnet

// Throws longnet::Error with the streamed parts when cond is false.
#define LN_CHECK(cond, ...)                                           \
  do {                                                                \
    if (!(cond)) throw ::longnet::Error(::longnet::cat(__VA_ARGS__)); \
  } while (0)
