// log sigmoid(x) and its backward, elementwise over n float32 or bfloat16 (bfloat16 = true) values on raw
// pointers (no libtorch), for the fast networks' LogSigmoid (pyddpm/accel/kernels.py): see cpu/log_sigmoid_cpu.cpp.
// The caller (pyddpm) checks the tensors: each pointer addresses n elements of that dtype in the same order.
#pragma once

#include <stdint.h>

namespace pyddpm {

// y = log sigmoid(x); y may be x (in place), else the two must not overlap.
void log_sigmoid_cpu(const void* x, void* y, bool bfloat16, int64_t n, int num_threads);

// grad_x = grad_y * sigmoid(-x), the derivative of log sigmoid at x; grad_x may be grad_y (in place).
void log_sigmoid_backward_cpu(const void* x, const void* grad_y, void* grad_x, bool bfloat16, int64_t n,
                              int num_threads);

}  // namespace pyddpm
