"""Convolution levers: channels-last maps (oneDNN's own layout), and for bf16 training the transposed convolutions
through oneDNN's convolution primitives and the DDPM U-Net's attention in float32."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nets.unet_ddpm import SelfAttention


def channels_last_output(module: nn.Module, args, output: Tensor) -> Tensor:
    """A forward hook for a one-channel-input Conv2d of a channels-last copy: its output channels-last (with one
    input channel both layouts are the same memory, and torch then returns NCHW, which every later layer would
    keep). A hook, so the state_dict's names stay the network's."""
    return output.contiguous(memory_format=torch.channels_last)


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _AdjointConvTranspose(torch.autograd.Function):
    """A transposed convolution (groups 1, no bias) as the adjoint of the convolution it transposes: the forward is
    that convolution's input gradient, the backward its forward (dx) and its weight gradient (dW)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, out_size: tuple, arguments: tuple) -> Tensor:
        ctx.arguments = arguments
        ctx.save_for_backward(x, weight)
        like = torch.empty((x.shape[0], weight.shape[1], *out_size), dtype=x.dtype, memory_format=_memory_format(x))
        return torch.ops.aten.convolution_backward(x, like, weight, None, *arguments, False, [0, 0], 1,
                                                   [True, False, False])[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.arguments
        grad = grad.to(x.dtype).contiguous(memory_format=_memory_format(x))
        grad_x = (nn.functional.conv2d(grad, weight, None, stride, padding, dilation)
                  if ctx.needs_input_grad[0] else None)
        grad_w = (torch.ops.aten.convolution_backward(x, grad, weight, None, stride, padding, dilation, False,
                                                      [0, 0], 1, [False, True, False])[1]
                  if ctx.needs_input_grad[1] else None)
        return grad_x, grad_w, None, None


class AdjointConvTranspose(nn.Module):
    """A ConvTranspose2d (groups 1, zero padding; its own weight and bias Parameters, so the same state_dict): under
    CPU bfloat16 autocast with gradients on, through ``_AdjointConvTranspose`` (ATen's bfloat16 transposed
    convolution takes a path ~2x slower; the bias added to the bfloat16 result); otherwise (float32, or no
    gradients: sampling) as the module, so that a training copy samples exactly as the network it was made from."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.output_padding = conv.output_padding
        self.arguments = (list(conv.stride), list(conv.padding), list(conv.dilation))

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and torch.is_autocast_enabled("cpu") and x.device.type == "cpu"
                and x.dim() == 4):
            return nn.functional.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                                  self.output_padding, 1, self.dilation)
        dtype = torch.get_autocast_dtype("cpu")
        out_size = tuple((size - 1) * s - 2 * p + d * (k - 1) + extra + 1 for size, s, p, d, k, extra in zip(
            x.shape[2:], self.stride, self.padding, self.dilation, self.weight.shape[2:], self.output_padding))
        y = _AdjointConvTranspose.apply(x.to(dtype), self.weight.to(dtype), out_size, self.arguments)
        return y if self.bias is None else y + self.bias.to(dtype).reshape(1, -1, 1, 1)


class Float32Attention(SelfAttention):
    """A DDPM U-Net SelfAttention (its own modules and state_dict names) whose attention of bfloat16 q, k, v (under
    CPU bf16 autocast) is computed in float32 as softmax(q k^T / sqrt(c)) v (Vaswani et al. 2017, eq. 1); float32
    q, k, v go to SDPA as in the network."""

    def __init__(self, attention: SelfAttention):
        nn.Module.__init__(self)
        self.norm, self.qkv, self.out = attention.norm, attention.qkv, attention.out

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.dtype == torch.float32 or q.device.type != "cpu":
            return super().attend(q, k, v)
        dtype = q.dtype
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
            return (weights @ v).to(dtype)
