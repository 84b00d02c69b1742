// Philox4x32-10 and the normal transform used for every random number pyddpm draws.
//
// Shared, unchanged, by the CPU kernel, the CUDA kernel (where every function is __host__ __device__)
// and mirrored operation by operation in pyddpm/philox.py (torch) and the numpy sampler in export/.
// All four produce the same bits because every floating-point step below is one IEEE-754 binary32
// operation (+, -, *, sqrt; round to nearest even) on exactly the operands listed, in the order listed:
// no FMA contraction (build with -ffp-contract=off / nvcc --fmad=false), no libm, no fast-math.
//
// SPECIFICATION (normative; "u32" = uint32 arithmetic modulo 2^32, "f32" = binary32 arithmetic)
//
// 1. Counter and key. For a seed s (0 <= s < 2^63), global sample index i (0 <= i < 2^64), step t
//    (0 = x_T, 1..T = the z of the reverse step at t; 0 <= t < 2^32) and element e of that sample
//    (row-major position inside the sample, 0 <= e < 2^34):
//        key     = (k0, k1) = (s & 0xffffffff, s >> 32)
//        counter = (c0, c1, c2, c3) = (e / 4, i & 0xffffffff, i >> 32, t)
//    Element e takes lane e % 4 of the four normals made from philox4x32_10(counter, key).
//    A sample's noise therefore depends only on (s, i, t), never on batch size, device or split.
//
// 2. Philox4x32-10 (Salmon et al. 2011, as in Random123 and cuRAND), u32 arithmetic:
//        M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85
//        repeat 10 times (the key is bumped between rounds, i.e. 9 bumps):
//            (hi0, lo0) = high and low 32 bits of the 64-bit product M0 * c0
//            (hi1, lo1) = high and low 32 bits of the 64-bit product M1 * c2
//            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//            k0 += W0; k1 += W1                                (not after the last round)
//        output (r0, r1, r2, r3) = (c0, c1, c2, c3)
//    Known answers: counter 0, key 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8;
//    counter 243f6a88 85a308d3 13198a2e 03707344, key a4093822 299f31d0
//    -> d16cfe09 94fdcceb 5001e420 24126ea1.
//
// 3. Box-Muller: lanes (0, 1) = normal_pair(r0, r1), lanes (2, 3) = normal_pair(r2, r3), where
//    normal_pair(ra, rb) = (rho * cos, rho * sin) with rho = sqrt(-2 ln u1), u1 = ((ra >> 8) + 1) 2^-24
//    in (0, 1], and cos, sin of the angle 2 pi (rb >> 8) 2^-24, computed exactly as follows:
//
//    ln u1 (exact range reduction on the bits, then a degree-10 polynomial):
//        u1   = f32(int((ra >> 8) + 1)) * 2^-24                 (exact)
//        bits = the binary32 bit pattern of u1 (u32)
//        big  = (bits & 0x7fffff) > 0x3504f3                     (mantissa above sqrt(2)'s)
//        f    = binary32 with bits (bits & 0x7fffff) | (big ? 0x3f000000 : 0x3f800000)
//                                                                (f in [sqrt(2)/2, sqrt(2)])
//        e    = f32(int(bits >> 23) - (big ? 126 : 127))          (u1 = f 2^e exactly)
//        x = f - 1;  z = x * x
//        p = L7;  p = p * x + L6;  p = p * x + L5;  ...;  p = p * x + L0     (Horner, 7 steps)
//        y = (x * z) * p
//        y = y + e * LN2_LO
//        y = y - 0.5 * z
//        l = x + y
//        l = l + e * LN2_HI                                       (l = ln u1 to < 1 ulp)
//        rho = sqrt(-2 * l)                                       (correctly rounded sqrt)
//
//    cos and sin of 2 pi k 2^-24, k = rb >> 8 (reduced exactly in quarter turns):
//        q = (k + 2^21) >> 22                                     (nearest quarter turn, 0..4)
//        j = k - q * 2^22                                         (signed, in [-2^21, 2^21))
//        x = f32(j) * 2^-22;  z = x * x                           (exact; angle = pi/2 (q + x))
//        s = S3;  s = s * z + S2;  s = s * z + S1;  s = s * z + S0;  s = s * x      (sin(pi x / 2))
//        c = C3;  c = c * z + C2;  c = c * z + C1;  c = c * z + C0;  c = c * z + 1  (cos(pi x / 2))
//        by q & 3:   0: (cos, sin) = ( c,  s)     1: (-s,  c)     2: (-c, -s)     3: ( s, -c)
//        (negation flips the sign bit)
//
//    Constants (binary32; hex-float literals are exact):
//        LN2_HI = 0x1.63p-1 (0.693359375)      LN2_LO = -0x1.bd0106p-13
//        L0..L7 = 0x1.555554p-2, -0x1.000226p-2, 0x1.99a008p-3, -0x1.547244p-3,
//                 0x1.22da1cp-3, -0x1.0d8544p-3, 0x1.055b72p-3, -0x1.38b582p-4
//        S0..S3 = 0x1.921fb6p+0, -0x1.4abbbap-1, 0x1.465ec6p-4, -0x1.2d9bb6p-8
//        C0..C3 = -0x1.3bd3ccp+0, 0x1.03c1dep-2, -0x1.55c5ep-6, 0x1.d9d57ep-11
//    (minimax fits in double, rounded to binary32; checked exhaustively over all 2^24 inputs:
//    ln u1 within 0.86 ulp, rho relative error < 1e-7, |cos|, |sin| absolute error < 9e-8.)
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define PYDDPM_HD __host__ __device__ __forceinline__
#elif defined(_MSC_VER)
#define PYDDPM_HD __forceinline
#else
#define PYDDPM_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDA_ARCH__)
#define PYDDPM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__CUDACC__)
#define PYDDPM_UNROLL _Pragma("GCC unroll 10")
#else
#define PYDDPM_UNROLL
#endif

namespace pyddpm {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;

// The same bits as another type of the same size (float <-> uint32). memcpy is defined behaviour in
// C++ and supported in CUDA device code; both compilers turn it into one register move.
template <typename To, typename From>
PYDDPM_HD To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of one size");
  To to;
  memcpy(&to, &from, sizeof to);
  return to;
}

// One Philox4x32-10 evaluation: r = philox(c, key), all in place in c0..c3.
PYDDPM_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                             uint32_t k1) {
  PYDDPM_UNROLL
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
  }
}

// ln(((ra >> 8) + 1) * 2^-24), as specified above.
PYDDPM_HD float log_uniform(uint32_t ra) {
  const float u1 = static_cast<float>(static_cast<int32_t>((ra >> 8) + 1u)) * 0x1p-24f;
  const uint32_t bits = bit_cast<uint32_t>(u1);
  const bool big = (bits & 0x7fffffu) > 0x3504f3u;
  const float f = bit_cast<float>((bits & 0x7fffffu) | (big ? 0x3f000000u : 0x3f800000u));
  const float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - (big ? 126 : 127));
  const float x = f - 1.0f;
  const float z = x * x;
  float p = -0x1.38b582p-4f;
  p = p * x + 0x1.055b72p-3f;
  p = p * x + -0x1.0d8544p-3f;
  p = p * x + 0x1.22da1cp-3f;
  p = p * x + -0x1.547244p-3f;
  p = p * x + 0x1.99a008p-3f;
  p = p * x + -0x1.000226p-2f;
  p = p * x + 0x1.555554p-2f;
  float y = (x * z) * p;
  y = y + e * -0x1.bd0106p-13f;
  y = y - 0.5f * z;
  float l = x + y;
  l = l + e * 0x1.63p-1f;
  return l;
}

// (sqrt(-2 ln u1) cos(2 pi u2), sqrt(-2 ln u1) sin(2 pi u2)) from two Philox outputs.
PYDDPM_HD void normal_pair(uint32_t ra, uint32_t rb, float& n_cos, float& n_sin) {
  const float rho = sqrtf(-2.0f * log_uniform(ra));
  const int32_t k = static_cast<int32_t>(rb >> 8);
  const int32_t q = (k + 0x200000) >> 22;
  const float x = static_cast<float>(k - (q << 22)) * 0x1p-22f;
  const float z = x * x;
  float s = -0x1.2d9bb6p-8f;
  s = s * z + 0x1.465ec6p-4f;
  s = s * z + -0x1.4abbbap-1f;
  s = s * z + 0x1.921fb6p+0f;
  s = s * x;
  float c = 0x1.d9d57ep-11f;
  c = c * z + -0x1.55c5ep-6f;
  c = c * z + 0x1.03c1dep-2f;
  c = c * z + -0x1.3bd3ccp+0f;
  c = c * z + 1.0f;
  const bool odd = (q & 1) != 0;
  const float cos_mag = odd ? s : c;
  const float sin_mag = odd ? c : s;
  const bool cos_neg = ((q ^ (q >> 1)) & 1) != 0;  // q & 3 in {1, 2}
  const bool sin_neg = (q & 2) != 0;                // q & 3 in {2, 3}
  n_cos = rho * (cos_neg ? -cos_mag : cos_mag);
  n_sin = rho * (sin_neg ? -sin_mag : sin_mag);
}

// The four normals for counter (g, i & 0xffffffff, i >> 32, step) and key (k0, k1).
PYDDPM_HD void normals4(uint32_t g, uint64_t i, uint32_t step, uint32_t k0, uint32_t k1,
                        float& n0, float& n1, float& n2, float& n3) {
  uint32_t c0 = g, c1 = static_cast<uint32_t>(i), c2 = static_cast<uint32_t>(i >> 32), c3 = step;
  philox4x32_10(c0, c1, c2, c3, k0, k1);
  normal_pair(c0, c1, n0, n1);
  normal_pair(c2, c3, n2, n3);
}

}  // namespace philox
}  // namespace pyddpm
