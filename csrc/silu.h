// SiLU, y = x * sigmoid(x), elementwise over n float32 or bfloat16 (bfloat16 = true) values on raw pointers (no
// libtorch), for the fast networks' Linear + SiLU (pyddpm/fast_network.py): see cpu/silu_cpu.cpp. The caller
// (pyddpm) checks the tensors: each pointer addresses n elements of that dtype in the same order.
#pragma once

#include <stdint.h>

namespace pyddpm {

// y = x * sigmoid(x); y may be x (in place), else the two must not overlap. float32: within a few ulps (float_math.h's
// silu). bfloat16 on CPUs with AVX512-BF16: computed in float32 to a relative error below 1e-4 (far below bfloat16's
// half ulp, 2^-9), then rounded to nearest even; elsewhere as float32's, then rounded.
void silu_cpu(const void* x, void* y, bool bfloat16, int64_t n, int num_threads);

// y[r, j] = bias[j] + sum_i silu(x[r, i]) w[j, i] for r < rows, j < outs: a Linear with few outputs (the toy
// networks' last layer, outs <= kSiluLinearMaxOuts) on the SiLU of the layer before, in one pass over x (rows x
// features, row-major, float32 or bfloat16), float32 w (outs x features), bias (outs, or null) and y (rows x
// outs). bfloat16: each silu(x) is rounded to bfloat16 (silu_cpu) before the product, as the bfloat16 SiLU
// output that would be fed to the Linear; the product accumulates in float32.
constexpr int64_t kSiluLinearMaxOuts = 8;
void silu_linear_cpu(const void* x, bool bfloat16, const float* w, const float* bias, float* y, int64_t rows,
                     int64_t features, int64_t outs, int num_threads);

}  // namespace pyddpm
