// GroupNorm (optionally followed by SiLU) of channels-last (N, H, W, C) float32 or bfloat16 maps x, or of
// x + add[n, c] (a per-sample, per-channel float32 addend, folded into the statistics: no pass of its own),
// for inference: two passes over each sample's map, OpenMP over the samples.
//   1. per channel, the sum and the sum of squares of d = x - x[first pixel] (float within blocks of 32
//      pixels, then float64; the shift keeps E[d^2] - E[d]^2 free of cancellation when a channel's mean is
//      large against its spread), combined exactly into each group's mean and variance;
//   2. y = (x - x[first pixel]) * scale[c] + shift[c] (scale = gamma * rstd, shift = beta + (x[first pixel] -
//      mean) * scale in float64: x * scale - mean * scale would cancel when |mean| * rstd is large), then SiLU.
// The inner loops run over the C contiguous channels of one pixel; target_clones gives AVX-512 and AVX2
// copies beside the baseline, picked at run time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../group_norm.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PYDDPM_GN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYDDPM_GN_CLONES
#endif

namespace pyddpm {
namespace {

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

// Float sums over blocks of kBlockPixels pixels (vectorised over the channels), added into float64 totals.
constexpr int64_t kBlockPixels = 32;

template <typename T>
PYDDPM_GN_CLONES void channel_sums(const T* x, int64_t hw, int64_t c, float* first, float* block_sum,
                                   float* block_sq, double* sum, double* sq) {
  for (int64_t k = 0; k < c; ++k) {
    first[k] = load(x, k);
    sum[k] = 0.0;
    sq[k] = 0.0;
  }
  for (int64_t p0 = 0; p0 < hw; p0 += kBlockPixels) {
    for (int64_t k = 0; k < c; ++k) {
      block_sum[k] = 0.0f;
      block_sq[k] = 0.0f;
    }
    const int64_t p1 = std::min(hw, p0 + kBlockPixels);
    for (int64_t p = p0; p < p1; ++p) {
      const T* row = x + p * c;
      for (int64_t k = 0; k < c; ++k) {
        const float d = load(row, k) - first[k];
        block_sum[k] += d;
        block_sq[k] += d * d;
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      sum[k] += block_sum[k];
      sq[k] += block_sq[k];
    }
  }
}

template <typename T, bool kSilu>
PYDDPM_GN_CLONES void normalize(const T* x, T* y, int64_t hw, int64_t c, const float* first,
                                const float* scale, const float* shift) {
  for (int64_t p = 0; p < hw; ++p) {
    const T* in = x + p * c;
    T* out = y + p * c;
    for (int64_t k = 0; k < c; ++k) {
      float z = (load(in, k) - first[k]) * scale[k] + shift[k];
      if (kSilu) z = silu(z);
      store(out, k, z);
    }
  }
}

template <typename T>
void group_norm_sample(const T* x, const float* add, T* y, const float* gamma, const float* beta, int64_t hw,
                       int64_t c, int64_t groups, float eps, bool with_silu, std::vector<double>& sums,
                       std::vector<float>& coefs) {
  double* sum = sums.data();
  double* sq = sum + c;
  float* first = coefs.data();
  float* scale = first + c;
  float* shift = scale + c;
  channel_sums(x, hw, c, first, shift, scale, sum, sq);  // scale and shift serve as the block sums here
  const int64_t per_group = c / groups;
  const double n = static_cast<double>(hw);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t lo = g * per_group, hi = lo + per_group;
    // x + add[k] moves channel k's values, and its mean, by add[k]; its spread stays
    auto origin = [&](int64_t k) { return static_cast<double>(first[k]) + (add ? add[k] : 0.0); };
    double mean = 0.0;
    for (int64_t k = lo; k < hi; ++k) mean += origin(k) + sum[k] / n;
    mean /= static_cast<double>(per_group);
    double m2 = 0.0;  // the group's sum of squared deviations: each channel's own, plus its mean's offset
    for (int64_t k = lo; k < hi; ++k) {
      const double channel_mean = origin(k) + sum[k] / n;
      m2 += std::max(sq[k] - sum[k] * sum[k] / n, 0.0) + n * (channel_mean - mean) * (channel_mean - mean);
    }
    const double rstd = 1.0 / std::sqrt(m2 / (n * static_cast<double>(per_group)) + eps);
    for (int64_t k = lo; k < hi; ++k) {
      const double s = (gamma ? gamma[k] : 1.0) * rstd;
      scale[k] = static_cast<float>(s);
      shift[k] = static_cast<float>((beta ? beta[k] : 0.0) + (origin(k) - mean) * s);
    }
  }
  if (with_silu)
    normalize<T, true>(x, y, hw, c, first, scale, shift);
  else
    normalize<T, false>(x, y, hw, c, first, scale, shift);
}

template <typename T>
void group_norm_all(const T* x, const float* add, T* y, const float* gamma, const float* beta, int64_t batch,
                    int64_t hw, int64_t c, int64_t groups, float eps, bool with_silu, int num_threads) {
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(batch, num_threads > 0 ? num_threads : omp_get_max_threads())));
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> sums(2 * c);
    std::vector<float> coefs(3 * c);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch; ++i)
      group_norm_sample(x + i * hw * c, add ? add + i * c : nullptr, y + i * hw * c, gamma, beta, hw, c, groups,
                        eps, with_silu, sums, coefs);
  }
#else
  (void)num_threads;
  std::vector<double> sums(2 * c);
  std::vector<float> coefs(3 * c);
  for (int64_t i = 0; i < batch; ++i)
    group_norm_sample(x + i * hw * c, add ? add + i * c : nullptr, y + i * hw * c, gamma, beta, hw, c, groups,
                      eps, with_silu, sums, coefs);
#endif
}

}  // namespace

void group_norm_nhwc_cpu(const void* x, const float* add, void* y, bool bfloat16, const float* gamma,
                         const float* beta, int64_t batch, int64_t hw, int64_t channels, int64_t groups,
                         float eps, bool with_silu, int num_threads) {
  if (bfloat16)
    group_norm_all(static_cast<const uint16_t*>(x), add, static_cast<uint16_t*>(y), gamma, beta, batch, hw,
                   channels, groups, eps, with_silu, num_threads);
  else
    group_norm_all(static_cast<const float*>(x), add, static_cast<float*>(y), gamma, beta, batch, hw,
                   channels, groups, eps, with_silu, num_threads);
}

}  // namespace pyddpm
