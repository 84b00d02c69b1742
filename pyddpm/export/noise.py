"""pyddpm's counter-based N(0, 1) noise as a TorchScript module, for the exported sampler: a scripted sampler
then draws, for a seed, the x_T and z that ``pyddpm-sample`` draws, in any program that loads it (Python or
C++) without pyddpm. The rule and its code are ``pyddpm.philox`` (spec there and in ``csrc/philox.h``)."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from ..philox import normal_unchecked


class PhiloxNormal(nn.Module):
    """``forward(shape, seed, step, sample_offset, device)``: z ~ N(0, I) of ``shape`` (dim 0 = batch; sample i
    has global index sample_offset + i), float32, exactly as ``pyddpm.philox.philox_normal``; step 0 is x_T,
    step t the z of the reverse step at t."""

    def forward(self, shape: List[int], seed: int, step: int, sample_offset: int, device: torch.device) -> Tensor:
        return normal_unchecked(shape, seed, step, sample_offset, device)
