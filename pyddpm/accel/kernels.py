"""pyddpm._C's CPU kernels for the fast networks as torch.library ops: each op's arguments are checked in one
function (``torch._check_*``, so the same check runs on real tensors, fake ones and under torch.compile), its
fake kernel gives the output's metadata, and the ops that train carry their gradient formula. The kernels take
raw pointers (DESIGN.md: the extension does not link libtorch); ``available()`` says whether they are built.

    pyddpm::log_sigmoid(x) -> y                    y = log sigmoid(x) = min(x, 0) - log1p(e^-|x|)
    pyddpm::log_sigmoid_backward(x, grad_y)        dL/dx = dL/dy * sigmoid(-x)
    pyddpm::group_norm_nhwc(x, weight, bias, add, groups, eps, silu) -> (y, mean, rstd)
                                                   y = GroupNorm(x + add) (Wu & He 2018, eq. 1), then SiLU
    pyddpm::group_norm_nhwc_backward(grad_y, x, weight, bias, mean, rstd, groups, silu) -> (dx, dweight, dbias)
    pyddpm::dropout(x, seed, threshold, scale)     y = x * scale where the element's Philox word >= threshold, else 0
    pyddpm::silu_(x)                               x <- x * sigmoid(x), in place
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops import _C, _DTYPE_CODES

DTYPES = (torch.float32, torch.bfloat16)  # what every kernel here takes


def available(name: str = "group_norm_nhwc") -> bool:
    """Whether pyddpm._C is built with the kernel ``name``."""
    return _C is not None and hasattr(_C, name)


def _dense_layout(x: Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def takes(x: Tensor) -> bool:
    """Whether the elementwise kernels take ``x``: a float32 or bfloat16 CPU tensor, dense in NCHW or channels-last
    order (the layouts ``_check_elementwise`` accepts)."""
    return x.device.type == "cpu" and x.dtype in DTYPES and _dense_layout(x)


def _check_elementwise(op: str, **tensors: Tensor) -> Tensor:
    """The one check of an elementwise op: each tensor float32 or bfloat16 on the CPU, dense (contiguous or
    channels-last), all of the first's shape, dtype and strides (the kernel walks them in memory order)."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        torch._check_value(t.device.type == "cpu", lambda: f"{op}: {name} must be on the CPU, got {t.device}")
        torch._check_value(t.dtype in DTYPES, lambda: f"{op}: {name} must be float32 or bfloat16, got {t.dtype}")
        torch._check_value(_dense_layout(t), lambda: f"{op}: {name} must be contiguous or channels-last")
        torch._check_value(t.shape == first.shape and t.dtype == first.dtype and t.stride() == first.stride(),
                           lambda: f"{op}: {name} must have {first_name}'s shape, dtype and strides")
    return first


def _threads() -> int:
    return torch.get_num_threads()


# --- LogSigmoid -----------------------------------------------------------------------------------------------

@torch.library.custom_op("pyddpm::log_sigmoid", mutates_args=())
def log_sigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x), elementwise, in one pass (within 3 float32 ulps of float64's)."""
    _check_elementwise("log_sigmoid", x=x)
    y = torch.empty_like(x)  # x is dense: y gets its strides
    _C.log_sigmoid(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), y=y.data_ptr(), n=x.numel(), num_threads=_threads())
    return y


@log_sigmoid.register_fake
def _(x):
    _check_elementwise("log_sigmoid", x=x)
    return torch.empty_like(x)


@torch.library.custom_op("pyddpm::log_sigmoid_backward", mutates_args=())
def log_sigmoid_backward(x: Tensor, grad_y: Tensor) -> Tensor:
    """dL/dx = dL/dy * sigmoid(-x), the derivative of log sigmoid at x."""
    _check_elementwise("log_sigmoid_backward", x=x, grad_y=grad_y)
    grad_x = torch.empty_like(x)
    _C.log_sigmoid_backward(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), grad_y=grad_y.data_ptr(),
                            grad_x=grad_x.data_ptr(), n=x.numel(), num_threads=_threads())
    return grad_x


@log_sigmoid_backward.register_fake
def _(x, grad_y):
    _check_elementwise("log_sigmoid_backward", x=x, grad_y=grad_y)
    return torch.empty_like(x)


def laid_out(grad: Tensor, shape, strides, dtype: torch.dtype) -> Tensor:
    """``grad`` in ``dtype`` with ``strides`` (one copy where they differ): the layout an elementwise kernel's
    forward ran over, which its backward takes."""
    if grad.dtype == dtype and grad.stride() == tuple(strides):
        return grad
    return torch.empty_strided(shape, strides, dtype=dtype).copy_(grad)


def _log_sigmoid_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _log_sigmoid_grad(ctx, grad):
    (x,) = ctx.saved_tensors
    return log_sigmoid_backward(x, laid_out(grad, x.shape, x.stride(), x.dtype))


log_sigmoid.register_autograd(_log_sigmoid_grad, setup_context=_log_sigmoid_setup)


# --- GroupNorm (+ SiLU) of channels-last maps -------------------------------------------------------------------

def _check_group_norm(op: str, x: Tensor, weight: Tensor, bias: Tensor, add: Optional[Tensor], groups: int,
                      **more: Tensor) -> None:
    """The one check of the GroupNorm ops: x a channels-last float32 or bfloat16 (N, C, H, W) CPU map, C a multiple
    of ``groups``; weight and bias float32 (C,); add float32 (N, C) or None; ``more`` laid out as x."""
    torch._check_value(x.dim() == 4, lambda: f"{op}: x must be (N, C, H, W), got {tuple(x.shape)}")
    torch._check_value(x.device.type == "cpu" and x.dtype in DTYPES,
                       lambda: f"{op}: x must be float32 or bfloat16 on the CPU, got {x.dtype} on {x.device}")
    torch._check_value(x.is_contiguous(memory_format=torch.channels_last), lambda: f"{op}: x must be channels-last")
    channels = x.shape[1]
    torch._check_value(groups >= 1 and channels % groups == 0,
                       lambda: f"{op}: groups must divide the {channels} channels, got {groups}")
    for name, t, shape in (("weight", weight, (channels,)), ("bias", bias, (channels,)),
                           ("add", add, (x.shape[0], channels))):
        if t is not None:
            torch._check_value(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                               and tuple(t.shape) == shape,
                               lambda: f"{op}: {name} must be a contiguous float32 CPU tensor of shape {shape}")
    for name, t in more.items():
        _check_elementwise(op, x=x, **{name: t})


def _stats_like(x: Tensor, groups: int) -> Tensor:
    return x.new_empty((x.shape[0], groups), dtype=torch.float32)


@torch.library.custom_op("pyddpm::group_norm_nhwc", mutates_args=())
def group_norm_nhwc(x: Tensor, weight: Tensor, bias: Tensor, add: Optional[Tensor], groups: int, eps: float,
                    silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y = GroupNorm(x + add[:, :, None, None]) with ``groups`` groups (statistics in float64),
    then SiLU when ``silu``; each group's mean and 1 / sqrt(var + eps) for the backward."""
    _check_group_norm("group_norm_nhwc", x, weight, bias, add, groups)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean, rstd = _stats_like(x, groups), _stats_like(x, groups)
    n, c, h, w = x.shape
    _C.group_norm_nhwc(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), add=0 if add is None else add.data_ptr(),
                       y=y.data_ptr(), gamma=weight.data_ptr(), beta=bias.data_ptr(), batch=n, hw=h * w, channels=c,
                       groups=groups, eps=eps, silu=silu, mean=mean.data_ptr(), rstd=rstd.data_ptr(),
                       num_threads=_threads())
    return y, mean, rstd


@group_norm_nhwc.register_fake
def _(x, weight, bias, add, groups, eps, silu):
    _check_group_norm("group_norm_nhwc", x, weight, bias, add, groups)
    return torch.empty_like(x, memory_format=torch.channels_last), _stats_like(x, groups), _stats_like(x, groups)


@torch.library.custom_op("pyddpm::group_norm_nhwc_backward", mutates_args=())
def group_norm_nhwc_backward(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor,
                             groups: int, silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dx, dL/dweight, dL/dbias) of ``group_norm_nhwc`` (without add) from dL/dy and its mean and rstd."""
    _check_group_norm("group_norm_nhwc_backward", x, weight, bias, None, groups, grad_y=grad_y)
    for name, t in (("mean", mean), ("rstd", rstd)):
        torch._check_value(t.dtype == torch.float32 and t.is_contiguous() and t.shape == (x.shape[0], groups),
                           lambda: f"group_norm_nhwc_backward: {name} must be float32 of shape (N, groups)")
    n, c, h, w = x.shape
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    grad_weight, grad_bias = x.new_empty((n, c), dtype=torch.float32), x.new_empty((n, c), dtype=torch.float32)
    _C.group_norm_backward_nhwc(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), grad_y=grad_y.data_ptr(),
                                grad_x=grad_x.data_ptr(), mean=mean.data_ptr(), rstd=rstd.data_ptr(),
                                gamma=weight.data_ptr(), beta=bias.data_ptr(), batch=n, hw=h * w, channels=c,
                                groups=groups, silu=silu, grad_gamma=grad_weight.data_ptr(),
                                grad_beta=grad_bias.data_ptr(), num_threads=_threads())
    return grad_x, grad_weight.sum(0), grad_bias.sum(0)


@group_norm_nhwc_backward.register_fake
def _(grad_y, x, weight, bias, mean, rstd, groups, silu):
    _check_group_norm("group_norm_nhwc_backward", x, weight, bias, None, groups, grad_y=grad_y)
    return (torch.empty_like(x, memory_format=torch.channels_last), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape))


def _group_norm_setup(ctx, inputs, output):
    x, weight, bias, add, groups, eps, silu = inputs
    torch._check_value(add is None, lambda: "group_norm_nhwc: no gradient with add; add it to x first")
    ctx.save_for_backward(x, weight, bias, output[1], output[2])
    ctx.groups, ctx.silu = groups, silu


def _group_norm_grad(ctx, grad_y, grad_mean, grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    grad_y = grad_y.to(x.dtype).contiguous(memory_format=torch.channels_last)
    grad_x, grad_weight, grad_bias = group_norm_nhwc_backward(grad_y, x, weight, bias, mean, rstd, ctx.groups,
                                                              ctx.silu)
    return grad_x, grad_weight, grad_bias, None, None, None, None


group_norm_nhwc.register_autograd(_group_norm_grad, setup_context=_group_norm_setup)


# --- Dropout --------------------------------------------------------------------------------------------------

DROPOUT_BITS = 16  # each element's dropout draw: a 16-bit word of Philox4x32-10(element index / 8; seed)


@torch.library.custom_op("pyddpm::dropout", mutates_args=())
def dropout(x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
    """x * scale where the element's 16-bit Philox word (``seed``, element index) is >= ``threshold``, else 0:
    dropout with probability threshold / 2^16, the same mask for the same seed (the backward draws it again)."""
    _check_dropout(x, seed, threshold)
    y = torch.empty_like(x)
    _C.dropout(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), y=y.data_ptr(), n=x.numel(), seed=seed,
               threshold=threshold, scale=scale, num_threads=_threads())
    return y


def _check_dropout(x: Tensor, seed: int, threshold: int) -> None:
    _check_elementwise("dropout", x=x)
    torch._check_value(0 <= seed < 2**63, lambda: f"dropout: seed must be in [0, 2**63), got {seed}")
    torch._check_value(0 <= threshold <= 2**DROPOUT_BITS,
                       lambda: f"dropout: threshold must be in [0, {2**DROPOUT_BITS}], got {threshold}")


@dropout.register_fake
def _(x, seed, threshold, scale):
    _check_dropout(x, seed, threshold)
    return torch.empty_like(x)


def _dropout_setup(ctx, inputs, output):
    x, ctx.seed, ctx.threshold, ctx.scale = inputs
    ctx.shape, ctx.strides, ctx.dtype = x.shape, x.stride(), x.dtype


def _dropout_grad(ctx, grad):
    grad = laid_out(grad, ctx.shape, ctx.strides, ctx.dtype)
    return dropout(grad, ctx.seed, ctx.threshold, ctx.scale), None, None, None


dropout.register_autograd(_dropout_grad, setup_context=_dropout_setup)


# --- SiLU in place ----------------------------------------------------------------------------------------------

@torch.library.custom_op("pyddpm::silu_", mutates_args=("x",))
def silu_(x: Tensor) -> None:
    """x <- x * sigmoid(x) in place (float32 within a few ulps; bfloat16 to 1e-4 relative, then rounded)."""
    _check_elementwise("silu_", x=x)
    _C.silu(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), y=x.data_ptr(), n=x.numel(), num_threads=_threads())


@silu_.register_fake
def _(x):
    _check_elementwise("silu_", x=x)
