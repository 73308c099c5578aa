#include "attention/cpu/head_plan.h"

namespace longnet::cpu {

std::vector<HeadPlan> plan_heads(const DilatedAttentionConfig& c, std::int64_t heads) {
  auto m = static_cast<std::int64_t>(c.segment_lengths.size());
  std::vector<HeadPlan> plans(static_cast<std::size_t>(heads));
  if (c.mode == DilatedMode::paper) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t b = 0; b < m; ++b) {
        std::int64_t r = c.dilation_rates[b];
        plans[h].items.push_back({c.segment_lengths[b], r, h % r, b});
      }
    }
    return plans;
  }
  std::int64_t head = 0;
  for (std::int64_t g = 0; g < m; ++g) {
    std::int64_t size = heads / m + (g < heads % m ? 1 : 0);
    std::int64_t r = c.dilation_rates[g];
    for (std::int64_t i = 0; i < size; ++i, ++head) {
      plans[head].items.push_back({c.segment_lengths[g], r, g % r, g});
      plans[head].out_scale = 1.0 / static_cast<double>(m);
    }
  }
  return plans;
}

}  // namespace longnet::cpu
