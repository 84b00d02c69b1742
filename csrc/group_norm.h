// GroupNorm, optionally followed by SiLU, of channels-last maps on raw pointers (no libtorch), for the
// fast sampling networks (pyddpm/fast_network.py): see cpu/group_norm_cpu.cpp. The caller (pyddpm) checks
// the tensors: x and y hold batch * hw * channels elements in (N, H, W, C) order, float32 or bfloat16
// (bfloat16 = true), and do not overlap; add holds batch * channels float32 values or is null (0); gamma
// and beta hold `channels` float32 values or are null (1, 0); channels is a multiple of groups.
#pragma once

#include <stdint.h>

namespace pyddpm {

void group_norm_nhwc_cpu(const void* x, const float* add, void* y, bool bfloat16, const float* gamma,
                         const float* beta, int64_t batch, int64_t hw, int64_t channels, int64_t groups,
                         float eps, bool with_silu, int num_threads);

}  // namespace pyddpm
