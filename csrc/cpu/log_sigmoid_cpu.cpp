// log sigmoid(x) = min(x, 0) - log1p(e) and its derivative sigmoid(-x), from e = exp(-|x|) in (0, 1] (never
// overflows), in one pass of float operations that vectorise (AVX-512 and AVX2 clones, float_math.h):
//   log1p(e) = 2 atanh(s) with s = e / (2 + e) in (0, 1/3]: the odd series 2 s (1 + s^2/3 + ... + s^14/15),
//   whose next term is below 2e-9 of the sum, so it keeps float32's relative precision also where e is tiny
//   (ATen computes log1p(exp(-|x|)) too; log(sigmoid(x)) would round 1 - e to 1 there);
//   sigmoid(-x) = e / (1 + e) for x >= 0, 1 / (1 + e) below.
// Each block of kBlock elements is computed into a float buffer on the stack (bfloat16 inputs converted into one
// first), then stored: the compute loop sees non-overlapping arrays even when the output is the input. OpenMP
// splits the blocks among the threads.
#include <algorithm>
#include <cstdint>

#include "../log_sigmoid.h"
#include "float_math.h"

namespace pyddpm {
namespace {

constexpr int64_t kBlock = 512;

PYDDPM_VECTOR_CLONES void log_sigmoid_block(const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(-std::fabs(x[i]));
    const float s = e / (2.0f + e);
    const float z = s * s;
    float p = 1.0f / 15.0f;
    p = p * z + 1.0f / 13.0f;
    p = p * z + 1.0f / 11.0f;
    p = p * z + 1.0f / 9.0f;
    p = p * z + 1.0f / 7.0f;
    p = p * z + 1.0f / 5.0f;
    p = p * z + 1.0f / 3.0f;
    p = p * z + 1.0f;
    y[i] = std::min(x[i], 0.0f) - 2.0f * s * p;
  }
}

PYDDPM_VECTOR_CLONES void log_sigmoid_backward_block(const float* __restrict x, const float* __restrict dy,
                                                     float* __restrict dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(-std::fabs(x[i]));
    const float r = 1.0f / (1.0f + e);
    dx[i] = dy[i] * (x[i] >= 0.0f ? e * r : r);  // a select of computed values: the loop stays branch-free
  }
}

template <typename T>
void log_sigmoid_all(const T* x, T* y, int64_t n, int num_threads) {
  map_blocks<kBlock>(x, y, n, num_threads, log_sigmoid_block);
}

template <typename T>
void log_sigmoid_backward_all(const T* x, const T* dy, T* dx, int64_t n, int num_threads) {
  for_each_block(n, kBlock, num_threads, [&](int64_t start, int64_t count) {
    float x_buf[kBlock], dy_buf[kBlock], out[kBlock];
    log_sigmoid_backward_block(as_float(x + start, x_buf, count), as_float(dy + start, dy_buf, count), out, count);
    from_float(out, dx + start, count);
  });
}

}  // namespace

void log_sigmoid_cpu(const void* x, void* y, bool bfloat16, int64_t n, int num_threads) {
  if (bfloat16)
    log_sigmoid_all(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), n, num_threads);
  else
    log_sigmoid_all(static_cast<const float*>(x), static_cast<float*>(y), n, num_threads);
}

void log_sigmoid_backward_cpu(const void* x, const void* grad_y, void* grad_x, bool bfloat16, int64_t n,
                              int num_threads) {
  if (bfloat16)
    log_sigmoid_backward_all(static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(grad_y),
                             static_cast<uint16_t*>(grad_x), n, num_threads);
  else
    log_sigmoid_backward_all(static_cast<const float*>(x), static_cast<const float*>(grad_y),
                             static_cast<float*>(grad_x), n, num_threads);
}

}  // namespace pyddpm
