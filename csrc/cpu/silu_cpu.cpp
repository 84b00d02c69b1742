// SiLU in one pass over memory (silu.h). float32: float_math.h's silu (exp(-|x|) to about 1 ulp, one division),
// in the AVX-512 / AVX2 clones. bfloat16 with AVX512-BF16: float_math.h's silu16, sixteen lanes of intrinsics
// within 1e-4 relative of x * sigmoid(x) before the rounding to bfloat16.
#include <cstdint>
#include <vector>

#include "../silu.h"
#include "float_math.h"

namespace pyddpm {
namespace {

constexpr int64_t kBlock = 1024;  // silu's elements per block
constexpr int64_t kRows = 16;  // silu_linear's rows per block

PYDDPM_VECTOR_CLONES void silu_block(const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = silu(x[i]);
}

template <typename T>
void silu_all(const T* x, T* y, int64_t n, int num_threads) {
  map_blocks<kBlock>(x, y, n, num_threads, silu_block);
}

#if defined(PYDDPM_NATIVE_BF16)
PYDDPM_BF16_TARGET void silu_native_bf16(const uint16_t* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) store_bf16x16(kAllLanes, y + i, silu16(load_bf16x16(kAllLanes, x + i)));
  if (i < n) store_bf16x16(lanes_from(i, n), y + i, silu16(load_bf16x16(lanes_from(i, n), x + i)));
}
#endif

// The dot product of a and b over n floats, in 16 partial sums (vectorised in the clones).
PYDDPM_VECTOR_CLONES float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float partial[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) partial[l] += a[i + l] * b[i + l];
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int l = 0; l < 16; ++l) sum += partial[l];
  return sum;
}

// One row's silu, as floats, into out (bfloat16: rounded to bfloat16 first, as silu_cpu's), with scratch space
// for n floats (in) and n bfloat16 values (rounded).
void silu_row(const float* x, float* out, float*, uint16_t*, int64_t n) { silu_block(x, out, n); }
void silu_row(const uint16_t* x, float* out, float* in, uint16_t* rounded, int64_t n) {
#if defined(PYDDPM_NATIVE_BF16)
  if (cpu_has_avx512_bf16()) {
    silu_native_bf16(x, rounded, n);
    as_float(rounded, out, n);
    return;
  }
#endif
  silu_block(as_float(x, in, n), out, n);
  from_float(out, rounded, n);
  as_float(rounded, out, n);
}

#if defined(PYDDPM_NATIVE_BF16)
// silu_linear_all for bfloat16 x on CPUs with AVX512-BF16, sixteen features a step: silu16, rounded to bfloat16
// and back, times each output's weights into its sixteen partial sums (kOuts of them: registers, not memory).
template <int kOuts>
PYDDPM_BF16_TARGET void silu_linear_native_bf16(const uint16_t* x, const float* w, const float* bias, float* y,
                                                int64_t start, int64_t count, int64_t features) {
  for (int64_t r = start; r < start + count; ++r) {
    const uint16_t* row = x + r * features;
    __m512 partial[kOuts];
    for (int j = 0; j < kOuts; ++j) partial[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < features; i += 16) {
      const __mmask16 lanes = lanes_from(i, features);
      const __m512 s = silu16(load_bf16x16(lanes, row + i));
      const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(s);  // to bfloat16, and back to float below
      const __m512 a = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16));
      for (int j = 0; j < kOuts; ++j)
        partial[j] = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(lanes, w + j * features + i), partial[j]);
    }
    for (int j = 0; j < kOuts; ++j) y[r * kOuts + j] = _mm512_reduce_add_ps(partial[j]) + (bias ? bias[j] : 0.0f);
  }
}

using SiluLinearRows = void (*)(const uint16_t*, const float*, const float*, float*, int64_t, int64_t, int64_t);
constexpr SiluLinearRows kSiluLinearNativeBf16[kSiluLinearMaxOuts] = {
    silu_linear_native_bf16<1>, silu_linear_native_bf16<2>, silu_linear_native_bf16<3>, silu_linear_native_bf16<4>,
    silu_linear_native_bf16<5>, silu_linear_native_bf16<6>, silu_linear_native_bf16<7>, silu_linear_native_bf16<8>};
static_assert(kSiluLinearMaxOuts == 8, "one instance per output count");
#endif

template <typename T>
void silu_linear_all(const T* x, const float* w, const float* bias, float* y, int64_t rows, int64_t features,
                     int64_t outs, int num_threads) {
  for_each_block(rows, kRows, num_threads, [&](int64_t start, int64_t count) {
    std::vector<float> activations(features), in(features);
    std::vector<uint16_t> rounded(features);
    for (int64_t r = start; r < start + count; ++r) {
      silu_row(x + r * features, activations.data(), in.data(), rounded.data(), features);
      for (int64_t j = 0; j < outs; ++j)
        y[r * outs + j] = dot(activations.data(), w + j * features, features) + (bias ? bias[j] : 0.0f);
    }
  });
}

}  // namespace

void silu_linear_cpu(const void* x, bool bfloat16, const float* w, const float* bias, float* y, int64_t rows,
                     int64_t features, int64_t outs, int num_threads) {
  if (bfloat16) {
#if defined(PYDDPM_NATIVE_BF16)
    if (cpu_has_avx512_bf16()) {
      for_each_block(rows, kRows, num_threads, [&](int64_t start, int64_t count) {
        kSiluLinearNativeBf16[outs - 1](static_cast<const uint16_t*>(x), w, bias, y, start, count, features);
      });
      return;
    }
#endif
    silu_linear_all(static_cast<const uint16_t*>(x), w, bias, y, rows, features, outs, num_threads);
  } else
    silu_linear_all(static_cast<const float*>(x), w, bias, y, rows, features, outs, num_threads);
}

void silu_cpu(const void* x, void* y, bool bfloat16, int64_t n, int num_threads) {
  if (!bfloat16) return silu_all(static_cast<const float*>(x), static_cast<float*>(y), n, num_threads);
  const auto* in = static_cast<const uint16_t*>(x);
  auto* out = static_cast<uint16_t*>(y);
#if defined(PYDDPM_NATIVE_BF16)
  if (cpu_has_avx512_bf16()) {
    for_each_block(n, kBlock, num_threads,
                   [&](int64_t start, int64_t count) { silu_native_bf16(in + start, out + start, count); });
    return;
  }
#endif
  silu_all(in, out, n, num_threads);
}

}  // namespace pyddpm
