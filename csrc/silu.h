// SiLU, y = x * sigmoid(x), elementwise over n float32 or bfloat16 (bfloat16 = true) values on raw pointers (no
// libtorch), for the fast networks' Linear + SiLU (pyddpm/accel/kernels.py): see cpu/silu_cpu.cpp. The caller
// (pyddpm) checks the tensors: each pointer addresses n elements of that dtype in the same order.
#pragma once

#include <stdint.h>

namespace pyddpm {

// y = x * sigmoid(x); y may be x (in place), else the two must not overlap. float32: within a few ulps (float_math.h's
// silu). bfloat16 on CPUs with AVX512-BF16: computed in float32 to a relative error below 1e-4 (far below bfloat16's
// half ulp, 2^-9), then rounded to nearest even; elsewhere as float32's, then rounded.
void silu_cpu(const void* x, void* y, bool bfloat16, int64_t n, int num_threads);

}  // namespace pyddpm
