#include "tensor/random.h"

#include "tensor/distributions.h"

namespace longnet {

std::array<std::uint32_t, 4> philox4x32(std::array<std::uint32_t, 4> c, std::uint64_t key) {
  distributions::Words out = distributions::philox4x32({{c[0], c[1], c[2], c[3]}}, key);
  return {out.w[0], out.w[1], out.w[2], out.w[3]};
}

}  // namespace longnet
