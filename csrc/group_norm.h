// GroupNorm, optionally followed by SiLU, of channels-last maps on raw pointers (no libtorch), for the
// fast sampling networks (pyddpm/accel/kernels.py): see cpu/group_norm_cpu.cpp. The caller (pyddpm) checks
// the tensors: x and y hold batch * hw * channels elements in (N, H, W, C) order, float32 or bfloat16
// (bfloat16 = true), and do not overlap; add holds batch * channels float32 values or is null (0); gamma
// and beta hold `channels` float32 values or are null (1, 0); channels is a multiple of groups.
#pragma once

#include <stdint.h>

namespace pyddpm {

// y = GroupNorm(x + add) (then SiLU); mean and rstd (batch * groups float32, or null) receive each group's
// mean and 1 / sqrt(var + eps) for the backward.
void group_norm_nhwc_cpu(const void* x, const float* add, void* y, bool bfloat16, const float* gamma,
                         const float* beta, int64_t batch, int64_t hw, int64_t channels, int64_t groups,
                         float eps, bool with_silu, float* mean, float* rstd, int num_threads);

// dL/dx (same layout and dtype as x) and per-sample dL/dgamma, dL/dbeta (batch * channels float32, summed over
// the batch by the caller) of y = GroupNorm(x) (then SiLU) from dL/dy and the forward's mean and rstd; gamma and
// beta must not be null here.
void group_norm_backward_nhwc_cpu(const void* x, const void* grad_y, void* grad_x, bool bfloat16,
                                  const float* mean, const float* rstd, const float* gamma, const float* beta,
                                  int64_t batch, int64_t hw, int64_t channels, int64_t groups, bool with_silu,
                                  float* grad_gamma, float* grad_beta, int num_threads);

}  // namespace pyddpm
