// Dropout in one pass (dropout.h): for each block of kBlock elements, Philox4x32-10 gives 8 16-bit words per
// evaluation (the block's multipliers, scale or 0, into a float buffer on the stack), then the block is
// multiplied through them. A multiply, not a select, so that a NaN or infinity dropped gives NaN, as
// torch's dropout. OpenMP splits the blocks among the threads; the mask depends only on the element index.
#include <cstdint>

#include "../dropout.h"
#include "../philox.h"
#include "float_math.h"

namespace pyddpm {
namespace {

constexpr int64_t kBlock = 1024;  // a multiple of 8: each block starts at a Philox evaluation

PYDDPM_VECTOR_CLONES void multipliers(uint64_t first_group, int64_t groups, uint32_t k0, uint32_t k1,
                                      uint32_t threshold, float scale, float* __restrict m) {
  for (int64_t g = 0; g < groups; ++g) {
    const uint64_t j = first_group + static_cast<uint64_t>(g);
    uint32_t c0 = static_cast<uint32_t>(j), c1 = static_cast<uint32_t>(j >> 32), c2 = 0, c3 = 0;
    philox::philox4x32_10(c0, c1, c2, c3, k0, k1);
    const uint32_t r[4] = {c0, c1, c2, c3};
    for (int lane = 0; lane < 4; ++lane) {
      m[8 * g + 2 * lane] = (r[lane] & 0xffffu) >= threshold ? scale : 0.0f;
      m[8 * g + 2 * lane + 1] = (r[lane] >> 16) >= threshold ? scale : 0.0f;
    }
  }
}

PYDDPM_VECTOR_CLONES void multiply(const float* __restrict x, const float* __restrict m, float* __restrict y,
                                   int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * m[i];
}

template <typename T>
void dropout_all(const T* x, T* y, int64_t n, uint64_t seed, uint32_t threshold, float scale, int num_threads) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for_each_block(n, kBlock, num_threads, [&](int64_t start, int64_t count) {
    float m[kBlock], buf[kBlock], out[kBlock];
    multipliers(static_cast<uint64_t>(start) / 8, (count + 7) / 8, k0, k1, threshold, scale, m);
    multiply(as_float(x + start, buf, count), m, out, count);
    from_float(out, y + start, count);
  });
}

}  // namespace

void dropout_cpu(const void* x, void* y, bool bfloat16, int64_t n, uint64_t seed, uint32_t threshold, float scale,
                 int num_threads) {
  if (bfloat16)
    dropout_all(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), n, seed, threshold, scale, num_threads);
  else
    dropout_all(static_cast<const float*>(x), static_cast<float*>(y), n, seed, threshold, scale, num_threads);
}

}  // namespace pyddpm
