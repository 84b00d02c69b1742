// SiLU in one pass over memory (silu.h). float32: float_math.h's silu (exp(-|x|) to about 1 ulp, one division),
// in the AVX-512 / AVX2 clones. bfloat16 with AVX512-BF16: float_math.h's silu16, sixteen lanes of intrinsics
// within 1e-4 relative of x * sigmoid(x) before the rounding to bfloat16.
#include <cstdint>

#include "../silu.h"
#include "float_math.h"

namespace pyddpm {
namespace {

constexpr int64_t kBlock = 1024;  // silu's elements per block

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

}  // namespace

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
