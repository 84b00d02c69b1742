"""The DDPM U-Net of Ho et al. (2020, appendix B), sized for MNIST: residual blocks, GroupNorm, sinusoidal time
embedding and self-attention at the lowest resolution (7x7 for 28x28 images)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .fc import SinusoidalTimeEmbedding
from .unet import check_image_settings, flat_to_image


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (Ho et al. use 32), as many as divide ``channels``."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus a projection of the time embedding, GroupNorm -> SiLU -> dropout -> conv,
    added to the (1x1-projected) input."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (b, 1 head, h*w, c): 4-D inputs, which the ONNX (dynamo) exporter converts
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        attended = self.attend(q, k, v)  # (b, 1, h*w, c)
        return x + self.out(attended.squeeze(1).transpose(-1, -2).reshape(b, c, h, w))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(c)) v for (b, 1, h*w, c) queries, keys and values."""
        return F.scaled_dot_product_attention(q, k, v)


class UpsampleConv(nn.Conv2d):
    """Nearest-neighbour upsampling to ``size``, then a 3x3 convolution (padding 1) on the result: a Conv2d, so its
    weights and state_dict names are the convolution's."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return super().forward(F.interpolate(x, size=size, mode="nearest"))


class DDPMUNet(nn.Module):
    """eps_theta(x_t, t) as the U-Net of Ho et al. on flat images, t given as (batch, 1) = (t - 1) / T.

    Each level holds ``num_res_blocks`` residual blocks at ``channels[level]`` channels; levels are separated
    by stride-2 convolutions (28 -> 14 -> 7 with three levels) and mirrored in the decoder with skip
    connections; the lowest level and the middle add self-attention when ``attention`` is set.

    Args:
        channels: feature channels per resolution level (default 64, 128, 128).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        dropout: dropout inside the residual blocks (Ho et al.: 0.1).
        attention: self-attention at the lowest resolution and in the middle.
        image_shape: (C, H, W) of the flat input, (1, 28, 28) for MNIST.
    """

    def __init__(self, channels=(64, 128, 128), num_res_blocks: int = 2, dropout: float = 0.1,
                 attention: bool = True, image_shape=(1, 28, 28)):
        super().__init__()
        channels, image_shape = check_image_settings("DDPMUNet", channels, image_shape)
        if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 1:
            raise ValueError(f"DDPMUNet: num_res_blocks must be a positive integer, got {num_res_blocks!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DDPMUNet: dropout must be in [0, 1), got {dropout!r}")
        self.image_shape = image_shape
        base, time_dim = channels[0], 4 * channels[0]
        self.time_embedding = nn.Sequential(SinusoidalTimeEmbedding(base), nn.Linear(base, time_dim), nn.SiLU(),
                                            nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(image_shape[0], base, 3, padding=1)
        lowest = len(channels) - 1

        def attend(level: int, c: int) -> nn.Module:
            return SelfAttention(c) if attention and level == lowest else nn.Identity()

        self.down, self.down_attention, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skip_channels, c = [base], base
        for level, width in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(ResidualBlock(c, width, time_dim, dropout))
                self.down_attention.append(attend(level, width))
                c = width
                skip_channels.append(c)
            if level != lowest:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_channels.append(c)
        self.middle = nn.ModuleList([ResidualBlock(c, c, time_dim, dropout),
                                     SelfAttention(c) if attention else nn.Identity(),
                                     ResidualBlock(c, c, time_dim, dropout)])
        self.up, self.up_attention, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in range(lowest, -1, -1):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResidualBlock(c + skip_channels.pop(), channels[level], time_dim, dropout))
                self.up_attention.append(attend(level, channels[level]))
                c = channels[level]
            if level != 0:
                self.upsample.append(UpsampleConv(c))
        self.head = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, image_shape[0], 3, padding=1))
        self.num_res_blocks, self.levels = num_res_blocks, len(channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat of shape (batch, C*H*W) for flat x of that shape and t of shape (batch, 1)."""
        h = self.stem(flat_to_image(self, x))
        emb = self.time_embedding(t.reshape(-1, 1)).to(h.dtype)
        skips, blocks = [h], iter(zip(self.down, self.down_attention))
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                block, attention = next(blocks)
                h = attention(block(h, emb))
                skips.append(h)
            if level != self.levels - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        blocks = iter(zip(self.up, self.up_attention))
        for level in range(self.levels - 1, -1, -1):
            for _ in range(self.num_res_blocks + 1):
                block, attention = next(blocks)
                skip = skips.pop()
                h = attention(block(torch.cat([h, skip], dim=1), emb))
            if level != 0:
                h = self.upsample[self.levels - 1 - level](h, skips[-1].shape[-2:])
        return self.head(h).reshape(x.shape[0], -1)
