#include "train/attention_config.h"

namespace longnet {

namespace {

using nlohmann::json;

// Typed access to one object's keys, each error naming where and the key.
class Reader {
 public:
  Reader(const json& j, std::string where) : j_(j), where_(std::move(where)) {
    LN_CHECK(j_.is_object(), where_, ": expected a JSON object, got ", j_.type_name());
  }

  bool has(const std::string& key) const { return j_.contains(key); }

  std::string text(const std::string& key, const std::string& fallback,
                   bool required = false) const {
    if (!present(key, required)) return fallback;
    LN_CHECK(j_[key].is_string(), where_, ": \"", key, "\" must be a string, got ", j_[key].dump());
    return j_[key].get<std::string>();
  }

  bool flag(const std::string& key, bool fallback) const {
    if (!present(key, false)) return fallback;
    LN_CHECK(j_[key].is_boolean(), where_, ": \"", key, "\" must be true or false, got ",
             j_[key].dump());
    return j_[key].get<bool>();
  }

  double number(const std::string& key, double fallback) const {
    if (!present(key, false)) return fallback;
    LN_CHECK(j_[key].is_number(), where_, ": \"", key, "\" must be a number, got ", j_[key].dump());
    return j_[key].get<double>();
  }

  std::int64_t integer(const std::string& key, std::int64_t fallback) const {
    if (!present(key, false)) return fallback;
    LN_CHECK(j_[key].is_number_integer(), where_, ": \"", key, "\" must be an integer, got ",
             j_[key].dump());
    return j_[key].get<std::int64_t>();
  }

  std::vector<std::int64_t> integers(const std::string& key) const {
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

  // Any key outside allowed is an error listing the allowed keys.
  void only(const std::set<std::string>& allowed) const {
    for (const auto& [key, value] : j_.items()) {
      if (allowed.count(key)) continue;
      std::string valid;
      for (const auto& a : allowed) valid += (valid.empty() ? "" : ", ") + a;
      throw Error(cat(where_, ": unknown key \"", key, "\" (valid here: ", valid, ")"));
    }
  }

  const std::string& where() const { return where_; }

 private:
  bool present(const std::string& key, bool required) const {
    LN_CHECK(!required || j_.contains(key), where_, ": missing key \"", key, "\"");
    return j_.contains(key);
  }
  const json& j_;
  std::string where_;
};

}  // namespace

AttentionConfig parse_attention_config(const json& j, const std::string& where,
                                       const std::set<std::string>& extra_keys) {
  Reader r(j, where);
  std::string kind = r.text("kind", "", true);
  std::set<std::string> keys = extra_keys;
  keys.insert({"kind", "causal", "scale"});
  if (kind == "dilated" || kind == "auto") {
    keys.insert({"segment_lengths", "dilation_rates", "mode"});
  } else if (kind == "block_sparse") {
    keys.insert({"pattern", "block_size", "density", "global_blocks"});
  } else {
    LN_CHECK(kind == "dense", where, ": \"kind\" is \"", kind,
             "\" (valid: dense, dilated, block_sparse, auto)");
  }
  r.only(keys);  // a misspelt key is reported as such, before anything it would have set
  bool causal = r.flag("causal", false);
  std::optional<double> scale;
  if (r.has("scale")) scale = r.number("scale", 0);

  AttentionConfig config;
  if (kind == "dense") {
    config = DenseAttentionConfig{causal, scale};
  } else if (kind == "block_sparse") {
    config = BlockSparseConfig{parse_block_pattern(r.text("pattern", "local_window")),
                               r.integer("block_size", 64),
                               r.number("density", 0.25),
                               r.integer("global_blocks", 1),
                               causal,
                               scale};
  } else {
    std::string mode = r.text("mode", "paper");
    LN_CHECK(mode == "paper" || mode == "grouped", where, ": \"mode\" is \"", mode,
             "\" (valid: paper, grouped)");
    DilatedAttentionConfig d{r.integers("segment_lengths"), r.integers("dilation_rates"),
                             mode == "paper" ? DilatedMode::paper : DilatedMode::grouped, causal,
                             scale};
    if (kind == "auto") {
      config = AutoAttentionConfig{d};
    } else {
      config = d;
    }
  }
  try {
    validate(config);
  } catch (const Error& e) {
    throw Error(cat(where, ": ", e.what()));
  }
  return config;
}

}  // namespace longnet
