// How each head of dilated attention sees the branches (DESIGN.md section 5): the CPU
// kernels of dilated attention and of its sequence-parallel form walk these plans.
#pragma once

#include <algorithm>
#include <vector>

#include "attention/dilated.h"

namespace longnet::cpu {

// One branch as one head sees it: segment length, rate, the head's offset and the branch's
// index in the config.
struct Item {
  std::int64_t w;
  std::int64_t r;
  std::int64_t j;
  std::int64_t branch;
};

struct HeadPlan {
  std::vector<Item> items;
  double out_scale = 1;
};

// Paper mode: every head sees every branch with offset h mod r. Grouped mode: m contiguous
// groups, the first heads % m of them one head larger; group g sees branch g with offset
// g mod r_g, and its output is scaled by 1/m.
std::vector<HeadPlan> plan_heads(const DilatedAttentionConfig& c, std::int64_t heads);

// How many of the positions first, first + r, ... lie before end.
inline std::int64_t count_selected(std::int64_t first, std::int64_t end, std::int64_t r) {
  return first < end ? (end - first + r - 1) / r : 0;
}

// Keys a compact query row may see: all nk of its segment, or with the causal mask those up
// to its own position (compact rows of queries and keys sit at the same positions).
inline std::int64_t visible(std::int64_t row, std::int64_t nk, bool causal) {
  return causal ? std::min(row + 1, nk) : nk;
}

}  // namespace longnet::cpu
