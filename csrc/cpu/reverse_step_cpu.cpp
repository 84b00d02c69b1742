// CPU kernels: OpenMP over blocks of 1024 elements, each block one loop the compiler vectorises.
// Build with -ffp-contract=off -fno-math-errno (see kernels.cmake): the first keeps the noise and the
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

// AVX2 code next to the baseline, picked at run time (no -march needed): a target_clones copy of the
// Box-Muller loop and hand-vectorised Philox rounds. Both give the same bits as the baseline.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(PYDDPM_NO_AVX2)
#include <immintrin.h>
#define PYDDPM_X86_AVX2 1
#define PYDDPM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYDDPM_X86_AVX2 0
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

// The four Philox words of `count` consecutive counters, word-major: w[j][k] = word j of counter k,
// where counter k is (g0 + k, i0) (kAcross = false) or (g0, i0 + k) (kAcross = true).
struct Words {
  alignas(64) uint32_t w[4][kBlockGroups];
};

template <bool kAcross>
void philox_words_portable(Words& out, int64_t begin, int64_t count, uint32_t g0, uint64_t i0,
                           const PhiloxArgs& rng) {
  const uint32_t k0 = static_cast<uint32_t>(rng.seed), k1 = static_cast<uint32_t>(rng.seed >> 32);
  for (int64_t k = begin; k < count; ++k) {
    const uint64_t i = kAcross ? i0 + static_cast<uint64_t>(k) : i0;
    uint32_t c0 = kAcross ? g0 : g0 + static_cast<uint32_t>(k);
    uint32_t c1 = static_cast<uint32_t>(i), c2 = static_cast<uint32_t>(i >> 32), c3 = rng.step;
    philox::philox4x32_10(c0, c1, c2, c3, k0, k1);
    out.w[0][k] = c0;
    out.w[1][k] = c1;
    out.w[2][k] = c2;
    out.w[3][k] = c3;
  }
}

#if PYDDPM_X86_AVX2
// Eight counters at once. GCC's auto-vectorised 32x32->64 multiplies shuffle so much that AVX2 is
// slower than SSE2, so the Philox rounds (integer only, no rounding questions) are written out here.
__attribute__((target("avx2"))) inline void mulhilo8(__m256i c, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

template <bool kAcross>
__attribute__((target("avx2"))) void philox_words_avx2(Words& out, int64_t count, uint32_t g0,
                                                        uint64_t i0, const PhiloxArgs& rng) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kM1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    const uint64_t i = kAcross ? i0 + static_cast<uint64_t>(k) : i0;
    if (kAcross && static_cast<uint32_t>(i) > 0xfffffff8u) break;  // low word would wrap: scalar
    __m256i c0 = kAcross ? _mm256_set1_epi32(static_cast<int>(g0))
                         : _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(g0 + k)), lane);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(i)));
    if (kAcross) c1 = _mm256_add_epi32(c1, lane);
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(i >> 32)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(rng.step));
    uint32_t k0 = static_cast<uint32_t>(rng.seed), k1 = static_cast<uint32_t>(rng.seed >> 32);
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += philox::kW0;
        k1 += philox::kW1;
      }
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0, m0, hi0, lo0);
      mulhilo8(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out.w[0][k]), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out.w[1][k]), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out.w[2][k]), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out.w[3][k]), c3);
  }
  philox_words_portable<kAcross>(out, k, count, g0, i0, rng);
}

bool have_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
}
#endif

template <bool kAcross>
void philox_words(Words& out, int64_t count, uint32_t g0, uint64_t i0, const PhiloxArgs& rng) {
#if PYDDPM_X86_AVX2
  if (have_avx2()) return philox_words_avx2<kAcross>(out, count, g0, i0, rng);
#endif
  philox_words_portable<kAcross>(out, 0, count, g0, i0, rng);
}

// z[4k + lane] = the normals of counter k (Box-Muller on words (0, 1) and (2, 3)).
PYDDPM_CLONES void box_muller_block(float* __restrict z, const Words& words, int64_t count) {
  const uint32_t* __restrict w0 = words.w[0];
  const uint32_t* __restrict w1 = words.w[1];
  const uint32_t* __restrict w2 = words.w[2];
  const uint32_t* __restrict w3 = words.w[3];
  for (int64_t k = 0; k < count; ++k) {
    float n0, n1, n2, n3;
    philox::normal_pair(w0[k], w1[k], n0, n1);
    philox::normal_pair(w2[k], w3[k], n2, n3);
    z[4 * k + 0] = n0;
    z[4 * k + 1] = n1;
    z[4 * k + 2] = n2;
    z[4 * k + 3] = n3;
  }
}

template <bool kAcross>
void normals_block(float* __restrict z, int64_t count, uint32_t g0, uint64_t i0,
                   const PhiloxArgs& rng) {
  Words words;
  philox_words<kAcross>(words, count, g0, i0, rng);
  box_muller_block(z, words, count);
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
      normals_block<false>(z, std::min(kBlockGroups, groups - g0), static_cast<uint32_t>(g0),
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
        normals_block<true>(zg + 4 * s * g, s, static_cast<uint32_t>(g),
                            rng.sample_offset + static_cast<uint64_t>(i0), rng);
      for (int64_t k = 0; k < s; ++k)
        for (int64_t e = 0; e < n; ++e) z[k * n + e] = zg[4 * s * (e >> 2) + 4 * k + (e & 3)];
      f(i0 * n, s * n, z);
    }
  }
}

// out[j] = step_element(x[j], eps[j], z[j]) for j < len, with the history hist.p[m][j] read and shifted in
// place (m < K); z == nullptr: no noise term.
template <bool kClip, bool kNoise, int K>
void affine(float* out, const float* x, const float* eps, const float* z, const History& hist,
            int64_t len, const StepCoef& coef) {
  const StepCoef k = coef;  // a local copy: no store to out can alias it, so it stays in registers
  float* h0 = K > 0 ? hist.p[0] : nullptr;
  float* h1 = K > 1 ? hist.p[1] : nullptr;
  float* h2 = K > 2 ? hist.p[2] : nullptr;
  PYDDPM_IVDEP
  for (int64_t j = 0; j < len; ++j) {
    float H[K > 0 ? K : 1];
    if (K > 0) H[0] = h0[j];
    if (K > 1) H[1] = h1[j];
    if (K > 2) H[2] = h2[j];
    out[j] = step_element(x[j], eps[j], kNoise ? z[j] : 0.f, k, kClip, kNoise, K, H);
    if (K > 0) h0[j] = H[0];
    if (K > 1) h1[j] = H[1];
    if (K > 2) h2[j] = H[2];
  }
}

template <int K>
void affine_history(float* out, const float* x, const float* eps, const float* z, const History& hist,
                    int64_t len, const StepCoef& k) {
  if (k.clip) {
    if (z) affine<true, true, K>(out, x, eps, z, hist, len, k);
    else affine<true, false, K>(out, x, eps, z, hist, len, k);
  } else {
    if (z) affine<false, true, K>(out, x, eps, z, hist, len, k);
    else affine<false, false, K>(out, x, eps, z, hist, len, k);
  }
}

// The history pointers of hist advanced by `start` elements.
History history_at(const History& hist, int64_t start) {
  History at = hist;
  for (int m = 0; m < hist.count; ++m) at.p[m] = hist.p[m] + start;
  return at;
}

void affine_dispatch(float* out, const float* x, const float* eps, const float* z, const History& hist,
                     int64_t start, int64_t len, const StepCoef& k) {
  const History at = history_at(hist, start);
  switch (hist.count) {
    case 0: return affine_history<0>(out + start, x + start, eps + start, z, at, len, k);
    case 1: return affine_history<1>(out + start, x + start, eps + start, z, at, len, k);
    case 2: return affine_history<2>(out + start, x + start, eps + start, z, at, len, k);
    default: return affine_history<3>(out + start, x + start, eps + start, z, at, len, k);
  }
}

}  // namespace

void reverse_step_cpu(float* out, const float* x, const float* eps, const float* noise,
                      int64_t batch, int64_t numel_per_sample, const StepCoef& coef,
                      const PhiloxArgs& rng, int num_threads, const History& history) {
  const int64_t total = batch * numel_per_sample;
  if (total == 0) return;
  if (coef.sigma != 0.f && noise == nullptr) {
    for_each_noise_block(batch, numel_per_sample, rng, num_threads,
                         [&](int64_t start, int64_t len, const float* z) {
                           affine_dispatch(out, x, eps, z, history, start, len, coef);
                         });
    return;
  }
  const float* z = coef.sigma != 0.f ? noise : nullptr;
  const int64_t blocks = (total + kBlock - 1) / kBlock;
  const int nt = threads_for(total, num_threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt != 1)
  for (int64_t w = 0; w < blocks; ++w) {
    const int64_t start = w * kBlock;
    affine_dispatch(out, x, eps, z ? z + start : nullptr, history, start,
                    std::min(kBlock, total - start), coef);
  }
}

void reverse_step_scheduled_cpu(float* x, const float* eps, int64_t batch, int64_t numel_per_sample,
                                const Schedule& sched, bool clip, const PhiloxArgs& rng,
                                int num_threads, const History& history) {
  const int64_t s = *sched.index;
  if (s < 0 || s >= sched.rows) return;
  PhiloxArgs at_step = rng;
  at_step.step = static_cast<uint32_t>(sched.steps[s]);
  reverse_step_cpu(x, x, eps, nullptr, batch, numel_per_sample,
                   schedule_row(sched.table + kRowWidth * s, clip), at_step, num_threads, history);
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
