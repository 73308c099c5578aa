// How four Philox words become four values of each distribution. The same code runs on
// the CPU (tensor/creation.cpp) and in device kernels (tensor/cuda/random.cu), so a
// Generator state gives the same bits on both: the logarithm, sine and cosine are our own
// (ports of fdlibm, accurate to about 1 ulp) rather than libm's or CUDA's, and every
// double operation is spelled out so that no compiler fuses a multiply and an add
// differently on the two sides. Needs no CUDA header.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LN_HOST_DEVICE __host__ __device__
#else
#define LN_HOST_DEVICE
#endif

namespace longnet::distributions {

struct Words {
  std::uint32_t w[4];
};

// One Philox4x32-10 block: four random words from a 128-bit counter and a 64-bit key.
LN_HOST_DEVICE inline Words philox4x32(Words c, std::uint64_t key) {
  constexpr std::uint32_t kMul0 = 0xD2511F53U;
  constexpr std::uint32_t kMul1 = 0xCD9E8D57U;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9U;
  constexpr std::uint32_t kWeyl1 = 0xBB67AE85U;
  auto k0 = static_cast<std::uint32_t>(key);
  auto k1 = static_cast<std::uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    std::uint64_t p0 = std::uint64_t{kMul0} * c.w[0];
    std::uint64_t p1 = std::uint64_t{kMul1} * c.w[2];
    c = {{static_cast<std::uint32_t>(p1 >> 32) ^ c.w[1] ^ k0, static_cast<std::uint32_t>(p1),
          static_cast<std::uint32_t>(p0 >> 32) ^ c.w[3] ^ k1, static_cast<std::uint32_t>(p0)}};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return c;
}

// The words of counter number `counter` under key seed: how tensors map elements to
// counters (element i uses word i % 4 of counter first + i / 4).
LN_HOST_DEVICE inline Words philox_words(std::uint64_t counter, std::uint64_t seed) {
  return philox4x32(
      {{static_cast<std::uint32_t>(counter), static_cast<std::uint32_t>(counter >> 32), 0U, 0U}},
      seed);
}

// Correctly rounded double operations, never contracted into fused multiply-adds (nvcc
// and GCC both fuse a * b + c by default, each where it sees fit).
namespace exact {
LN_HOST_DEVICE inline double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
LN_HOST_DEVICE inline double sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
LN_HOST_DEVICE inline double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  double product = a * b;
  // GCC fuses a product into a following add in C++ (-ffp-contract=fast is its default
  // outside ISO C): an empty asm that "changes" the product hides it from the optimiser.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(product));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(product));
#else
  volatile double kept = product;
  product = kept;
#endif
  return product;
#endif
}
LN_HOST_DEVICE inline double div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
LN_HOST_DEVICE inline double fma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
LN_HOST_DEVICE inline double sqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
LN_HOST_DEVICE inline std::uint64_t bits(double a) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(a));
#else
  std::uint64_t u;
  std::memcpy(&u, &a, sizeof u);
  return u;
#endif
}
LN_HOST_DEVICE inline double from_bits(std::uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double a;
  std::memcpy(&a, &u, sizeof a);
  return a;
#endif
}
}  // namespace exact

// Natural logarithm of a positive, finite, normal x: fdlibm's e_log.c. x is written as
// 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), and log(1 + f) = 2s + s R(s^2) with
// s = f / (2 + f) and R a minimax polynomial.
LN_HOST_DEVICE inline double log_positive(double x) {
  using namespace exact;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kLg1 = 6.666666666666735130e-01;
  constexpr double kLg2 = 3.999999999940941908e-01;
  constexpr double kLg3 = 2.857142874366239149e-01;
  constexpr double kLg4 = 2.222219843214978396e-01;
  constexpr double kLg5 = 1.818357216161805012e-01;
  constexpr double kLg6 = 1.531383769920937332e-01;
  constexpr double kLg7 = 1.479819860511658591e-01;
  std::uint64_t u = bits(x);
  auto hx = static_cast<std::int32_t>(u >> 32);
  auto lx = static_cast<std::uint32_t>(u);
  std::int32_t k = (hx >> 20) - 1023;
  hx &= 0x000fffff;
  std::int32_t i = (hx + 0x95f64) & 0x100000;
  // Normalise x or x / 2 into [sqrt(2)/2, sqrt(2)).
  x = from_bits(
      (static_cast<std::uint64_t>(static_cast<std::uint32_t>(hx | (i ^ 0x3ff00000))) << 32) | lx);
  k += i >> 20;
  double f = sub(x, 1.0);
  auto dk = static_cast<double>(k);
  if ((0x000fffff & (2 + hx)) < 3) {  // |f| < 2^-20
    if (f == 0.0) return k == 0 ? 0.0 : add(mul(dk, kLn2Hi), mul(dk, kLn2Lo));
    double r = mul(mul(f, f), sub(0.5, mul(0.33333333333333333, f)));
    if (k == 0) return sub(f, r);
    return sub(mul(dk, kLn2Hi), sub(sub(r, mul(dk, kLn2Lo)), f));
  }
  double s = div(f, add(2.0, f));
  double z = mul(s, s);
  i = hx - 0x6147a;
  double w = mul(z, z);
  std::int32_t j = 0x6b851 - hx;
  double t1 = mul(w, add(kLg2, mul(w, add(kLg4, mul(w, kLg6)))));
  double t2 = mul(z, add(kLg1, mul(w, add(kLg3, mul(w, add(kLg5, mul(w, kLg7)))))));
  i |= j;
  double r = add(t2, t1);
  if (i > 0) {
    double hfsq = mul(mul(0.5, f), f);
    if (k == 0) return sub(f, sub(hfsq, mul(s, add(hfsq, r))));
    return sub(mul(dk, kLn2Hi), sub(sub(hfsq, add(mul(s, add(hfsq, r)), mul(dk, kLn2Lo))), f));
  }
  if (k == 0) return sub(f, mul(s, sub(f, r)));
  return sub(mul(dk, kLn2Hi), sub(sub(mul(s, sub(f, r)), mul(dk, kLn2Lo)), f));
}

// sin(x + y) and cos(x + y) for |x| <= pi/4, y a tail below half an ulp of x: fdlibm's
// k_sin.c and k_cos.c (FreeBSD versions).
LN_HOST_DEVICE inline double kernel_sin(double x, double y) {
  using namespace exact;
  constexpr double kS1 = -1.66666666666666324348e-01;
  constexpr double kS2 = 8.33333333332248946124e-03;
  constexpr double kS3 = -1.98412698298579493134e-04;
  constexpr double kS4 = 2.75573137070700676789e-06;
  constexpr double kS5 = -2.50507602534068634195e-08;
  constexpr double kS6 = 1.58969099521155010221e-10;
  double z = mul(x, x);
  double w = mul(z, z);
  double r = add(add(kS2, mul(z, add(kS3, mul(z, kS4)))), mul(mul(z, w), add(kS5, mul(z, kS6))));
  double v = mul(z, x);
  return sub(x, sub(sub(mul(z, sub(mul(0.5, y), mul(v, r))), y), mul(v, kS1)));
}

LN_HOST_DEVICE inline double kernel_cos(double x, double y) {
  using namespace exact;
  constexpr double kC1 = 4.16666666666666019037e-02;
  constexpr double kC2 = -1.38888888888741095749e-03;
  constexpr double kC3 = 2.48015872894767294178e-05;
  constexpr double kC4 = -2.75573143513906633035e-07;
  constexpr double kC5 = 2.08757232129817482790e-09;
  constexpr double kC6 = -1.13596475577881948265e-11;
  double z = mul(x, x);
  double w = mul(z, z);
  double r = add(mul(z, add(kC1, mul(z, add(kC2, mul(z, kC3))))),
                 mul(mul(w, w), add(kC4, mul(z, add(kC5, mul(z, kC6))))));
  double hz = mul(0.5, z);
  w = sub(1.0, hz);
  return add(w, add(sub(sub(1.0, w), hz), sub(mul(z, r), mul(x, y))));
}

// sin and cos of 2 pi m / 2^32 for 0 <= m <= 2^32. The reduction to a quarter turn is
// exact in integers; what is left, at most an eighth of a turn, becomes radians as a
// double-double (x, y).
LN_HOST_DEVICE inline void sincos_turn(std::uint64_t m, double* sin_out, double* cos_out) {
  using namespace exact;
  constexpr double kTwoPiHi = 6.28318530717958623200e+00;  // 2 pi rounded to double
  constexpr double kTwoPiLo = 2.44929359829470635445e-16;  // 2 pi - kTwoPiHi
  constexpr double kScale = 0x1p-32;
  std::uint64_t quarter = (m + (std::uint64_t{1} << 29)) >> 30;  // nearest quarter turn
  auto rest = static_cast<double>(static_cast<std::int64_t>(m) -
                                  static_cast<std::int64_t>(quarter << 30));  // |rest| <= 2^29
  double hi = kTwoPiHi * kScale;  // exact: a power-of-two scaling
  double x = mul(rest, hi);
  double y = add(fma(rest, hi, -x), mul(rest, kTwoPiLo * kScale));
  double s = kernel_sin(x, y);
  double c = kernel_cos(x, y);
  switch (quarter & 3U) {
    case 0:
      *sin_out = s;
      *cos_out = c;
      break;
    case 1:
      *sin_out = c;
      *cos_out = -s;
      break;
    case 2:
      *sin_out = -s;
      *cos_out = -c;
      break;
    default:
      *sin_out = -c;
      *cos_out = s;
      break;
  }
}

// Standard normal pairs by Box-Muller: radius from word 0 (2), angle from word 1 (3).
struct Normal {
  LN_HOST_DEVICE void operator()(const Words& words, double* out) const {
    using namespace exact;
    for (int pair = 0; pair < 2; ++pair) {
      // (0, 1]: never 0, so the logarithm stays finite.
      double unit = mul(static_cast<double>(words.w[2 * pair]) + 1.0, 0x1p-32);  // exact
      double radius = sqrt(mul(-2.0, log_positive(unit)));
      double s = 0;
      double c = 0;
      sincos_turn(std::uint64_t{words.w[2 * pair + 1]} + 1, &s, &c);
      out[2 * pair] = mul(radius, c);
      out[2 * pair + 1] = mul(radius, s);
    }
  }
};

// Uniform on [low, high): 24 random bits keep every value strictly below high after
// rounding to f32.
struct Uniform {
  double low;
  double high;
  LN_HOST_DEVICE void operator()(const Words& words, double* out) const {
    using namespace exact;
    for (int j = 0; j < 4; ++j) {
      double unit = mul(static_cast<double>(words.w[j] >> 8), 0x1p-24);  // exact
      out[j] = add(low, mul(sub(high, low), unit));
    }
  }
};

// Integers uniform on [low, low + range), range <= 2^32, by multiply-shift.
struct Integer {
  std::int64_t low;
  std::uint64_t range;
  LN_HOST_DEVICE void operator()(const Words& words, double* out) const {
    for (int j = 0; j < 4; ++j) {
      out[j] = static_cast<double>(low + static_cast<std::int64_t>((words.w[j] * range) >> 32));
    }
  }
};

}  // namespace longnet::distributions
