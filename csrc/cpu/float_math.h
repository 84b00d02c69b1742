// Float helpers of the CPU kernels (group_norm_cpu.cpp, log_sigmoid_cpu.cpp, dropout_cpu.cpp), in operations that
// vectorise: float32 / bfloat16 loads and stores (and AVX512-BF16's stores, chosen at run time), exp(x <= 0), the
// elementwise kernels' loop over blocks, and
// PYDDPM_VECTOR_CLONES, the target_clones that give x86-64-v4 (AVX-512 with BW: 16-bit lanes for bfloat16) and
// x86-64-v3 (AVX2 with FMA: "avx2" alone has no fused multiply-add, and the files built with -ffp-contract=fast
// ran their AVX2 copy without one) copies beside the baseline, picked at run time.
// The files that use exp_nonpositive compile with -fno-trapping-math (its float -> int conversion vectorises
// only then).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PYDDPM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYDDPM_VECTOR_CLONES
#endif

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PYDDPM_NATIVE_BF16 1
// Functions for CPUs with AVX512-BF16 (chosen at run time with cpu_has_avx512_bf16)
#define PYDDPM_BF16_TARGET __attribute__((target("arch=x86-64-v4,avx512bf16")))
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

#if defined(PYDDPM_NATIVE_BF16)
inline bool cpu_has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

// The lanes of the sixteen from element i of n (all, kAllLanes, but in a short last step).
constexpr __mmask16 kAllLanes = 0xffffu;
inline __mmask16 lanes_from(int64_t i, int64_t n) {
  return static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
}

// Sixteen bfloat16 values (those in lanes; the others 0) as floats, and sixteen floats rounded to bfloat16 by
// AVX512-BF16's conversion (round to nearest even; float32's subnormals become zero) and stored in lanes.
PYDDPM_BF16_TARGET inline __m512 load_bf16x16(__mmask16 lanes, const uint16_t* x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, x)), 16));
}
PYDDPM_BF16_TARGET inline void store_bf16x16(__mmask16 lanes, uint16_t* y, __m512 v) {
  _mm256_mask_storeu_epi16(y, lanes, (__m256i)_mm512_cvtneps_pbh(v));
}

// x * sigmoid(x) on sixteen lanes, to a relative error below 1e-4 (for results rounded to bfloat16, whose half
// spacing is 2^-9): sigmoid(x) = 1 / (1 + 2^u), u = -x log2(e) = n + f with n = round(u), |f| <= 1/2, 2^f from
// its Taylor polynomial of degree 5 (relative error < 3e-6), 2^n by scalef, and the reciprocal from rcp14
// (relative error < 2^-14). u is clamped to [-128, 128] (sigmoid is 1 or 0 to float32 beyond; the clamp also
// keeps u = +-inf from giving inf - inf, so silu(inf) = inf); a NaN stays a NaN.
PYDDPM_BF16_TARGET inline __m512 silu16(__m512 v) {
  const __m512 u = _mm512_max_ps(
      _mm512_min_ps(_mm512_mul_ps(v, _mm512_set1_ps(-1.44269504088896341f)), _mm512_set1_ps(128.0f)),
      _mm512_set1_ps(-128.0f));
  const __m512 n = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(u, n), _mm512_set1_ps(0.693147180559945309f));  // 2^(u - n) = e^f
  __m512 p = _mm512_set1_ps(1.0f / 120.0f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512 denominator = _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0f));
  return _mm512_mul_ps(v, _mm512_rcp14_ps(denominator));
}
#endif

// A block's values as floats: float32 in place, bfloat16 converted into buf.
inline const float* as_float(const float* src, float*, int64_t) { return src; }
PYDDPM_VECTOR_CLONES inline const float* as_float(const uint16_t* __restrict src, float* __restrict buf,
                                                  int64_t n) {
  for (int64_t i = 0; i < n; ++i) buf[i] = load(src, i);
  return buf;
}

template <typename T>
PYDDPM_VECTOR_CLONES void from_float(const float* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store(dst, i, src[i]);
}

// body(start, count) for the blocks of ``block`` elements of [0, n), OpenMP over the blocks when built with it
// (one thread per 16 blocks, at most num_threads; num_threads <= 0: OpenMP's default).
template <typename Body>
void for_each_block(int64_t n, int64_t block, int num_threads, Body body) {
  const int64_t blocks = (n + block - 1) / block;
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(blocks / 16 + 1, num_threads > 0 ? num_threads : omp_get_max_threads())));
#pragma omp parallel for num_threads(threads) schedule(static)
#else
  (void)num_threads;
#endif
  for (int64_t b = 0; b < blocks; ++b) body(b * block, std::min(block, n - b * block));
}

// y = block(x) over n float32 or bfloat16 values, kBlock at a time: each block as floats (bfloat16 converted into
// a buffer on the stack), block(in, out, count) into a float buffer, then stored (so y may be x), OpenMP over the
// blocks.
template <int64_t kBlock, typename T, typename Block>
void map_blocks(const T* x, T* y, int64_t n, int num_threads, Block block) {
  for_each_block(n, kBlock, num_threads, [&](int64_t start, int64_t count) {
    float buf[kBlock], out[kBlock];
    block(as_float(x + start, buf, count), out, count);
    from_float(out, y + start, count);
  });
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
