"""The exercise's MNIST U-Net: a ScoreNetwork0-style encoder/decoder on flat images, t as an extra input channel."""
from __future__ import annotations

import re

import torch
from torch import nn


def check_image_settings(net: str, channels, image_shape) -> tuple[list[int], tuple[int, int, int]]:
    """(channels, image_shape) as validated lists/tuples of positive ints; ValueError names the setting."""
    channels = list(channels)
    image_shape = tuple(image_shape)
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"{net}: channels must be a non-empty list of positive integers, got {channels!r}")
    if len(image_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape):
        raise ValueError(f"{net}: image_shape must be (channels, height, width) of positive integers, "
                         f"got {image_shape!r}")
    return channels, image_shape


def flat_to_image(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x of shape (batch, C*H*W) viewed as (batch, C, H, W), with an error naming the expected shape."""
    numel = net.image_shape[0] * net.image_shape[1] * net.image_shape[2]
    if x.dim() != 2 or x.shape[1] != numel:
        raise ValueError(f"{type(net).__name__} expects x of shape (batch, {numel}) "
                         f"(flat {'x'.join(map(str, net.image_shape))} images), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], *net.image_shape)


class ExerciseUNet(nn.Module):
    """eps_theta(x_t, t) as the exercise's U-Net (ScoreNetwork0 of the course's unet.py), made size-configurable.

    Encoder: [image, t] -> conv -> LogSigmoid, then per level max-pool (padding 1 at odd sizes, so
    28 -> 14 -> 7 -> 4 -> 2) -> conv -> LogSigmoid. Decoder: transposed convs back up, each level's input
    concatenated with the encoder output of the same size, ending in conv -> LogSigmoid -> conv to the
    image channels. All convs are 3x3. The time step enters as one constant extra input channel.

    Args:
        channels: feature channels per level (the exercise: 32, 64, 128, 256, 256 for 28 -> 2).
        image_shape: (C, H, W) of the flat input, (1, 28, 28) for MNIST.
    """

    def __init__(self, channels=(32, 64, 128, 256, 256), image_shape=(1, 28, 28)):
        super().__init__()
        channels, image_shape = check_image_settings("ExerciseUNet", channels, image_shape)
        self.image_shape = image_shape
        c_in = image_shape[0]
        sizes = [image_shape[1:]]
        for _ in channels[1:]:
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        if min(sizes[-1]) < 1 or any(min(s) < 2 for s in sizes[:-1]):
            raise ValueError(f"ExerciseUNet: {len(channels)} levels are too many for {image_shape[1:]} images")
        self.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(c_in + 1, channels[0], 3, padding=1), nn.LogSigmoid())])
        for i in range(1, len(channels)):
            odd = tuple(s % 2 for s in sizes[i - 1])
            self.convs.append(nn.Sequential(
                nn.MaxPool2d(2, stride=2, padding=odd), nn.Conv2d(channels[i - 1], channels[i], 3, padding=1),
                nn.LogSigmoid()))
        self.tconvs = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):  # from level i (size sizes[i]) up to level i - 1
            extra = tuple(target - (2 * s - 1) for target, s in zip(sizes[i - 1], sizes[i]))
            width = channels[i] if i == len(channels) - 1 else 2 * channels[i]
            self.tconvs.append(nn.Sequential(
                nn.ConvTranspose2d(width, channels[i - 1], 3, stride=2, padding=1, output_padding=extra),
                nn.LogSigmoid()))
        head_in = 2 * channels[0] if len(channels) > 1 else channels[0]
        self.head = nn.Sequential(nn.Conv2d(head_in, channels[0], 3, padding=1), nn.LogSigmoid(),
                                  nn.Conv2d(channels[0], c_in, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat of shape (batch, C*H*W) for flat x of that shape and t of shape (batch, 1)."""
        image = flat_to_image(self, x)
        time = t.reshape(-1, 1, 1, 1).to(image.dtype).expand(image.shape[0], 1, *image.shape[2:])
        h = torch.cat([image, time], dim=1)
        skips = []
        for conv in self.convs:
            h = conv(h)
            skips.append(h)
        skips.pop()  # the bottom level feeds the decoder directly
        for i, tconv in enumerate(self.tconvs):
            h = tconv(h if i == 0 else torch.cat([h, skips.pop()], dim=1))
        if skips:
            h = torch.cat([h, skips.pop()], dim=1)
        return self.head(h).reshape(x.shape[0], -1)


_COURSE_TCONV = re.compile(r"(^|\.)_tconvs\.(\d+)\.")
_PYDDPM_HEAD = re.compile(r"(^|\.)head\.")


def from_course_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The course U-Net's parameter names as ``ExerciseUNet``'s, under any prefix (``network.`` in a DDPM):
    ``_convs.* -> convs.*``, ``_tconvs.0..L-2.* -> tconvs.*`` and the last ``_tconvs.L-1.{0,2}.* -> head.{0,2}.*``
    (the course's final conv -> LogSigmoid -> conv block). Other keys are kept as they are."""
    indices = [int(m.group(2)) for k in state_dict if (m := _COURSE_TCONV.search(k))]
    last = max(indices, default=-1)

    def rename(key: str) -> str:
        key = re.sub(r"(^|\.)_convs\.", r"\1convs.", key)
        return _COURSE_TCONV.sub(lambda m: f"{m.group(1)}head." if int(m.group(2)) == last
                                 else f"{m.group(1)}tconvs.{m.group(2)}.", key)

    return {rename(k): v for k, v in state_dict.items()}


def to_course_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``from_course_keys``: ``ExerciseUNet`` names as the course U-Net's (``head`` becomes the last
    ``_tconvs`` entry), so the course's ``model.load_state_dict`` reads the file."""
    indices = [int(m.group(2)) for k in state_dict if (m := re.search(r"(^|\.)tconvs\.(\d+)\.", k))]
    head = max(indices, default=-1) + 1

    def rename(key: str) -> str:
        key = re.sub(r"(^|\.)(convs|tconvs)\.", r"\1_\2.", key)
        return _PYDDPM_HEAD.sub(lambda m: f"{m.group(1)}_tconvs.{head}.", key)

    return {rename(k): v for k, v in state_dict.items()}
