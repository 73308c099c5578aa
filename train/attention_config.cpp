#include "train/attention_config.h"

#include "train/json_reader.h"

namespace longnet {

using nlohmann::json;

AttentionConfig parse_attention_config(const json& j, const std::string& where,
                                       const std::set<std::string>& extra_keys) {
  JsonReader r(j, where);
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
