// GroupNorm (optionally followed by SiLU) of channels-last (N, H, W, C) float32 or bfloat16 maps x, or of
// x + add[n, c] (a per-sample, per-channel float32 addend, folded into the statistics: no pass of its own),
// two passes over each sample's map, OpenMP over the samples; and its backward (two passes over x and dL/dy,
// recomputing x's normalized value and SiLU from the saved per-group mean and 1/std).
//   1. per channel, the sum and the sum of squares of d = x - x[first pixel] (float within blocks of 32
//      pixels, then float64; the shift keeps E[d^2] - E[d]^2 free of cancellation when a channel's mean is
//      large against its spread), combined exactly into each group's mean and variance;
//   2. y = (x - x[first pixel]) * scale[c] + shift[c] (scale = gamma * rstd, shift = beta + (x[first pixel] -
//      mean) * scale in float64: x * scale - mean * scale would cancel when |mean| * rstd is large), then SiLU.
// The inner loops run over the C contiguous channels of one pixel (restrict: no buffer overlaps another, so
// they vectorise without alias checks), in AVX-512 and AVX2 clones (float_math.h); bfloat16 outputs are rounded
// by AVX512-BF16's conversion instruction on CPUs that have it (forward).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../group_norm.h"
#include "float_math.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace pyddpm {
namespace {

// Float sums over blocks of kBlockPixels pixels (vectorised over the channels), added into float64 totals.
constexpr int64_t kBlockPixels = 32;

template <typename T>
PYDDPM_VECTOR_CLONES void channel_sums(const T* x, int64_t hw, int64_t c, float* first, float* block_sum,
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

// Pass 2's value of one element (x its input as a float): the one expression of both normalize loops below.
template <bool kSilu>
inline float normalized(float x, float first, float scale, float shift) {
  const float z = (x - first) * scale + shift;
  return kSilu ? silu(z) : z;
}

template <typename T, bool kSilu>
PYDDPM_VECTOR_CLONES void normalize(const T* __restrict x, T* __restrict y, int64_t hw, int64_t c,
                                    const float* __restrict first, const float* __restrict scale,
                                    const float* __restrict shift) {
  for (int64_t p = 0; p < hw; ++p) {
    const T* in = x + p * c;
    T* out = y + p * c;
    for (int64_t k = 0; k < c; ++k) store(out, k, normalized<kSilu>(load(in, k), first[k], scale[k], shift[k]));
  }
}

#if defined(PYDDPM_NATIVE_BF16)
// normalize<uint16_t> on CPUs with AVX512-BF16, sixteen channels a step in intrinsics: rounded by the CPU's
// conversion (faster than store()'s integer rounding; commit 9197e0a), the SiLU float_math.h's silu16 (to 1e-4
// relative, far below bfloat16's half spacing, 2^-9).
template <bool kSilu>
PYDDPM_BF16_TARGET void normalize_native_bf16(const uint16_t* __restrict x, uint16_t* __restrict y, int64_t hw,
                                              int64_t c, const float* __restrict first,
                                              const float* __restrict scale, const float* __restrict shift,
                                              float*) {
  for (int64_t p = 0; p < hw; ++p) {
    const uint16_t* in = x + p * c;
    uint16_t* out = y + p * c;
    for (int64_t k = 0; k < c; k += 16) {
      const __mmask16 lanes = lanes_from(k, c);
      __m512 z = _mm512_fmadd_ps(_mm512_sub_ps(load_bf16x16(lanes, in + k), _mm512_maskz_loadu_ps(lanes, first + k)),
                                 _mm512_maskz_loadu_ps(lanes, scale + k), _mm512_maskz_loadu_ps(lanes, shift + k));
      if constexpr (kSilu) z = silu16(z);
      store_bf16x16(lanes, out + k, z);
    }
  }
}
#endif

template <typename T, bool kSilu>
void normalize_sample(const T* x, T* y, int64_t hw, int64_t c, const float* first, const float* scale,
                      const float* shift, float* buf) {
#if defined(PYDDPM_NATIVE_BF16)
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (cpu_has_avx512_bf16()) return normalize_native_bf16<kSilu>(x, y, hw, c, first, scale, shift, buf);
  }
#endif
  (void)buf;
  normalize<T, kSilu>(x, y, hw, c, first, scale, shift);
}

template <typename T>
void group_norm_sample(const T* x, const float* add, T* y, const float* gamma, const float* beta, int64_t hw,
                       int64_t c, int64_t groups, float eps, bool with_silu, float* mean_out, float* rstd_out,
                       std::vector<double>& sums, std::vector<float>& coefs) {
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
    if (mean_out) {
      mean_out[g] = static_cast<float>(mean);
      rstd_out[g] = static_cast<float>(rstd);
    }
    for (int64_t k = lo; k < hi; ++k) {
      const double s = (gamma ? gamma[k] : 1.0) * rstd;
      scale[k] = static_cast<float>(s);
      shift[k] = static_cast<float>((beta ? beta[k] : 0.0) + (origin(k) - mean) * s);
    }
  }
  if (with_silu)
    normalize_sample<T, true>(x, y, hw, c, first, scale, shift, shift + c);
  else
    normalize_sample<T, false>(x, y, hw, c, first, scale, shift, shift + c);
}

// body(i, sums, work) for each sample i, OpenMP over the samples when built with it: sums (2 * c doubles) and
// work (work_floats floats) are each thread's scratch.
template <typename Body>
void for_each_sample(int64_t batch, int64_t c, int64_t work_floats, int num_threads, Body body) {
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(batch, num_threads > 0 ? num_threads : omp_get_max_threads())));
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> sums(2 * c);
    std::vector<float> work(work_floats);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch; ++i) body(i, sums, work);
  }
#else
  (void)num_threads;
  std::vector<double> sums(2 * c);
  std::vector<float> work(work_floats);
  for (int64_t i = 0; i < batch; ++i) body(i, sums, work);
#endif
}

template <typename T>
void group_norm_all(const T* x, const float* add, T* y, const float* gamma, const float* beta, int64_t batch,
                    int64_t hw, int64_t c, int64_t groups, float eps, bool with_silu, float* mean, float* rstd,
                    int num_threads) {
  for_each_sample(batch, c, 4 * c, num_threads, [&](int64_t i, std::vector<double>& sums,
                                                    std::vector<float>& coefs) {
    group_norm_sample(x + i * hw * c, add ? add + i * c : nullptr, y + i * hw * c, gamma, beta, hw, c, groups, eps,
                      with_silu, mean ? mean + i * groups : nullptr, rstd ? rstd + i * groups : nullptr, sums,
                      coefs);
  });
}

}  // namespace

void group_norm_nhwc_cpu(const void* x, const float* add, void* y, bool bfloat16, const float* gamma,
                         const float* beta, int64_t batch, int64_t hw, int64_t channels, int64_t groups,
                         float eps, bool with_silu, float* mean, float* rstd, int num_threads) {
  if (bfloat16)
    group_norm_all(static_cast<const uint16_t*>(x), add, static_cast<uint16_t*>(y), gamma, beta, batch, hw,
                   channels, groups, eps, with_silu, mean, rstd, num_threads);
  else
    group_norm_all(static_cast<const float*>(x), add, static_cast<float*>(y), gamma, beta, batch, hw,
                   channels, groups, eps, with_silu, mean, rstd, num_threads);
}

namespace {

// dL/dz from dL/dy = dy at z (z itself when there is no SiLU): silu'(z) = s (1 + z (1 - s)), s = sigmoid(z).
template <bool kSilu>
inline float grad_z(float z, float dy) {
  if (!kSilu) return dy;
  const float e = exp_nonpositive(-std::fabs(z));
  const float r = 1.0f / (1.0f + e);
  const float s = z >= 0.0f ? r : e * r;
  return dy * s * (1.0f + z * (1.0f - s));
}

// Pass 1 of the backward: per channel, sum dz and sum dz * xhat.
template <typename T, bool kSilu>
PYDDPM_VECTOR_CLONES void backward_sums(const T* __restrict x, const T* __restrict dy, int64_t hw, int64_t c,
                                        const float* __restrict mean_c, const float* __restrict rstd_c,
                                        const float* __restrict gamma, const float* __restrict beta,
                                        float* __restrict block_dz, float* __restrict block_dzx,
                                        double* __restrict sum_dz, double* __restrict sum_dzx) {
  for (int64_t k = 0; k < c; ++k) sum_dz[k] = sum_dzx[k] = 0.0;
  for (int64_t p0 = 0; p0 < hw; p0 += kBlockPixels) {
    for (int64_t k = 0; k < c; ++k) block_dz[k] = block_dzx[k] = 0.0f;
    const int64_t p1 = std::min(hw, p0 + kBlockPixels);
    for (int64_t p = p0; p < p1; ++p) {
      const T* xr = x + p * c;
      const T* gr = dy + p * c;
      for (int64_t k = 0; k < c; ++k) {
        const float xhat = (load(xr, k) - mean_c[k]) * rstd_c[k];
        const float dz = grad_z<kSilu>(xhat * gamma[k] + beta[k], load(gr, k));
        block_dz[k] += dz;
        block_dzx[k] += dz * xhat;
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      sum_dz[k] += block_dz[k];
      sum_dzx[k] += block_dzx[k];
    }
  }
}

// Pass 2: dx = rstd (gamma dz - a - xhat b), a and b the group means of gamma dz and gamma dz xhat; one element's
// (x and dy its inputs as floats), the one expression of both backward_dx loops.
template <bool kSilu>
inline float input_grad(float x, float dy, float mean, float rstd, float gamma, float beta, float a, float b) {
  const float xhat = (x - mean) * rstd;
  const float dz = grad_z<kSilu>(xhat * gamma + beta, dy);
  return rstd * (gamma * dz - a - xhat * b);
}

template <typename T, bool kSilu>
PYDDPM_VECTOR_CLONES void backward_dx(const T* __restrict x, const T* __restrict dy, T* __restrict dx, int64_t hw,
                                      int64_t c, const float* __restrict mean_c, const float* __restrict rstd_c,
                                      const float* __restrict gamma, const float* __restrict beta,
                                      const float* __restrict a_c, const float* __restrict b_c) {
  for (int64_t p = 0; p < hw; ++p) {
    const T* xr = x + p * c;
    const T* gr = dy + p * c;
    T* out = dx + p * c;
    for (int64_t k = 0; k < c; ++k)
      store(out, k, input_grad<kSilu>(load(xr, k), load(gr, k), mean_c[k], rstd_c[k], gamma[k], beta[k], a_c[k],
                                      b_c[k]));
  }
}

template <typename T>
void backward_sample(const T* x, const T* dy, T* dx, const float* mean, const float* rstd, const float* gamma,
                     const float* beta, int64_t hw, int64_t c, int64_t groups, bool with_silu, float* grad_gamma,
                     float* grad_beta, std::vector<double>& sums, std::vector<float>& work) {
  double* sum_dz = sums.data();
  double* sum_dzx = sum_dz + c;
  float* mean_c = work.data();
  float* rstd_c = mean_c + c;
  float* a_c = rstd_c + c;
  float* b_c = a_c + c;
  const int64_t per_group = c / groups;
  for (int64_t k = 0; k < c; ++k) {
    mean_c[k] = mean[k / per_group];
    rstd_c[k] = rstd[k / per_group];
  }
  if (with_silu)
    backward_sums<T, true>(x, dy, hw, c, mean_c, rstd_c, gamma, beta, a_c, b_c, sum_dz, sum_dzx);
  else
    backward_sums<T, false>(x, dy, hw, c, mean_c, rstd_c, gamma, beta, a_c, b_c, sum_dz, sum_dzx);
  const double count = static_cast<double>(hw * per_group);
  for (int64_t g = 0; g < groups; ++g) {
    double a = 0.0, b = 0.0;
    for (int64_t k = g * per_group; k < (g + 1) * per_group; ++k) {
      a += gamma[k] * sum_dz[k];
      b += gamma[k] * sum_dzx[k];
    }
    for (int64_t k = g * per_group; k < (g + 1) * per_group; ++k) {
      a_c[k] = static_cast<float>(a / count);
      b_c[k] = static_cast<float>(b / count);
    }
  }
  for (int64_t k = 0; k < c; ++k) {
    grad_beta[k] = static_cast<float>(sum_dz[k]);
    grad_gamma[k] = static_cast<float>(sum_dzx[k]);
  }
  if (with_silu)
    backward_dx<T, true>(x, dy, dx, hw, c, mean_c, rstd_c, gamma, beta, a_c, b_c);
  else
    backward_dx<T, false>(x, dy, dx, hw, c, mean_c, rstd_c, gamma, beta, a_c, b_c);
}

template <typename T>
void backward_all(const T* x, const T* dy, T* dx, const float* mean, const float* rstd, const float* gamma,
                  const float* beta, int64_t batch, int64_t hw, int64_t c, int64_t groups, bool with_silu,
                  float* grad_gamma, float* grad_beta, int num_threads) {
  for_each_sample(batch, c, 4 * c, num_threads, [&](int64_t i, std::vector<double>& sums,
                                                    std::vector<float>& work) {
    backward_sample(x + i * hw * c, dy + i * hw * c, dx + i * hw * c, mean + i * groups, rstd + i * groups, gamma,
                    beta, hw, c, groups, with_silu, grad_gamma + i * c, grad_beta + i * c, sums, work);
  });
}

}  // namespace

void group_norm_backward_nhwc_cpu(const void* x, const void* grad_y, void* grad_x, bool bfloat16,
                                  const float* mean, const float* rstd, const float* gamma, const float* beta,
                                  int64_t batch, int64_t hw, int64_t channels, int64_t groups, bool with_silu,
                                  float* grad_gamma, float* grad_beta, int num_threads) {
  if (bfloat16)
    backward_all(static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(grad_y),
                 static_cast<uint16_t*>(grad_x), mean, rstd, gamma, beta, batch, hw, channels, groups, with_silu,
                 grad_gamma, grad_beta, num_threads);
  else
    backward_all(static_cast<const float*>(x), static_cast<const float*>(grad_y), static_cast<float*>(grad_x),
                 mean, rstd, gamma, beta, batch, hw, channels, groups, with_silu, grad_gamma, grad_beta,
                 num_threads);
}

}  // namespace pyddpm
