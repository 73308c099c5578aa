// Typed, checked access to the keys of one JSON object of a configuration file. Every error
// names where the object sits (e.g. "config.json: optim") and the key, and says what would
// be valid.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace longnet {

class JsonReader {
 public:
  // j must be a JSON object and must outlive the reader.
  JsonReader(const nlohmann::json& j, std::string where);

  bool has(const std::string& key) const { return j_.contains(key); }
  const std::string& where() const { return where_; }

  // Each returns fallback when the key is absent (an error when required) and is an error
  // when the value has the wrong type.
  std::string text(const std::string& key, const std::string& fallback,
                   bool required = false) const;
  bool flag(const std::string& key, bool fallback) const;
  double number(const std::string& key, double fallback, bool required = false) const;
  std::int64_t integer(const std::string& key, std::int64_t fallback, bool required = false) const;
  // A required non-empty list of integers.
  std::vector<std::int64_t> integers(const std::string& key) const;
  // A required list of exactly count numbers.
  std::vector<double> numbers(const std::string& key, std::size_t count,
                              std::vector<double> fallback) const;
  // The value of key, which must be an object; an empty object when absent.
  const nlohmann::json& object(const std::string& key) const;

  // A text value that must be one of choices.
  std::string choice(const std::string& key, const std::string& fallback,
                     const std::vector<std::string>& choices) const;

  // Any key outside allowed is an error listing the allowed keys.
  void only(const std::set<std::string>& allowed) const;

 private:
  bool present(const std::string& key, bool required) const;
  const nlohmann::json& j_;
  std::string where_;
};

}  // namespace longnet
