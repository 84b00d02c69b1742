// Dropout with its mask drawn from Philox4x32-10 (philox.h) by element index, over n float32 or bfloat16
// (bfloat16 = true) values on raw pointers (no libtorch), for the training networks' FastDropout
// (pyddpm/accel/kernels.py): see cpu/dropout_cpu.cpp. The caller (pyddpm) checks the tensors: each pointer
// addresses n elements of that dtype in the same order.
#pragma once

#include <stdint.h>

namespace pyddpm {

// y[e] = x[e] * (keep(e) ? scale : 0) for e in [0, n), where keep(e) = (u(e) >= threshold) and u(e) is the
// 16-bit word e % 8 (low half of r0, high half of r0, low half of r1, ...) of philox4x32_10((e / 8 & 0xffffffff,
// e / 8 >> 32, 0, 0), (seed & 0xffffffff, seed >> 32)): each element is dropped with probability
// threshold / 65536, whatever the thread count. y may be x (in place), else the two must not overlap. The
// backward (dL/dx from dL/dy) is the same call on dL/dy with the same seed.
void dropout_cpu(const void* x, void* y, bool bfloat16, int64_t n, uint64_t seed, uint32_t threshold, float scale,
                 int num_threads);

}  // namespace pyddpm
