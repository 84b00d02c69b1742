// Float helpers of the CPU kernels (group_norm_cpu.cpp, log_sigmoid_cpu.cpp), in operations that vectorise:
// float32 / bfloat16 loads and stores, exp(x <= 0), and PYDDPM_VECTOR_CLONES, the target_clones that give
// x86-64-v4 (AVX-512 with BW: 16-bit lanes for bfloat16) and AVX2 copies beside the baseline, picked at run time.
// The files that use exp_nonpositive compile with -fno-trapping-math (its float -> int conversion vectorises
// only then).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PYDDPM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define PYDDPM_VECTOR_CLONES
#endif

namespace pyddpm {

inline float load(const float* x, int64_t i) { return x[i]; }
inline float load(const uint16_t* x, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void store(float* y, int64_t i, float v) { y[i] = v; }
inline void store(uint16_t* y, int64_t i, float v) {  // round to nearest even, as torch's .bfloat16()
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;  // a NaN stays a NaN
  y[i] = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// exp(x) for x <= 0 (the SiLU's exp(-|z|)): Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial,
// about 1 ulp, in operations that vectorise; below -87 it is 0 (e^-87 = 1.6e-38).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

// z * sigmoid(z) from e = exp(-|z|) <= 1 (never overflows): sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e)
// below.
inline float silu(float z) {
  const float e = exp_nonpositive(-std::fabs(z));
  const float r = 1.0f / (1.0f + e);
  return z * (z >= 0.0f ? r : e * r);  // a select of computed values: the loop stays branch-free
}

}  // namespace pyddpm
