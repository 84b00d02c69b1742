// A 3 x 3 convolution (stride 1, zero padding 1) of channels-last float32 maps into few output channels, on raw
// pointers (no libtorch), for the fast networks' last layer (pyddpm/fast_network.py): see cpu/conv3x3_cpu.cpp.
// The caller (pyddpm) checks the tensors: x holds batch * height * width * channels values in (N, H, W, C)
// order, weight out_channels * 3 * 3 * channels in (O, kh, kw, C) order, bias out_channels values (or is null),
// y batch * height * width * out_channels in (N, H, W, O) order, not overlapping the others.
#pragma once

#include <stdint.h>

namespace pyddpm {

void conv3x3_nhwc_cpu(const float* x, const float* weight, const float* bias, float* y, int64_t batch,
                      int64_t height, int64_t width, int64_t channels, int64_t out_channels, int num_threads);

}  // namespace pyddpm
