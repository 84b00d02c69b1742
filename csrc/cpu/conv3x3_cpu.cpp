// y[n, h, w, o] = bias[o] + sum over the 3 x 3 window and the channels c of x[n, h + i - 1, w + j - 1, c] *
// weight[o, i, j, c], taps outside the map left out (zero padding). oneDNN runs such a convolution into one
// output channel (the U-Nets' last layer) at ~9 GFLOP/s, a tenth of its speed elsewhere: it is a dot product of
// 9 C-vectors per output value. Each is summed into kLanes partial sums (lane l takes the channels c = l mod
// kLanes, so the loop vectorises without reordering any sum), which are added up in order at the end: the result
// depends on neither the thread count nor the CPU. OpenMP splits the output rows among the threads.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../conv3x3.h"
#include "float_math.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace pyddpm {
namespace {

constexpr int64_t kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));  // split into what the target has

inline Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// One output row (image row h): y_row[w * out_channels + o].
PYDDPM_VECTOR_CLONES void conv3x3_row(const float* __restrict image, const float* __restrict weight,
                                      const float* __restrict bias, float* __restrict y_row, int64_t h,
                                      int64_t height, int64_t width, int64_t channels, int64_t out_channels) {
  const int64_t vector_end = channels - channels % kLanes;
  const int64_t row_begin = std::max<int64_t>(0, 1 - h), row_end = std::min<int64_t>(3, height + 1 - h);
  for (int64_t w = 0; w < width; ++w) {
    const int64_t col_begin = std::max<int64_t>(0, 1 - w), col_end = std::min<int64_t>(3, width + 1 - w);
    for (int64_t o = 0; o < out_channels; ++o) {
      Lanes lanes = {};
      float tail[kLanes] = {};
      for (int64_t i = row_begin; i < row_end; ++i) {
        for (int64_t j = col_begin; j < col_end; ++j) {
          const float* a = image + ((h + i - 1) * width + w + j - 1) * channels;
          const float* b = weight + ((o * 3 + i) * 3 + j) * channels;
          for (int64_t c = 0; c < vector_end; c += kLanes) lanes += load_lanes(a + c) * load_lanes(b + c);
          for (int64_t c = vector_end; c < channels; ++c) tail[c - vector_end] += a[c] * b[c];
        }
      }
      float sum = bias == nullptr ? 0.0f : bias[o];
      for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l] + tail[l];
      y_row[w * out_channels + o] = sum;
    }
  }
}

}  // namespace

void conv3x3_nhwc_cpu(const float* x, const float* weight, const float* bias, float* y, int64_t batch,
                      int64_t height, int64_t width, int64_t channels, int64_t out_channels, int num_threads) {
  const int64_t rows = batch * height;
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(rows, num_threads > 0 ? num_threads : omp_get_max_threads())));
#pragma omp parallel for num_threads(threads) schedule(static)
#else
  (void)num_threads;
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / height, h = r % height;
    conv3x3_row(x + n * height * width * channels, weight, bias, y + r * width * out_channels, h, height, width,
                channels, out_channels);
  }
}

}  // namespace pyddpm
