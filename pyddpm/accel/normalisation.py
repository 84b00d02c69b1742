"""Normalisation levers: GroupNorm (then SiLU) of channels-last maps through ``pyddpm::group_norm_nhwc`` (ATen's
GroupNorm is several times slower in channels-last than in NCHW), and the DDPM U-Net's residual block built on
it."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nets.unet_ddpm import ResidualBlock
from . import kernels


class FastGroupNorm(nn.Module):
    """An nn.GroupNorm (its own weight and bias Parameters, so the same state_dict), then SiLU when ``silu``:
    channels-last float32 or bfloat16 CPU maps through ``pyddpm::group_norm_nhwc`` (with gradients), anything else
    through F.group_norm (and F.silu)."""

    def __init__(self, norm: nn.GroupNorm, silu: bool = False):
        super().__init__()
        self.num_groups, self.eps, self.silu = norm.num_groups, norm.eps, silu
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        """GroupNorm(x + add[:, :, None, None]) (then SiLU), ``add`` of shape (N, C) or None; without gradients
        ``add`` is folded into the kernel's statistics (no pass of its own)."""
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        kernel = (x.device.type == "cpu" and x.dim() == 4 and x.dtype in kernels.DTYPES
                  and x.is_contiguous(memory_format=torch.channels_last) and self.weight.dtype == torch.float32)
        if add is not None and (grad or not kernel or add.shape != x.shape[:2]):
            x, add = x + add[:, :, None, None].to(x.dtype), None
        if not kernel:
            y = nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype),
                                         self.eps)
            return nn.functional.silu(y) if self.silu else y
        if add is not None:
            add = add.float().contiguous()
        return kernels.group_norm_nhwc(x, self.weight, self.bias, add, self.num_groups, self.eps, self.silu)[0]


class FastResidualBlock(nn.Module):
    """A DDPM U-Net ResidualBlock (nets.unet_ddpm; its own modules, so the same state_dict) with each GroupNorm ->
    SiLU one FastGroupNorm, the time embedding's projection added inside the second one: the same function."""

    def __init__(self, block: ResidualBlock):
        super().__init__()
        self.norm1, self.conv1, self.time = FastGroupNorm(block.norm1, silu=True), block.conv1, block.time
        self.norm2, self.conv2 = FastGroupNorm(block.norm2, silu=True), block.conv2
        self.dropout, self.skip = block.dropout, block.skip

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.norm2(self.conv1(self.norm1(x)), add=self.time(emb))
        return self.skip(x) + self.conv2(self.dropout(h))
