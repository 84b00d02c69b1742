"""Elementwise levers: LogSigmoid (the exercise U-Net's activation) and training's Dropout through pyddpm._C's
one-pass kernels (``pyddpm.accel.kernels``), with torch's own op wherever a kernel does not take the input."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import kernels


class FastLogSigmoid(nn.Module):
    """log sigmoid(x) = min(x, 0) - log1p(e^-|x|) in one pass of ``pyddpm::log_sigmoid``, forward and backward
    (ATen's channels-last log_sigmoid takes several); other inputs go to ATen's."""

    def forward(self, x: Tensor) -> Tensor:
        if kernels.takes(x):
            return kernels.log_sigmoid(x)
        return nn.functional.logsigmoid(x)


class FastDropout(nn.Module):
    """nn.Dropout(p) for training in one pass of ``pyddpm::dropout``, forward and backward: an element is dropped
    when its 16-bit Philox word (a seed drawn from torch's generator per call, the element's index) falls below
    round(p 2^16), i.e. with probability q = round(p 2^16) / 2^16 (|q - p| <= 2^-17), and the kept ones are
    scaled by 1 / (1 - q). The backward draws the mask again from the seed. Other inputs go to F.dropout; the
    identity in eval mode, as nn.Dropout."""

    def __init__(self, dropout: nn.Dropout):
        super().__init__()
        self.p = dropout.p
        self.threshold = round(self.p * 2**kernels.DROPOUT_BITS)
        self.scale = 1.0 / (1.0 - self.threshold / 2**kernels.DROPOUT_BITS)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if kernels.takes(x):
            seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))  # torch's generator: manual_seed holds
            return kernels.dropout(x, seed, self.threshold, self.scale)
        return nn.functional.dropout(x, self.p, True)
