// CPU kernels: OpenMP over blocks of 1024 elements, each block one loop the compiler vectorises.
// Build with -ffp-contract=off -fno-math-errno (see CMakeLists.txt): the first keeps the noise and the
// step bit-identical to the torch reference, the second lets sqrtf vectorise (its argument is >= 0).
#include <algorithm>
#include <cstring>

#include "../philox.h"
#include "../reverse_step.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__clang__)
#define PYDDPM_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define PYDDPM_IVDEP _Pragma("GCC ivdep")
#else
#define PYDDPM_IVDEP
#endif

// An AVX2 clone of the noise loop next to the baseline one, picked at load time (no -march needed).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(PYDDPM_NO_TARGET_CLONES)
#define PYDDPM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYDDPM_CLONES
#endif

namespace pyddpm {
namespace {

constexpr int64_t kBlockGroups = 256;            // Philox calls per block
constexpr int64_t kBlock = 4 * kBlockGroups;     // elements per block (4 KiB of noise on the stack)
constexpr int64_t kParallelFrom = int64_t{1} << 15;  // fewer elements than this: one thread
constexpr int64_t kAcrossBelow = 64;             // samples with fewer groups: batch them per block

int threads_for(int64_t total, int num_threads) {
  if (total < kParallelFrom) return 1;
  if (num_threads > 0) return num_threads;
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// z[4k + lane] = lane of the normals for counter (g0 + k, i0) (kAcross = false) or (g0, i0 + k).
template <bool kAcross>
inline __attribute__((always_inline)) void philox_block_body(float* __restrict z, int64_t count,
                                                             uint32_t g0, uint64_t i0,
                                                             const PhiloxArgs& rng) {
  const uint32_t k0 = static_cast<uint32_t>(rng.seed), k1 = static_cast<uint32_t>(rng.seed >> 32);
  const uint32_t step = rng.step;
  for (int64_t k = 0; k < count; ++k) {
    const uint32_t g = kAcross ? g0 : g0 + static_cast<uint32_t>(k);
    const uint64_t i = kAcross ? i0 + static_cast<uint64_t>(k) : i0;
    float n0, n1, n2, n3;
    philox::normals4(g, i, step, k0, k1, n0, n1, n2, n3);
    z[4 * k + 0] = n0;
    z[4 * k + 1] = n1;
    z[4 * k + 2] = n2;
    z[4 * k + 3] = n3;
  }
}

PYDDPM_CLONES void philox_block_along(float* __restrict z, int64_t count, uint32_t g0, uint64_t i,
                                      const PhiloxArgs& rng) {
  philox_block_body<false>(z, count, g0, i, rng);
}

PYDDPM_CLONES void philox_block_across(float* __restrict z, int64_t count, uint32_t g,
                                       uint64_t i0, const PhiloxArgs& rng) {
  philox_block_body<true>(z, count, g, i0, rng);
}

// Calls f(first_element, length, z) for consecutive runs of the flat batch * n elements, z holding
// their noise in element order. Runs are disjoint and cover everything; blocks run in parallel.
template <class F>
void for_each_noise_block(int64_t batch, int64_t n, const PhiloxArgs& rng, int num_threads, F&& f) {
  const int64_t groups = (n + 3) / 4;
  const int nt = threads_for(batch * n, num_threads);
  if (groups >= kAcrossBelow) {
    // Large samples: a block is up to 256 consecutive groups of one sample.
    const int64_t per_sample = (groups + kBlockGroups - 1) / kBlockGroups;
    const int64_t work = batch * per_sample;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt != 1)
    for (int64_t w = 0; w < work; ++w) {
      alignas(64) float z[kBlock];
      const int64_t i = w / per_sample;
      const int64_t g0 = (w - i * per_sample) * kBlockGroups;
      philox_block_along(z, std::min(kBlockGroups, groups - g0), static_cast<uint32_t>(g0),
                         rng.sample_offset + static_cast<uint64_t>(i), rng);
      f(i * n + 4 * g0, std::min(kBlock, n - 4 * g0), z);
    }
  } else {
    // Small samples (e.g. 2-D points): a block is whole samples; Philox runs across samples.
    const int64_t per_block = kBlockGroups / groups;
    const int64_t work = (batch + per_block - 1) / per_block;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt != 1)
    for (int64_t w = 0; w < work; ++w) {
      alignas(64) float zg[kBlock];
      alignas(64) float z[kBlock];
      const int64_t i0 = w * per_block;
      const int64_t s = std::min(per_block, batch - i0);
      for (int64_t g = 0; g < groups; ++g)
        philox_block_across(zg + 4 * s * g, s, static_cast<uint32_t>(g),
                            rng.sample_offset + static_cast<uint64_t>(i0), rng);
      for (int64_t k = 0; k < s; ++k)
        for (int64_t e = 0; e < n; ++e) z[k * n + e] = zg[4 * s * (e >> 2) + 4 * k + (e & 3)];
      f(i0 * n, s * n, z);
    }
  }
}

// out[j] for j < len, as specified in reverse_step.h; z == nullptr: no noise term.
template <bool kClip, bool kNoise>
void affine(float* out, const float* x, const float* eps, const float* z, int64_t len,
            const StepCoef& k) {
  const float a = k.a, b = k.b, c = k.c, p = k.p, q = k.q, lo = k.lo, hi = k.hi, sigma = k.sigma;
  PYDDPM_IVDEP
  for (int64_t j = 0; j < len; ++j) {
    const float xv = x[j], ev = eps[j];
    float v = a * xv + b * ev;
    if (kClip) {
      float w = p * xv + q * ev;
      w = w < lo ? lo : w;
      w = w > hi ? hi : w;
      v = v + c * w;
    }
    if (kNoise) v = v + sigma * z[j];
    out[j] = v;
  }
}

void affine_dispatch(float* out, const float* x, const float* eps, const float* z, int64_t len,
                     const StepCoef& k) {
  if (k.clip) {
    if (z) affine<true, true>(out, x, eps, z, len, k);
    else affine<true, false>(out, x, eps, z, len, k);
  } else {
    if (z) affine<false, true>(out, x, eps, z, len, k);
    else affine<false, false>(out, x, eps, z, len, k);
  }
}

}  // namespace

void reverse_step_cpu(float* out, const float* x, const float* eps, const float* noise,
                      int64_t batch, int64_t numel_per_sample, const StepCoef& coef,
                      const PhiloxArgs& rng, int num_threads) {
  const int64_t total = batch * numel_per_sample;
  if (total == 0) return;
  if (coef.sigma != 0.f && noise == nullptr) {
    for_each_noise_block(batch, numel_per_sample, rng, num_threads,
                         [&](int64_t start, int64_t len, const float* z) {
                           affine_dispatch(out + start, x + start, eps + start, z, len, coef);
                         });
    return;
  }
  const float* z = coef.sigma != 0.f ? noise : nullptr;
  const int64_t blocks = (total + kBlock - 1) / kBlock;
  const int nt = threads_for(total, num_threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt != 1)
  for (int64_t w = 0; w < blocks; ++w) {
    const int64_t start = w * kBlock;
    affine_dispatch(out + start, x + start, eps + start, z ? z + start : nullptr,
                    std::min(kBlock, total - start), coef);
  }
}

void normal_cpu(float* out, int64_t batch, int64_t numel_per_sample, const PhiloxArgs& rng,
                int num_threads) {
  if (batch * numel_per_sample == 0) return;
  for_each_noise_block(batch, numel_per_sample, rng, num_threads,
                       [&](int64_t start, int64_t len, const float* z) {
                         std::memcpy(out + start, z, sizeof(float) * static_cast<size_t>(len));
                       });
}

}  // namespace pyddpm
