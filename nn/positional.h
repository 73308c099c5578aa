// Rotary position embedding (RoPE) and XPOS, applied to queries and keys.
//
// x is (B, N, H, D) with D even, floating, on the cpu or a GPU; the result has x's shape and dtype.
// Row n of x sits at position pos = position_offset + n (position_offset >= 0, e.g. the
// number of cached tokens when decoding). Pair i in [0, D/2) is (x[2i], x[2i+1]):
//
//   angle(pos, i) = pos * theta^(-2i / D)
//   rope:  y[2i]   = x[2i] cos(angle) - x[2i+1] sin(angle)
//          y[2i+1] = x[2i] sin(angle) + x[2i+1] cos(angle)
//   xpos:  y = s(pos, i) * rope(x),  s(pos, i) = ((2i + 0.4 D) / (1.4 D))^(pos / scale_base)
//          for queries (downscale = false), 1 / s(pos, i) for keys (downscale = true),
//
// with theta = 10000 for XPOS, as in torchscale's XPOS (head_dim = D). Then q_m . k_n
// depends on m and n only through m - n; with XPOS, pair i of it is further scaled by
// ((2i + 0.4 D) / (1.4 D))^((m - n) / scale_base). torchscale measures the
// XPOS exponent from the middle of the sequence, pos - ceil((N + offset) / 2); that shifts
// q's and k's scales by reciprocal factors, so attention scores are the same, and the
// uncentred form here keeps positions consistent across calls (decoding, sequence
// parallelism). s(pos, i) < 1, so XPOS under/overflows f32 beyond a few tens of thousands
// of positions; RoPE has no such limit.
//
// Angles and scales are computed in f64 and applied in f32 (f64 for f64 x). Backward
// applies the transposed rotation with the same scale; nothing is saved but the arguments.
#pragma once

#include "autograd/variable.h"

namespace longnet {

Variable apply_rope(const Variable& x, std::int64_t position_offset, double theta = 10000);

Variable apply_xpos(const Variable& x, std::int64_t position_offset, bool downscale,
                    double scale_base = 512);

}  // namespace longnet
