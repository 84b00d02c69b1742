// The fused reverse step of every sampler on raw pointers (no libtorch): the per-element step that the CPU
// and CUDA kernels both compute (step_element), and the declarations shared by the kernels, the pybind11
// binding and any C++ program that links the kernels.
//
// Algorithm 2, DDIM, DPM-Solver++ (2M, 3M, SDE 2M) and UniPC are all affine per step in x, eps_hat, the
// data prediction d = p x + q eps_hat and K <= 3 history buffers H_k (earlier data predictions). Per element,
// in binary32 and in this order (each line one rounding; no FMA contraction):
//     v = a * x + b * eps
//     d = p * x + q * eps;  if clip: d = clamp(d, lo, hi)           (clamp keeps NaN)
//     if clip or K > 0:  v = v + c * d
//     for k < K:         v = v + h_k * H_k
//     if sigma != 0:     v = v + sigma * z
//     if K > 0:          H <- (d, H_0, ..., H_{K-2})                  (the history shifts, in place)
// With K = 0 this is the DDPM/DDIM step x_{t-1} = a x_t + b eps [+ c clamp(p x_t + q eps)] + sigma z.
// The history is float32 whatever x's storage type (differences of data predictions need the bits).
// z comes from `noise` when it is not null, otherwise from Philox (philox.h) for global sample index
// sample_offset + (element / numel_per_sample) at `step`. The kernels trust their caller (pyddpm/ops.py
// checks the tensors): every array holds batch * numel_per_sample contiguous elements, `out` may equal
// `x` (in place) but must not partially overlap any input.
#pragma once

#include <stdint.h>

#include "philox.h"  // PYDDPM_HD

namespace pyddpm {

constexpr int kMaxHistory = 3;  // history buffers a step reads and shifts (UniPC of order 3)
constexpr int kRowWidth = 11;   // a schedule row: a, b, sigma, c, p, q, lo, hi, h_0, h_1, h_2

// Coefficients of one reverse step (binary32, as the kernels compute).
struct StepCoef {
  float a = 0.f, b = 0.f, sigma = 0.f;
  float c = 0.f, p = 0.f, q = 0.f, lo = -1.f, hi = 1.f;
  float h[kMaxHistory] = {0.f, 0.f, 0.f};
  bool clip = false;
};

// The K history buffers of a step (float32, batch * numel_per_sample elements each, read and written in
// place); count = K in 0..kMaxHistory.
struct History {
  float* p[kMaxHistory] = {nullptr, nullptr, nullptr};
  int count = 0;
};

// The step above for one element, in float32. clip, noise and K select the terms; the kernels pass
// constants (CPU: template parameters, so each variant is its own vectorised loop) or the call's values
// (CUDA). noise == false: z is not read. H holds the element's K history values and is shifted in place.
PYDDPM_HD float step_element(float x, float eps, float z, const StepCoef& k, bool clip, bool noise,
                             int K = 0, float* H = nullptr) {
  float v = k.a * x + k.b * eps;
  if (clip || K > 0) {
    float d = k.p * x + k.q * eps;
    if (clip) {
      d = d < k.lo ? k.lo : d;
      d = d > k.hi ? k.hi : d;
    }
    v = v + k.c * d;
    for (int m = 0; m < K; ++m) v = v + k.h[m] * H[m];
    for (int m = K - 1; m > 0; --m) H[m] = H[m - 1];
    if (K > 0) H[0] = d;
  }
  if (noise) v = v + k.sigma * z;
  return v;
}

// Where the in-kernel noise comes from (used when noise == nullptr and sigma != 0).
struct PhiloxArgs {
  uint64_t seed = 0;           // 0 <= seed < 2^63
  uint32_t step = 0;           // 0 = x_T, t = 1..T = the reverse step at t
  uint64_t sample_offset = 0;  // global index of the first sample of this batch
};

// A schedule of `rows` steps that the kernel reads at run time, so that one captured CUDA graph replays
// every step of a sampling loop: it uses row s = *index of `table` (rows x kRowWidth binary32: a, b, sigma,
// c, p, q, lo, hi, h_0, h_1, h_2) and Philox step steps[s]. All three pointers live where the kernel runs
// (device memory for CUDA) and must hold `rows` rows. An index outside [0, rows) leaves x untouched.
struct Schedule {
  const float* table = nullptr;
  const int64_t* steps = nullptr;
  const int64_t* index = nullptr;
  int64_t rows = 0;
};

// The coefficients of one schedule row (kRowWidth binary32 values in StepCoef's order).
PYDDPM_HD StepCoef schedule_row(const float* row, bool clip) {
  StepCoef k;
  k.a = row[0];
  k.b = row[1];
  k.sigma = row[2];
  k.c = row[3];
  k.p = row[4];
  k.q = row[5];
  k.lo = row[6];
  k.hi = row[7];
  for (int m = 0; m < kMaxHistory; ++m) k.h[m] = row[8 + m];
  k.clip = clip;
  return k;
}

// Storage types of the CUDA kernels (the CPU kernels take float32 only).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// CPU, float32. num_threads <= 0 means the OpenMP default.
void reverse_step_cpu(float* out, const float* x, const float* eps, const float* noise, int64_t batch,
                      int64_t numel_per_sample, const StepCoef& coef, const PhiloxArgs& rng,
                      int num_threads, const History& history = History{});
// In place (x <- x_{t-1}) with the coefficients and Philox step of schedule row *sched.index (host
// memory); noise is always drawn in the kernel (rng.step is ignored).
void reverse_step_scheduled_cpu(float* x, const float* eps, int64_t batch, int64_t numel_per_sample,
                                const Schedule& sched, bool clip, const PhiloxArgs& rng,
                                int num_threads, const History& history = History{});
// out[i, e] = z of sample sample_offset + i, element e (the N(0, 1) draws of philox.h).
void normal_cpu(float* out, int64_t batch, int64_t numel_per_sample, const PhiloxArgs& rng,
                int num_threads);

#if defined(PYDDPM_WITH_CUDA)
// CUDA: pointers on the current device, launched asynchronously on `stream` (a cudaStream_t as an
// integer; 0 = legacy default stream). Throws std::runtime_error if the launch fails.
void reverse_step_cuda(void* out, const void* x, const void* eps, const void* noise, DType dtype,
                       int64_t batch, int64_t numel_per_sample, const StepCoef& coef,
                       const PhiloxArgs& rng, uintptr_t stream, const History& history = History{});
void normal_cuda(void* out, DType dtype, int64_t batch, int64_t numel_per_sample,
                 const PhiloxArgs& rng, uintptr_t stream);
// In place (x <- x_{t-1}) with the coefficients and Philox step of schedule row *sched.index; noise is
// always drawn in the kernel (rng.step is ignored). Also a plain launch: capturable in a CUDA graph.
void reverse_step_scheduled_cuda(void* x, const void* eps, DType dtype, int64_t batch,
                                 int64_t numel_per_sample, const Schedule& sched, bool clip,
                                 const PhiloxArgs& rng, uintptr_t stream,
                                 const History& history = History{});
#endif

}  // namespace pyddpm
