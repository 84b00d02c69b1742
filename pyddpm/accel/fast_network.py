"""A network's fast copies on the CPU, for sampling (``fast_network``) and for training (``training_network``):
the same function in fewer cycles.

Each lever was chosen by measurement on 2-core AMD EPYC and Intel Xeon VMs (``benchmarks/bench_cpu.py`` prints
them side by side):

- ``nn.Linear`` (and, for sampling, the activation after it) through oneDNN (``torch.ops.mkldnn._linear_pointwise``;
  for training with its own backward): torch's float32 ``addmm`` goes to MKL, whose sgemm is about half as fast
  on AMD CPUs;
- ``nn.LogSigmoid`` through pyddpm._C's one-pass kernels, forward and backward (without the extension, as
  log(sigmoid(x)), exact below -20 as x): ATen's channels-last ``log_sigmoid`` is ~3x slower;
- convolutional networks in channels-last memory format, oneDNN's own layout (max-pooling ~6x faster, 3x3
  convolutions up to 2x), their GroupNorms (fused with the SiLU after them) through pyddpm._C's channels-last
  kernels, forward and backward (ATen's GroupNorm is 5-10x slower in channels-last than in NCHW);
- for sampling in float32, each convolution a ``FastConv``: on the 2 x 2 maps at a U-Net's bottom one dense
  matrix product, into one output channel pyddpm._C's 3 x 3 kernel (the exercise U-Net 1.09x faster in all);
- for sampling, each Conv2d's weight reordered into oneDNN's layout once (``PackedConv``; F.conv2d reorders it on
  every call): the DDPM U-Net 1.06x faster in float32, 1.02x in bf16, the same bits;
- for sampling, the DDPM U-Net's nearest-neighbour upsampling and the 3 x 3 convolution after it as one stride-2
  4 x 4 transposed convolution (``FastUpsampleConv``: 4 multiply-adds per output pixel and channel pair instead
  of 9; the whole forward 1.06x faster in float32, 1.07x in bf16);
- in bf16 training, each transposed convolution through oneDNN's convolution primitives as the adjoint of the
  convolution it transposes (``TrainableConvTranspose``: ATen's bfloat16 transposed convolution is ~2x slower),
  and the DDPM U-Net's upsampling and convolution as FastUpsampleConv's 4x4 one (``TrainableUpsampleConv``);
- in training, ``nn.Dropout`` in one pass of pyddpm._C's kernel, the mask 16 Philox bits per element, drawn
  again from its seed in the backward (ATen's is one bernoulli float per element, ~10x slower), and the DDPM
  U-Net's bfloat16 self-attention in float32 (SDPA's bfloat16 CPU kernel is 4x slower at its 49 pixels);
- ``precision="bf16"``: Linear layers on oneDNN with bfloat16 copies of their weights (a SiLU after one through
  pyddpm._C's kernel, to 1e-4 before the rounding, and the last before a Linear of few outputs fused with it,
  ``SiluLinear``: oneDNN's fused swish cost ~2.5x as much), and convolutions with
  bfloat16 weights (made once; autocast would round the float32 weights on every call, 1.5x slower for the toy
  network, 4.7% for the DDPM U-Net) and the rest of the network under CPU
  bf16 autocast, for CPUs with AVX512-BF16 or AMX (refused on other CPUs, which emulate bfloat16 8-12x
  slower than float32); the output and the reverse-step update stay float32.

In float32 the result equals the network's own within float rounding (a different summation order); the samplers
use it by default on the CPU, and ``fast=False`` (``--eager``) gives the network unchanged, bit for bit.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from ..nets.fc import FcNetwork
from ..nets.rewrite import replace_modules
from ..nets.unet_ddpm import ResidualBlock, SelfAttention, UpsampleConv

from ..ops import _C, _DTYPE_CODES  # pyddpm._C (None when not built: GroupNorm stays ATen's) and its dtype codes

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # the GroupNorm kernels' dtypes

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has bfloat16 arithmetic of its own: a CPU with AVX512-BF16 or AMX (any other device: True,
    its autocast decides). Other CPUs emulate it: on an AVX2-only AMD EPYC, 2 threads, a DDPM U-Net training step
    took 11.2 s in bf16 against 1.03 s in float32 (oneDNN has no bf16 convolution there; torch falls back to its
    slow one)."""
    if torch.device(device).type != "cpu":
        return True
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def check_precision_hardware(precision: str, device: torch.device | str, flag: str = "--precision bf16") -> None:
    """ValueError naming ``flag`` when ``precision`` is bf16 and ``device`` is a CPU without bfloat16 arithmetic
    (``native_bf16``), where it would run several times slower than float32."""
    if check_precision(precision) == "bf16" and not native_bf16(device):
        raise ValueError(f"{flag}: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX), and emulated bf16 "
                         "runs 8-12x slower than float32 here; leave it out (float32 is the default)")


def check_network_options(precision: str, fast: bool) -> None:
    """ValueError unless the samplers can evaluate a network in ``precision`` with ``fast`` (only the fast copy
    runs in bf16)."""
    if check_precision(precision) != "fp32" and not fast:
        raise ValueError(f"--precision {precision} runs on the fast network; leave out --eager (fast=False)")


class _LogSigmoid(torch.autograd.Function):
    """log sigmoid(x) = log(sigmoid(c)) + (x - c) with c = max(x, -20); d/dx = 1 - sigmoid(c) (= sigmoid(-x) to
    float32 rounding: below -20 both are 1 - 2e-9). Without pyddpm._C."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        c = x.clamp_min(-20.0)
        s = torch.sigmoid(c)
        ctx.save_for_backward(s)
        return s.log().add_(x - c)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        return grad * (1.0 - s)


def _laid_out(grad: Tensor, shape, strides, dtype: torch.dtype) -> Tensor:
    """``grad`` in ``dtype`` with ``strides``: the layout an elementwise kernel's forward ran over (one copy when
    it differs)."""
    if grad.dtype == dtype and grad.stride() == tuple(strides):
        return grad
    return torch.empty_strided(shape, strides, dtype=dtype).copy_(grad)


class _KernelLogSigmoid(torch.autograd.Function):
    """log sigmoid(x) with pyddpm._C's one-pass kernels both ways: the forward saves x, the backward is
    dL/dy * sigmoid(-x)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.empty_like(x)  # x is dense: y gets its strides, and the kernel runs over both in memory order
        _C.log_sigmoid(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), y=y.data_ptr(), n=x.numel(),
                       num_threads=torch.get_num_threads())
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        grad = _laid_out(grad, x.shape, x.stride(), x.dtype)
        grad_x = torch.empty_like(x)
        _C.log_sigmoid_backward(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), grad_y=grad.data_ptr(),
                                grad_x=grad_x.data_ptr(), n=x.numel(), num_threads=torch.get_num_threads())
        return grad_x


def _elementwise_kernel_takes(x: Tensor, kernel: str) -> bool:
    """Whether pyddpm._C's elementwise ``kernel`` (log_sigmoid, dropout) takes ``x``: float32 or bfloat16 on the
    CPU, contiguous in NCHW or channels-last order."""
    return (_C is not None and hasattr(_C, kernel) and x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES
            and (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))))


class FastLogSigmoid(nn.Module):
    """log sigmoid(x) in one pass, forward and backward, with pyddpm._C's kernels (min(x, 0) - log1p(exp(-|x|)),
    within 3 float32 ulps; ATen's channels-last log_sigmoid is ~3x slower). Other inputs, or without the
    extension: from sigmoid and log, exact below -20 as x (log sigmoid(x) = x - log(1 + e^x) equals x in float32
    there). Finite everywhere, and so is its gradient."""

    def forward(self, x: Tensor) -> Tensor:
        if _elementwise_kernel_takes(x, "log_sigmoid"):
            return _KernelLogSigmoid.apply(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _LogSigmoid.apply(x)
        c = x.clamp_min(-20.0)
        return torch.sigmoid(c).log_().add_(x.sub(c))


class FastGroupNorm(nn.Module):
    """``norm(x)``, then SiLU when ``silu``, for channels-last float32 or bfloat16 maps on the CPU in one
    pyddpm._C kernel (inference): two passes over each map, statistics in float64. ATen's GroupNorm is 5-10x
    slower in channels-last than in NCHW, and its SiLU a third pass. Other inputs, and inputs that need
    gradients, go to F.group_norm (and F.silu)."""

    def __init__(self, norm: nn.GroupNorm, silu: bool = False):
        super().__init__()
        self.num_groups, self.eps, self.silu = norm.num_groups, norm.eps, silu
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach().float().clone(),
                                                                    requires_grad=False)
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach().float().clone(),
                                                                requires_grad=False)

    def forward(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        """norm(x + add[:, :, None, None]) (then SiLU), ``add`` of shape (N, C) or None: folded into the kernel's
        statistics, it costs no pass over the map."""
        if add is not None:
            add = add.float().contiguous()
        if not self._kernel_takes(x) or (add is not None and add.shape != x.shape[:2]):
            if add is not None:
                x = x + add[:, :, None, None].to(x.dtype)
            weight, bias = ((p if p is None or x.dtype in _KERNEL_DTYPES else p.to(x.dtype))
                            for p in (self.weight, self.bias))
            return _torch_group_norm(x, self.num_groups, weight, bias, self.eps, self.silu)
        y = torch.empty_like(x, memory_format=torch.channels_last)
        n, c, h, w = x.shape
        _C.group_norm_nhwc(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(),
                           add=0 if add is None else add.data_ptr(), y=y.data_ptr(),
                           gamma=0 if self.weight is None else self.weight.data_ptr(),
                           beta=0 if self.bias is None else self.bias.data_ptr(), batch=n, hw=h * w, channels=c,
                           groups=self.num_groups, eps=self.eps, silu=self.silu, mean=0, rstd=0,
                           num_threads=torch.get_num_threads())
        return y

    def _kernel_takes(self, x: Tensor) -> bool:
        return (_kernel_takes_map(x) and not (torch.is_grad_enabled() and x.requires_grad)
                and all(p is None or (p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()
                                      and p.numel() == x.shape[1]) for p in (self.weight, self.bias)))


def _kernel_takes_map(x: Tensor) -> bool:
    """Whether pyddpm._C's GroupNorm kernels take ``x``: a channels-last float32 or bfloat16 map on the CPU."""
    return (group_norm_kernel_available() and x.device.type == "cpu" and x.dim() == 4 and x.dtype in _KERNEL_DTYPES
            and x.is_contiguous(memory_format=torch.channels_last))


def _torch_group_norm(x: Tensor, groups: int, weight, bias, eps: float, silu: bool) -> Tensor:
    """F.group_norm, then F.silu when ``silu``: what the kernels compute, for the inputs they do not take."""
    y = nn.functional.group_norm(x, groups, weight, bias, eps)
    return nn.functional.silu(y) if silu else y


class _GroupNormFunction(torch.autograd.Function):
    """GroupNorm (then SiLU) of a channels-last map with pyddpm._C's kernels both ways: the forward saves each
    group's mean and 1/std, the backward recomputes the normalized values from them (two passes over x and
    dL/dy)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool) -> Tensor:
        n, c, h, w = x.shape
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, rstd = (torch.empty(n, groups) for _ in range(2))
        _C.group_norm_nhwc(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), add=0, y=y.data_ptr(),
                           gamma=weight.data_ptr(), beta=bias.data_ptr(), batch=n, hw=h * w, channels=c,
                           groups=groups, eps=eps, silu=silu, mean=mean.data_ptr(), rstd=rstd.data_ptr(),
                           num_threads=torch.get_num_threads())
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        grad_weight, grad_bias = (torch.empty(n, c) for _ in range(2))
        _C.group_norm_backward_nhwc(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), grad_y=grad.data_ptr(),
                                    grad_x=grad_x.data_ptr(), mean=mean.data_ptr(), rstd=rstd.data_ptr(),
                                    gamma=weight.data_ptr(), beta=bias.data_ptr(), batch=n, hw=h * w, channels=c,
                                    groups=ctx.groups, silu=ctx.silu, grad_gamma=grad_weight.data_ptr(),
                                    grad_beta=grad_bias.data_ptr(), num_threads=torch.get_num_threads())
        return grad_x, grad_weight.sum(0), grad_bias.sum(0), None, None, None


class TrainableGroupNorm(nn.Module):
    """An nn.GroupNorm (its own weight and bias Parameters, so the same state_dict), then SiLU when ``silu``, with
    gradients: channels-last float32 or bfloat16 maps on the CPU through pyddpm._C's kernels (ATen's channels-last
    GroupNorm is 5-10x slower), anything else through F.group_norm (and F.silu)."""

    def __init__(self, norm: nn.GroupNorm, silu: bool = False):
        super().__init__()
        self.num_groups, self.eps, self.silu = norm.num_groups, norm.eps, silu
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: Tensor) -> Tensor:
        if (_kernel_takes_map(x) and self.weight is not None and self.weight.dtype == torch.float32
                and self.bias.dtype == torch.float32):
            return _GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps, self.silu)
        return _torch_group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.silu)


def onednn_linear_wins() -> bool:
    """Whether this CPU runs oneDNN's Linear levers faster than ATen's Linear and activation: everywhere but on x86
    CPUs without AVX-512. There oneDNN's fused SiLU, GELU and tanh cost more than ATen's own op after the product
    (an AVX2-only AMD EPYC, 2 threads, Linear 256 x 256 at batch 5000: with SiLU 7.15 ms fused against 6.05 ms;
    ReLU the same either way), and its Linear backward more than torch's (the toy FcNetwork's training step 14.8
    against 13.5 ms), so the fast copies keep those activations, and the training copies torch's Linear."""
    return torch.backends.cpu.get_cpu_capability() != "AVX2"


def _onednn_activation(module: nn.Module) -> tuple[str, list, str] | None:
    """(attr, scalars, algorithm) of oneDNN's fused post-op for ``module``, None when it has none or when ATen's
    own op after the product is faster (``onednn_linear_wins``: all but ReLU and LeakyReLU)."""
    if type(module) is nn.ReLU:
        return "relu", [], ""
    if type(module) is nn.LeakyReLU:
        return "leaky_relu", [module.negative_slope], ""
    if not onednn_linear_wins():
        return None
    if type(module) is nn.SiLU:
        return "swish", [], ""
    if type(module) is nn.Tanh:
        return "tanh", [], ""
    if type(module) is nn.GELU:
        return "gelu", [], module.approximate
    return None


def _kernel_silu_after_product(dtype: torch.dtype) -> bool:
    """Whether a Linear's SiLU runs as pyddpm._C's kernel, in place on the product (in bfloat16 on the rounded
    product, as under autocast), rather than as oneDNN's fused swish or ATen's SiLU after the product. bfloat16:
    1.72 against 1.83 ms for 5000 x 256 x 256 on a 2-core AMD EPYC with AVX512-BF16 (the kernel alone 0.16 ms).
    float32 on x86 without AVX-512 (``onednn_linear_wins`` false): 4.95 against 5.28 ms for ATen's SiLU after the
    product (an AVX2-only AMD EPYC, 2 threads); with AVX-512 the fused swish stays (3.31 against 3.36 ms)."""
    return (_C is not None and hasattr(_C, "silu")
            and (dtype == torch.bfloat16 or (dtype == torch.float32 and not onednn_linear_wins())))


class OneDNNLinear(nn.Module):
    """``activation(linear(x))`` in one oneDNN call, for inference (no autograd), in float32 or with bfloat16
    weights (``dtype``): then x is rounded to bfloat16 as autocast would and the product accumulates in float32;
    a SiLU is applied to the product (rounded to bfloat16) by pyddpm._C's kernel where that is faster
    (``_kernel_silu_after_product``), other activations by oneDNN before the rounding."""

    def __init__(self, linear: nn.Linear, activation: nn.Module | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype, copy=True), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype, copy=True),
                                                                  requires_grad=False)
        self.kernel_silu = type(activation) is nn.SiLU and _kernel_silu_after_product(dtype)
        self.attr, self.scalars, self.algorithm = (("none", [], "") if activation is None or self.kernel_silu
                                                   else _onednn_activation(activation))

    def product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """This layer's activation of x weight^T + bias (``weight`` in this layer's dtype)."""
        y = torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, self.attr, self.scalars,
                                               self.algorithm)
        if self.kernel_silu:
            _C.silu(dtype=_DTYPE_CODES[y.dtype], x=y.data_ptr(), y=y.data_ptr(), n=y.numel(),
                    num_threads=torch.get_num_threads())
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.product(x, self.weight, self.bias)


class _OneDNNLinearFunction(torch.autograd.Function):
    """x W^T + b and its gradients: x W^T and dx = g W on oneDNN, dW = g^T x by torch.mm, db = sum g."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        linear = torch.ops.mkldnn._linear_pointwise
        grad_x = linear(grad, weight.t().contiguous(), None, "none", [], "") if ctx.needs_input_grad[0] else None
        # dW through torch.mm, which reads the transposes in place: oneDNN's needs both copied, and was 1.1-7x
        # slower with the copies (1000 x 256 x 256: 1.00 against 0.88 ms; an output layer of 2: 0.30 against 0.04)
        grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class TrainableOneDNNLinear(nn.Module):
    """An ``nn.Linear`` (its own weight and bias Parameters, so the same state_dict) on oneDNN, with gradients."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            return nn.functional.linear(x, self.weight, self.bias)
        return _OneDNNLinearFunction.apply(x.contiguous(), self.weight, self.bias)


def one_time_step(t: Tensor) -> bool:
    """Whether every row of ``t`` holds the same time (as in the samplers' batches; a stride of 0 says so at once)."""
    return t.numel() > 0 and (t.stride(0) == 0 or bool((t == t.reshape(-1)[0]).all()))


class FirstLayerTimeBias(nn.Module):
    """``time_bias(t)``: an FcNetwork's first-layer bias plus its time columns times the time features of t, (rows
    of t, hidden), in float32 from the network's own weights. With it the first layer's pre-activation is the
    product over x and its input features only, plus this: one row for a batch at one time step. ``time_features``
    is the FcNetwork's (or its copy's) ``time_features``."""

    def __init__(self, network: FcNetwork, time_features):
        super().__init__()
        first = network.network[0]
        self.t_weight = nn.Parameter(first.weight.detach()[:, network.input_features:].float().clone(),
                                     requires_grad=False)
        self.bias = nn.Parameter(first.bias.detach().float().clone(), requires_grad=False)
        self.time_features = time_features

    def forward(self, t: Tensor) -> Tensor:
        with torch.autocast(t.device.type, enabled=False):
            return torch.addmm(self.bias, self.time_features(t.reshape(-1, 1).float()), self.t_weight.t())


class OneTimeStepFcNetwork(nn.Module):
    """An FcNetwork's fast copy (``fast``, its first layer a OneDNNLinear) that, for a batch at one time step (as
    the samplers' are), folds the time into the first layer: the time embedding is computed for one row, and the
    first layer's time columns times it, plus its bias, become the bias of a product over the other inputs only
    (the default toy network's first layer takes 32 time features of its 66 inputs). That bias is computed from
    the original weights and stays float32 in bf16 too (rounded, it would move a pre-activation of 200 by up to
    0.5); other batches (several time steps) take ``fast`` as it is."""

    def __init__(self, fast: FcNetwork, network: FcNetwork):
        super().__init__()
        self.fast = fast
        first = fast.network[0]
        self.x_weight = nn.Parameter(first.weight[:, :network.input_features].contiguous(), requires_grad=False)
        self.time_bias = FirstLayerTimeBias(network, fast.time_features)
        self.first = first
        self.rest = list(fast.network)[1:]  # the layers after the first (a plain list: slicing the Sequential
        # on every call made the bf16 forward 1.7x slower)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        fast = self.fast
        one_step = x.dim() == 2 and x.shape[1] == fast.input_dim and t.numel() == x.shape[0]
        if not (one_step and one_time_step(t)):
            return fast(x, t)
        bias = self.time_bias(t.reshape(-1)[:1])[0]
        inputs = x if fast.input_embedding is None else fast.input_embedding.with_input(x)
        h = self.first.product(inputs, self.x_weight, bias)  # a float32 bias: added before any rounding
        for layer in self.rest:
            h = layer(h)
        return h


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build and CPU run oneDNN's Linear in ``dtype`` (bfloat16 needs AVX512 or newer)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and (dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def _is_linear(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, TrainableOneDNNLinear)


class SiluLinear(nn.Module):
    """``linear(silu(x))`` for a Linear with at most 8 outputs (the toy networks' last layer) in one pass of
    pyddpm._C's kernel over float32 or bfloat16 x (2-D), float32 weights, a float32 result; for inference. On a
    2-core AMD EPYC with AVX512-BF16, 5000 x 256 -> 2: bfloat16 0.28 against 0.33 ms for the SiLU kernel then
    oneDNN's product, float32 0.39 against 0.50 ms for oneDNN's fused swish then its product."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().float().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(),
                                                                  requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()
        y = torch.empty(x.shape[0], self.weight.shape[0])
        _C.silu_linear(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), weight=self.weight.data_ptr(),
                       bias=0 if self.bias is None else self.bias.data_ptr(), y=y.data_ptr(), rows=x.shape[0],
                       features=x.shape[1], outs=y.shape[1], num_threads=torch.get_num_threads())
        return y


def _silu_linear_takes(children: list, i: int) -> bool:
    """Whether children[i:i + 2] is a SiLU and then a Linear that ``SiluLinear`` runs (faster on AVX-512 and on
    AVX2 alike: 5000 x 256 -> 2 on an AVX2-only AMD EPYC, 0.67 against 0.93 ms for ATen's SiLU and Linear)."""
    return (i + 1 < len(children) and type(children[i]) is nn.SiLU and _is_linear(children[i + 1])
            and _C is not None and hasattr(_C, "silu_linear")
            and children[i + 1].weight.shape[0] <= _C.silu_linear_max_outs)


def _fuse_linears(network: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``network`` with each Linear (and a fusable activation right after it in a Sequential) on oneDNN, its
    weights in ``dtype``, and a SiLU before a Linear of few outputs as one ``SiluLinear``."""

    def fused(module: nn.Module) -> nn.Module | None:
        if isinstance(module, nn.Sequential) and any(_is_linear(m) for m in module):
            layers, children = [], list(module)
            i = 0
            while i < len(children):
                child = children[i]
                after = children[i + 1] if i + 1 < len(children) else None
                if _silu_linear_takes(children, i):
                    layers.append(SiluLinear(children[i + 1]))
                    i += 2
                    continue
                fusable = after is not None and (_onednn_activation(after) is not None or (
                    type(after) is nn.SiLU and _kernel_silu_after_product(dtype)))
                if _is_linear(child) and fusable and not _silu_linear_takes(children, i + 1):
                    layers.append(OneDNNLinear(child, after, dtype))
                    i += 2
                    continue
                layers.append(OneDNNLinear(child, dtype=dtype) if _is_linear(child) else child)
                i += 1
            return nn.Sequential(*layers)
        return OneDNNLinear(module, dtype=dtype) if _is_linear(module) else None

    return replace_modules(network, fused)


def prefers_channels_last(network: nn.Module) -> bool:
    """Convolutions without ATen's GroupNorm: channels-last makes the exercise U-Net 1.2x (sampling) to 1.1x
    (training) faster, but ATen's GroupNorm 5-10x slower (the sampling copies use FastGroupNorm instead)."""
    modules = list(network.modules())
    return any(isinstance(m, nn.Conv2d) for m in modules) and not any(isinstance(m, nn.GroupNorm) for m in modules)


def channels_last_output(module: nn.Module, args, output: Tensor) -> Tensor:
    """A forward hook for a one-channel-input Conv2d of a channels-last copy: its output channels-last (with one
    input channel the NCHW and channels-last layouts are the same memory, and torch then returns NCHW, which
    every later layer would keep). A hook, so the state_dict's names stay the network's."""
    return output.contiguous(memory_format=torch.channels_last)


class PackedConv(nn.Module):
    """A Conv2d (zero padding) for inference whose weight oneDNN reorders into its own blocked layout once per input
    shape, not on every call as F.conv2d does (20-30 us a call: 64 channels at 7 x 7, batch 32, bfloat16, 0.217
    against 0.188 ms; the DDPM U-Net's 40 convolutions: its forward 1.02x faster in bf16, 1.06x in float32); the
    same bits. It takes channels-last CPU maps of the weight's dtype without gradients; other inputs (the stem's
    float32 image under autocast, NCHW, bfloat16 where oneDNN has none: a CPU without AVX-512) run the convolution
    itself. The reordered weights are not copied with the module (oneDNN's opaque tensors cannot be): a copy
    reorders them again."""

    MAX_SHAPES = 8  # input shapes with a reordered weight of their own (a sampler has one or two)

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.reorders = onednn_available(conv.weight.dtype)  # (once: the check costs 1-3 us, 40 convs a step)
        self._packed: dict[tuple[int, ...], Tensor] = {}

    def __getstate__(self):
        return {**self.__dict__, "_packed": {}}

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    @property
    def bias(self) -> Tensor | None:
        return self.conv.bias

    def takes(self, x: Tensor) -> bool:
        return (type(self.conv) is nn.Conv2d and x.device.type == "cpu" and x.dim() == 4
                and x.dtype == self.conv.weight.dtype
                and x.dtype in _KERNEL_DTYPES and self.reorders
                and x.is_contiguous(memory_format=torch.channels_last) and not torch.is_grad_enabled()
                and (x.dtype == torch.bfloat16 or not torch.is_autocast_enabled("cpu")))  # else autocast's

    def packed_weight(self, x: Tensor) -> Tensor:
        """The weight in oneDNN's layout for inputs of ``x``'s shape (``takes(x)``); past MAX_SHAPES shapes the
        weight as it is."""
        key = tuple(x.shape)
        if key not in self._packed:
            conv = self.conv
            if len(self._packed) >= self.MAX_SHAPES:
                return conv.weight
            self._packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight.detach(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                list(x.shape))
        return self._packed[key]

    def forward(self, x: Tensor) -> Tensor:
        if not self.takes(x):
            return self.conv(x)
        conv = self.conv
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed_weight(x), conv.bias, list(conv.padding),
                                                       list(conv.stride), list(conv.dilation), conv.groups, "none",
                                                       [], "")


def _packed_conv(module: nn.Module) -> nn.Module | None:
    """For ``replace_modules``: a PackedConv for each zero-padded Conv2d without hooks (a FastConv, which packs its
    own, is kept as it is)."""
    if type(module) is FastConv:
        return module
    return (PackedConv(module) if type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and not module._forward_hooks and not module._forward_pre_hooks else None)


class FastResidualBlock(nn.Module):
    """A DDPM U-Net ResidualBlock (nets.unet_ddpm) with each GroupNorm -> SiLU one kernel: for sampling
    FastGroupNorms, the time embedding's projection added inside the second one (no pass of its own) and, in
    float32, the residual sum inside conv2 (oneDNN's binary post-op); for training (``trainable``)
    TrainableGroupNorms, the block's own Parameters and state_dict names. The same function."""

    def __init__(self, block: ResidualBlock, trainable: bool = False):
        super().__init__()
        norm = TrainableGroupNorm if trainable else FastGroupNorm
        self.trainable = trainable
        self.norm1, self.conv1, self.time = norm(block.norm1, silu=True), block.conv1, block.time  # the block's
        self.norm2, self.conv2, self.dropout, self.skip = (norm(block.norm2, silu=True), block.conv2,  # order
                                                           block.dropout, block.skip)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.trainable:
            h = self.conv1(self.norm1(x)) + self.time(emb)[:, :, None, None]
            return self.skip(x) + self.conv2(self.dropout(self.norm2(h)))
        h = self.norm2(self.conv1(self.norm1(x)), add=self.time(emb))
        skip = self.skip(x)
        conv = self.conv2
        if (h.dtype == torch.float32 and conv.weight.dtype == torch.float32 and skip.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and h.device.type == "cpu" and not torch.is_grad_enabled()
                and not self.training):
            weight = conv.packed_weight(h) if type(conv) is PackedConv and conv.takes(h) else conv.weight
            conv = conv.conv if type(conv) is PackedConv else conv
            return torch.ops.mkldnn._convolution_pointwise.binary(
                h, skip, weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                conv.groups, "add", None, None, [], None)
        return skip + conv(self.dropout(h))


class FastConv(PackedConv):
    """A Conv2d or ConvTranspose2d (zero padding) for inference on channels-last float32 CPU maps, in the fastest
    of three ways for each input size (measured with the exercise U-Net's layers, batch 64, 2 threads):

    - maps small enough: one oneDNN matrix product. A convolution is a linear map from an image's (H, W, C) values
      to its output's; at the bottom of a U-Net its dense matrix has at most twice the convolution's multiply-adds
      (fewer where the padding is most of the window) and runs 1.5-3x faster (a 256-channel 3 x 3 conv at 2 x 2:
      1.7 against 5.0 ms; the transposed conv from 2 x 2 to 4 x 4: 4.9 against 7.2 ms). The matrix is the
      convolution of the unit images (exact: each entry is a weight or zero); none passes 16 MiB;
    - a 3 x 3, stride-1, padding-1 Conv2d into one channel (the U-Nets' last layer): pyddpm._C's kernel (1.7
      against 3.0 ms from 32 channels at 28 x 28; oneDNN runs it at a tenth of its speed elsewhere);
    - else the convolution itself (oneDNN; a Conv2d with its weight reordered once, as a PackedConv).

    The choice and its matrix are made on the first input of each size; other inputs run the convolution."""

    MAX_BYTES = 16 << 20
    MAX_MAC_RATIO = 2.0  # the dense product's multiply-adds over the convolution's

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d):
        super().__init__(conv)
        self._plans: dict[tuple[int, int, int], tuple | None] = {}
        self._kernel_weight: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not (x.device.type == "cpu" and x.dtype == self.conv.weight.dtype == torch.float32 and x.dim() == 4
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and x.is_contiguous(memory_format=torch.channels_last)):
            return self.conv(x)
        key = tuple(x.shape[1:])
        if key not in self._plans:
            self._plans[key] = self._dense(*key) or self._kernel()
        plan = self._plans[key]
        if plan is None:
            return super().forward(x)
        if plan[0] == "kernel":
            return self._kernel_conv(x)
        _, weight, bias, (height, width, channels) = plan
        flat = torch.ops.mkldnn._linear_pointwise(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1), weight, bias,
                                                  "none", [], "")
        return flat.view(x.shape[0], height, width, channels).permute(0, 3, 1, 2)

    def _dense(self, channels: int, height: int, width: int) -> tuple | None:
        """("dense", matrix, bias, output (H, W, C)) for inputs of this size, None where the product would not
        pay."""
        conv = self.conv
        out_channels, out_h, out_w = _convolve(conv, torch.zeros(1, channels, height, width)).shape[1:]
        inputs, outputs = channels * height * width, out_channels * out_h * out_w
        conv_macs = conv.weight[0].numel() * (outputs if type(conv) is nn.Conv2d else inputs)
        if inputs * outputs * 4 > self.MAX_BYTES or inputs * outputs > self.MAX_MAC_RATIO * conv_macs:
            return None
        units = torch.eye(inputs).view(inputs, height, width, channels).permute(0, 3, 1, 2)
        columns = _convolve(conv, units)  # row i: unit image i's output
        weight = columns.permute(0, 2, 3, 1).reshape(inputs, outputs).t().contiguous()
        bias = (torch.zeros(out_channels) if conv.bias is None else conv.bias.detach()).repeat(out_h * out_w)
        return "dense", weight, bias, (out_h, out_w, out_channels)

    def _kernel(self) -> tuple | None:
        """("kernel",) where pyddpm._C's 3 x 3 kernel takes the convolution, else None."""
        conv = self.conv
        takes = (_C is not None and hasattr(_C, "conv3x3_nhwc") and type(conv) is nn.Conv2d
                 and conv.out_channels == 1 and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                 and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)
        if not takes:
            return None
        self._kernel_weight = conv.weight.detach().permute(0, 2, 3, 1).contiguous()  # (O, kh, kw, C)
        return ("kernel",)

    def _kernel_conv(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = torch.empty(n, self.conv.out_channels, h, w, memory_format=torch.channels_last)
        bias = self.conv.bias
        _C.conv3x3_nhwc(x=x.data_ptr(), weight=self._kernel_weight.data_ptr(),
                        bias=0 if bias is None else bias.data_ptr(), y=y.data_ptr(), batch=n, height=h, width=w,
                        channels=c, out_channels=self.conv.out_channels, num_threads=torch.get_num_threads())
        return y


# Which of a 3x3 kernel's rows (columns) each row of the 4x4 transposed kernel sums: doubling a map by repetition
# and convolving it, output row 2i reads input rows i-1 (kernel row 0) and i (rows 1 and 2), output row 2i + 1 rows
# i (kernel rows 0 and 1) and i + 1 (row 2); a stride-2 transposed convolution with padding 1 reads input row j for
# output row o through its kernel row o + 1 - 2j.
_DOUBLED_ROWS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


class FastUpsampleConv(nn.Module):
    """A DDPM U-Net UpsampleConv for inference: where ``size`` doubles the map (28 -> 14 -> 7 and back), the
    nearest-neighbour upsampling and the 3x3 convolution are one stride-2 4x4 transposed convolution, its weights
    sums of the 3x3 weights (made once in float64, then rounded to ``dtype``). Each output pixel then costs 4
    multiply-adds per channel pair instead of 9, and the doubled map is never made: 64 channels, 14 -> 28, batch
    32, 2 threads: 2.1-2.7 against 4.1-4.7 ms in float32, 1.1-1.2 against 2.0-2.2 ms in bfloat16 (the DDPM
    U-Net 32, 64, 64's forward at batch 32: 1.06x faster in float32, 1.07x in bf16). The same function to float
    rounding (a sum of weights rounded once instead of each weight). Other sizes, and inputs that need gradients,
    take the UpsampleConv."""

    def __init__(self, conv: UpsampleConv, dtype: torch.dtype | None = None):
        super().__init__()
        self.conv = conv
        dtype = dtype or conv.weight.dtype
        rows = _DOUBLED_ROWS
        weight = torch.einsum("ua,vb,ocab->couv", rows, rows, conv.weight.detach().double())
        self.weight = nn.Parameter(weight.to(dtype), requires_grad=False)  # (in, out, 4, 4), as ConvTranspose2d's
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().to(dtype, copy=True),
                                                                requires_grad=False)

    def forward(self, x: Tensor, size) -> Tensor:
        if tuple(size) != (2 * x.shape[-2], 2 * x.shape[-1]) or (torch.is_grad_enabled() and x.requires_grad):
            return self.conv(x, size)
        return nn.functional.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1)


def _convolve(conv: nn.Conv2d | nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """``conv(x)`` without its bias."""
    if type(conv) is nn.Conv2d:
        return nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return nn.functional.conv_transpose2d(x, conv.weight, None, conv.stride, conv.padding, conv.output_padding,
                                          conv.groups, conv.dilation)


def _fast_conv(module: nn.Module) -> nn.Module | None:
    """For ``replace_modules``: a FastConv for each zero-padded convolution without hooks; a FastResidualBlock is
    kept as it is, its convolutions included (its conv2 runs in oneDNN's fused residual sum; its maps are never
    the small ones)."""
    if type(module) is FastResidualBlock:
        return module
    return (FastConv(module) if type(module) in (nn.Conv2d, nn.ConvTranspose2d) and module.padding_mode == "zeros"
            and not module._forward_hooks else None)


def group_norm_kernel_available() -> bool:
    return _C is not None and hasattr(_C, "group_norm_backward_nhwc")


def _with_fast_group_norm(network: nn.Module, trainable: bool = False) -> nn.Module:
    """``network`` with each GroupNorm pyddpm._C's (FastGroupNorm, or with ``trainable`` TrainableGroupNorm),
    fused with the SiLU after it in a Sequential (which becomes an Identity, so later layers keep their names),
    and each DDPM U-Net ResidualBlock a FastResidualBlock (a training copy's trainable ones become the sampling
    ones)."""
    norm = TrainableGroupNorm if trainable else FastGroupNorm

    def fused(module: nn.Module) -> nn.Module | None:
        if type(module) is ResidualBlock or (type(module) is FastResidualBlock and module.trainable > trainable):
            return FastResidualBlock(module, trainable)
        if type(module) is TrainableGroupNorm and not trainable:  # a training copy's, for sampling
            return FastGroupNorm(module, module.silu)
        if isinstance(module, nn.Sequential) and any(type(m) is nn.GroupNorm for m in module):
            children = list(module)
            layers = []
            for i, child in enumerate(children):
                after_norm = i > 0 and type(children[i - 1]) is nn.GroupNorm
                if type(child) is nn.GroupNorm:
                    silu = i + 1 < len(children) and type(children[i + 1]) is nn.SiLU
                    layers.append(norm(child, silu))
                elif after_norm and type(child) is nn.SiLU:
                    layers.append(nn.Identity())
                else:
                    layers.append(child)
            return nn.Sequential(*layers)
        return norm(module) if type(module) is nn.GroupNorm else None

    return replace_modules(network, fused)


class FastNetwork(nn.Module):
    """The rewritten network, under autocast for ``precision="bf16"``; its output is float32."""

    def __init__(self, network: nn.Module, precision: str):
        super().__init__()
        self.network, self.precision = network, precision

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.precision == "fp32":
            return self.network(x, t)
        with torch.autocast(x.device.type, dtype=_DTYPES[self.precision]):
            return self.network(x, t).float()


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """``warnings.warn(message, RuntimeWarning)`` the first time this process sees ``message``."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _with_fast_log_sigmoid(network: nn.Module) -> nn.Module:
    return replace_modules(network, lambda m: FastLogSigmoid() if type(m) is nn.LogSigmoid else None)


def _layout_levers(network: nn.Module, trainable: bool = False) -> nn.Module:
    """FastLogSigmoid, pyddpm._C's GroupNorm (when built; ``trainable``: with gradients) and channels-last where
    ``prefers_channels_last`` then holds: a copy, or ``network`` when nothing applies."""
    fast = _with_fast_log_sigmoid(network)
    if group_norm_kernel_available():
        fast = _with_fast_group_norm(fast, trainable)
    if prefers_channels_last(fast):
        fast = copy.deepcopy(fast) if fast is network else fast
        for m in fast.modules():
            if type(m) is nn.Conv2d and m.in_channels == 1:
                m.register_forward_hook(channels_last_output)
        fast = fast.to(memory_format=torch.channels_last)
    return fast


class TrainableSelfAttention(SelfAttention):
    """A DDPM U-Net SelfAttention (nets.unet_ddpm), its own Parameters and state_dict names, whose attention of
    bfloat16 q, k, v (under CPU bf16 autocast) is computed in float32 as softmax(q k^T / sqrt(c)) v: at the U-Net's
    7 x 7 = 49 pixels SDPA's bfloat16 CPU kernel takes 7.0 ms forward and backward, this 1.7 ms (batch 64, 64
    channels, 2 threads), and it rounds less. Float32 q, k, v go to SDPA as in the network."""

    def __init__(self, attention: SelfAttention):
        nn.Module.__init__(self)  # the attention's own modules, not new ones
        self.norm, self.qkv, self.out = attention.norm, attention.qkv, attention.out

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.dtype == torch.float32 or q.device.type != "cpu":
            return super().attend(q, k, v)
        dtype = q.dtype
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
            return (weights @ v).to(dtype)


class _KernelDropout(torch.autograd.Function):
    """Dropout with pyddpm._C's kernel both ways: the mask is a function of (seed, element index), so the backward
    draws it again from the seed (nothing is saved) and applies it to dL/dy laid out as x."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: int, scale: float) -> Tensor:
        ctx.seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))  # from torch's generator: manual_seed
        ctx.threshold, ctx.scale = threshold, scale
        ctx.shape, ctx.strides, ctx.dtype = x.shape, x.stride(), x.dtype
        return _kernel_dropout(x, ctx.seed, threshold, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = _laid_out(grad, ctx.shape, ctx.strides, ctx.dtype)
        return _kernel_dropout(grad, ctx.seed, ctx.threshold, ctx.scale), None, None


def _kernel_dropout(x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
    y = torch.empty_like(x)  # x is dense: y gets its strides, and the kernel runs over both in memory order
    _C.dropout(dtype=_DTYPE_CODES[x.dtype], x=x.data_ptr(), y=y.data_ptr(), n=x.numel(), seed=seed,
               threshold=threshold, scale=scale, num_threads=torch.get_num_threads())
    return y


class FastDropout(nn.Module):
    """nn.Dropout(p) for training on the CPU in one pass of pyddpm._C's kernel, forward and backward: each element
    is dropped when its 16-bit Philox word (a seed drawn from torch's generator per call, the element's index) falls
    below round(p 2^16), i.e. with probability q = round(p 2^16) / 2^16 (|q - p| <= 2^-17), and the kept ones are
    scaled by 1 / (1 - q). ATen's CPU dropout (a bernoulli float per element) took 10% of the DDPM U-Net's bf16
    training step; this kernel drops 1.6M floats in 0.5 ms (2 threads). Inputs the kernel does not take (other
    devices and dtypes, non-dense tensors, no extension) go to F.dropout. The identity in eval mode, as
    nn.Dropout."""

    def __init__(self, dropout: nn.Dropout):
        super().__init__()
        self.p = dropout.p
        self.threshold = round(self.p * 65536)
        self.scale = 1.0 / (1.0 - self.threshold / 65536) if self.threshold < 65536 else 0.0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if _elementwise_kernel_takes(x, "dropout") and self.p < 1.0:
            return _KernelDropout.apply(x, self.threshold, self.scale)
        return nn.functional.dropout(x, self.p, True)


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels-last where x is laid out so, else contiguous."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _AdjointConvTranspose(torch.autograd.Function):
    """A transposed convolution (groups 1, no bias) as the adjoint of the convolution it transposes, in oneDNN's
    convolution primitives: the forward is that convolution's input gradient, the backward its forward (dx) and
    its weight gradient (dW, from x and dL/dy). In float32 these are ATen's own results, bit for bit; in bfloat16
    ATen's transposed convolution takes a path ~2x slower (``TrainableConvTranspose``)."""

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


class TrainableConvTranspose(nn.Module):
    """A ConvTranspose2d (groups 1, zero padding) of a bf16 training copy, its own weight and bias Parameters (the
    same state_dict): under CPU bfloat16 autocast through ``_AdjointConvTranspose`` (the exercise U-Net's three
    transposed convolutions, batch 128, forward and backward: 21.3 against 30.6, 19.0 against 20.4 and 20.6 against
    24.5 ms on a 2-core AMD EPYC with AVX512-BF16; the bias added to the bfloat16 result, rounded once more),
    otherwise as the module."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.output_padding = conv.output_padding
        # the convolution it transposes, as aten.convolution_backward takes it
        self.arguments = (list(conv.stride), list(conv.padding), list(conv.dilation))

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_autocast_enabled("cpu") and x.device.type == "cpu" and x.dim() == 4):
            return nn.functional.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                                  self.output_padding, 1, self.dilation)
        dtype = torch.get_autocast_dtype("cpu")
        out_size = tuple((size - 1) * s - 2 * p + d * (k - 1) + extra + 1 for size, s, p, d, k, extra in zip(
            x.shape[2:], self.stride, self.padding, self.dilation, self.weight.shape[2:], self.output_padding))
        y = _AdjointConvTranspose.apply(x.to(dtype), self.weight.to(dtype), out_size, self.arguments)
        return y if self.bias is None else y + self.bias.to(dtype).reshape(1, -1, 1, 1)

    def as_module(self) -> nn.ConvTranspose2d:
        """The nn.ConvTranspose2d this stands for, with these Parameters (for the sampling copies)."""
        in_channels, out_channels = self.weight.shape[:2]
        conv = nn.ConvTranspose2d(in_channels, out_channels, tuple(self.weight.shape[2:]), self.stride, self.padding,
                                  self.output_padding, bias=self.bias is not None, dilation=self.dilation,
                                  device="meta")
        conv.weight, conv.bias = self.weight, self.bias
        return conv


class TrainableUpsampleConv(nn.Module):
    """A DDPM U-Net UpsampleConv of a bf16 training copy, its own weight and bias Parameters (the same state_dict):
    under CPU bfloat16 autocast, where ``size`` doubles the map, FastUpsampleConv's stride-2 4x4 transposed
    convolution (its weights the sums of the 3x3 weights, made in float32 on every call, so the gradient reaches
    them) through ``_AdjointConvTranspose``; otherwise as the module."""

    def __init__(self, conv: UpsampleConv):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: Tensor, size) -> Tensor:
        if not (torch.is_autocast_enabled("cpu") and x.device.type == "cpu" and x.dim() == 4
                and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])):
            return nn.functional.conv2d(nn.functional.interpolate(x, size=size, mode="nearest"), self.weight,
                                        self.bias, padding=1)
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            rows = _DOUBLED_ROWS.to(self.weight.dtype)
            weight = torch.einsum("ua,vb,ocab->couv", rows, rows, self.weight).to(dtype)
        y = _AdjointConvTranspose.apply(x.to(dtype), weight, tuple(size), ([2, 2], [1, 1], [1, 1]))
        return y if self.bias is None else y + self.bias.to(dtype).reshape(1, -1, 1, 1)

    def as_module(self) -> UpsampleConv:
        """The UpsampleConv this stands for, with these Parameters (for the sampling copies)."""
        conv = UpsampleConv(self.weight.shape[0])
        conv.weight, conv.bias = self.weight, self.bias
        return conv


_TRAINABLE_CONVOLUTIONS = (TrainableConvTranspose, TrainableUpsampleConv)  # a bf16 training copy's; as_module()


def _trainable_conv_transpose(module: nn.Module) -> nn.Module | None:
    """For ``replace_modules``: a TrainableConvTranspose for each 2-D ConvTranspose2d it runs (groups 1, zeros)."""
    if type(module) is nn.ConvTranspose2d and module.groups == 1 and module.padding_mode == "zeros":
        return TrainableConvTranspose(module)
    return None


def training_network(network: nn.Module, device: torch.device | str, precision: str = "fp32") -> nn.Module:
    """A copy of ``network`` to train on ``device``, with the levers that keep autograd: on the CPU, FastLogSigmoid,
    TrainableGroupNorm, FastDropout, TrainableSelfAttention, channels-last where ``prefers_channels_last`` (the
    exercise U-Net trains 1.6x faster, the DDPM U-Net 1.4x; with bf16 autocast 2.3x and 2.2x) and, in float32,
    Linear layers on oneDNN (the toy FcNetwork 1.4x; under bf16 autocast torch's own Linear is the bf16 one); else
    ``network``; in bf16 each transposed convolution a TrainableConvTranspose (the exercise U-Net's bf16 training
    step 186 against 203 ms at batch 128) and each UpsampleConv a TrainableUpsampleConv (the DDPM U-Net 32, 64,
    64's 269 against 282 ms at batch 64). The weights (and the state_dict's names) are the network's. On x86
    without AVX-512 the Linear layers stay torch's (``onednn_linear_wins``)."""
    check_precision_hardware(precision, device)
    if torch.device(device).type != "cpu":
        return network
    fast = _layout_levers(network, trainable=True)
    fast = replace_modules(fast, lambda m: FastDropout(m) if type(m) is nn.Dropout and m.p > 0 else None)
    fast = replace_modules(fast, lambda m: TrainableSelfAttention(m) if type(m) is SelfAttention else None)
    if check_precision(precision) == "fp32" and onednn_available() and onednn_linear_wins():
        fast = replace_modules(fast, lambda m: TrainableOneDNNLinear(m) if type(m) is nn.Linear else None)
    if precision == "bf16":
        fast = replace_modules(fast, _trainable_conv_transpose)
        fast = replace_modules(fast, lambda m: TrainableUpsampleConv(m) if type(m) is UpsampleConv else None)
    return fast


def _as_torch_linear(module: nn.Module) -> nn.Linear | None:
    """A TrainableOneDNNLinear as the nn.Linear it stands for (autocast converts only torch's own ops)."""
    if type(module) is not TrainableOneDNNLinear:
        return None
    out_features, in_features = module.weight.shape
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None)
    linear.load_state_dict(module.state_dict())
    return linear


def _bf16_conv(module: nn.Module) -> nn.Module | None:
    """A Conv2d or ConvTranspose2d with its weight and bias in bfloat16, for the bf16 sampling copy (run under
    autocast, which would round the float32 weights on every call: the DDPM U-Net's bf16 forward took 4% longer);
    the same bits. None for other modules."""
    if type(module) not in (nn.Conv2d, nn.ConvTranspose2d):
        return None
    return copy.deepcopy(module).to(torch.bfloat16)


def fast_network(network: nn.Module, device: torch.device | str, precision: str = "fp32") -> nn.Module:
    """A fast copy of ``network`` for sampling on ``device`` (no autograd); ``network`` is left as it is.
    On CUDA only the precision applies (the samplers replay CUDA graphs there). Without oneDNN (or its bfloat16,
    for ``precision="bf16"``) the Linear layers stay as they are, with one warning; bf16 on a CPU without bfloat16
    arithmetic is a ValueError (``check_precision_hardware``)."""
    check_precision_hardware(precision, device)
    device = torch.device(device)
    fast = network
    if device.type == "cpu":
        network = replace_modules(network, lambda m: m.as_module() if type(m) in _TRAINABLE_CONVOLUTIONS else None)
        fast = _layout_levers(network)
        fast = replace_modules(fast, lambda m: FastUpsampleConv(m, torch.bfloat16 if precision == "bf16" else None)
                               if type(m) is UpsampleConv else None)
        if precision == "fp32" and onednn_available():
            fast = replace_modules(fast, _fast_conv)
        if precision == "bf16":
            fast = replace_modules(fast, _bf16_conv)
        if onednn_available(_DTYPES[precision]) and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"):
            fast = replace_modules(fast, _packed_conv)
        dtype = _DTYPES[precision]
        if any(_is_linear(m) for m in fast.modules()):
            if onednn_available(dtype):
                fast = _fuse_linears(fast, dtype)
                if type(network) is FcNetwork and type(fast.network[0]) is OneDNNLinear:
                    fast = OneTimeStepFcNetwork(fast, network)
            else:
                warn_once(f"pyddpm: oneDNN's {precision} Linear is not available in this torch build or on this "
                           "CPU; the network's Linear layers run as they are (slower on the CPU)")
                fast = replace_modules(fast, _as_torch_linear)
    return FastNetwork(fast, precision).eval()
