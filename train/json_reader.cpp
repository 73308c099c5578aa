#include "train/json_reader.h"

#include "tensor/error.h"

namespace longnet {

using nlohmann::json;

JsonReader::JsonReader(const json& j, std::string where) : j_(j), where_(std::move(where)) {
  LN_CHECK(j_.is_object(), where_, ": expected a JSON object, got ", j_.type_name());
}

bool JsonReader::present(const std::string& key, bool required) const {
  LN_CHECK(!required || j_.contains(key), where_, ": missing key \"", key, "\"");
  return j_.contains(key);
}

std::string JsonReader::text(const std::string& key, const std::string& fallback,
                             bool required) const {
  if (!present(key, required)) return fallback;
  LN_CHECK(j_[key].is_string(), where_, ": \"", key, "\" must be a string, got ", j_[key].dump());
  return j_[key].get<std::string>();
}

bool JsonReader::flag(const std::string& key, bool fallback) const {
  if (!present(key, false)) return fallback;
  LN_CHECK(j_[key].is_boolean(), where_, ": \"", key, "\" must be true or false, got ",
           j_[key].dump());
  return j_[key].get<bool>();
}

double JsonReader::number(const std::string& key, double fallback, bool required) const {
  if (!present(key, required)) return fallback;
  LN_CHECK(j_[key].is_number(), where_, ": \"", key, "\" must be a number, got ", j_[key].dump());
  return j_[key].get<double>();
}

std::int64_t JsonReader::integer(const std::string& key, std::int64_t fallback,
                                 bool required) const {
  if (!present(key, required)) return fallback;
  LN_CHECK(j_[key].is_number_integer(), where_, ": \"", key, "\" must be an integer, got ",
           j_[key].dump());
  return j_[key].get<std::int64_t>();
}

std::vector<std::int64_t> JsonReader::integers(const std::string& key) const {
  present(key, true);
  const json& list = j_[key];
  LN_CHECK(list.is_array() && !list.empty(), where_, ": \"", key,
           "\" must be a non-empty list of integers, got ", list.dump());
  std::vector<std::int64_t> out;
  for (const auto& x : list) {
    LN_CHECK(x.is_number_integer(), where_, ": \"", key, "\" must hold integers, got ", x.dump());
    out.push_back(x.get<std::int64_t>());
  }
  return out;
}

std::vector<double> JsonReader::numbers(const std::string& key, std::size_t count,
                                        std::vector<double> fallback) const {
  if (!present(key, false)) return fallback;
  const json& list = j_[key];
  LN_CHECK(list.is_array() && list.size() == count, where_, ": \"", key, "\" must be a list of ",
           count, " numbers, got ", list.dump());
  std::vector<double> out;
  for (const auto& x : list) {
    LN_CHECK(x.is_number(), where_, ": \"", key, "\" must hold numbers, got ", x.dump());
    out.push_back(x.get<double>());
  }
  return out;
}

const json& JsonReader::object(const std::string& key) const {
  static const json empty = json::object();
  if (!present(key, false)) return empty;
  LN_CHECK(j_[key].is_object(), where_, ": \"", key, "\" must be an object, got ",
           j_[key].type_name());
  return j_[key];
}

std::string JsonReader::choice(const std::string& key, const std::string& fallback,
                               const std::vector<std::string>& choices) const {
  std::string value = text(key, fallback);
  for (const auto& c : choices) {
    if (c == value) return value;
  }
  std::string valid;
  for (const auto& c : choices) valid += (valid.empty() ? "" : ", ") + c;
  throw Error(cat(where_, ": \"", key, "\" is \"", value, "\" (valid: ", valid, ")"));
}

void JsonReader::only(const std::set<std::string>& allowed) const {
  for (const auto& [key, value] : j_.items()) {
    if (allowed.count(key)) continue;
    std::string valid;
    for (const auto& a : allowed) valid += (valid.empty() ? "" : ", ") + a;
    throw Error(cat(where_, ": unknown key \"", key, "\" (valid here: ", valid, ")"));
  }
}

}  // namespace longnet
