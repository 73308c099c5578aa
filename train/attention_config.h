// Attention configurations from JSON: the "attention" objects of the interop tool's
// attn.json (and, later, of training configs). Every key is checked: an unknown key, a
// wrong type or an impossible value is an error naming the key and what would be valid.
//
//   {"kind": "dense" | "dilated" | "block_sparse" | "auto",
//    "causal": bool = false, "scale": number (default 1/sqrt(head_dim)),
//    dilated and auto: "segment_lengths": [int], "dilation_rates": [int],
//                      "mode": "paper" | "grouped" = "paper",
//    block_sparse: "pattern": "local_window" | "dilated" | "global_local" |
//                  "content_adaptive" = "local_window", "block_size": int = 64,
//                  "density": number = 0.25, "global_blocks": int = 1}
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "attention/factory.h"

namespace longnet {

// where names the object in messages, e.g. "attn.json".
// extra_keys are keys the caller handles itself and that are therefore not unknown.
AttentionConfig parse_attention_config(const nlohmann::json& j, const std::string& where,
                                       const std::set<std::string>& extra_keys = {});

}  // namespace longnet
