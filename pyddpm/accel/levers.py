"""The CPU levers, one table: what each replaces, where it applies (CPU class, precision, sampling or training,
network) and what it measured end to end; ``accelerate`` makes a network's fast copy from the table in one walk.

Only pyddpm's own networks (``NETWORKS``) get levers, each proven equal to the network in tests/; any other module
is returned as it is. The walk visits the network from its root: the first lever of the table that applies to a
module replaces it (a lever with ``followed_by`` replaces a module and its neighbour in an nn.Sequential), and a
lever that keeps some of the module's children walks them itself; a module no lever takes has its children
walked. ``python -m pyddpm.accel NETWORK`` prints the levers a network gets on this CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..nets import DDPMUNet, ExerciseUNet, FcNetwork
from ..nets.unet_ddpm import ResidualBlock, SelfAttention
from . import convolution, elementwise, kernels, linear, normalisation

NETWORKS = {FcNetwork: "fc", ExerciseUNet: "unet", DDPMUNet: "unet-ddpm"}
CPU_CLASSES = {  # name: (what it means, whether this CPU is of it)
    "any": ("every CPU", lambda: True),
    "AVX2 only": ("x86 without AVX-512", lambda: torch.backends.cpu.get_cpu_capability() == "AVX2"),
    "not AVX2 only": ("AVX-512 x86, or not x86", lambda: torch.backends.cpu.get_cpu_capability() != "AVX2"),
    "AVX512-BF16": ("AVX512-BF16 or AMX (the CPUs bf16 runs on)", lambda: native_bf16("cpu")),
}
BENCH = "python benchmarks/bench_cpu.py --levers"  # the command that measures each lever's end-to-end gain


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has bfloat16 arithmetic of its own: a CPU with AVX512-BF16 or AMX (any other device: True,
    its autocast decides). Other CPUs emulate it several times slower than float32."""
    if torch.device(device).type != "cpu":
        return True
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


@dataclass(frozen=True)
class Lever:
    """One lever: ``build(module, [after,] copy)`` replaces a ``replaces`` module (and, with ``followed_by``, the
    module after it in an nn.Sequential) where the lever applies; it returns None to leave the module be."""
    name: str
    kind: str  # linear, convolution, normalisation, elementwise (the module of pyddpm.accel that holds it)
    replaces: tuple  # module classes, any of them
    does: str  # what it does instead, in words
    cpu: str  # a key of CPU_CLASSES
    precisions: tuple  # of "fp32", "bf16"
    purposes: tuple  # of "sample", "train"
    gain: str  # the measured end-to-end gain: network, CPU
    measured: str  # the command (or commit) that measured it
    build: Callable | None  # None: part of another lever's build, which asks ``Copy.uses``
    needs: Callable[[], bool] = lambda: True  # whether the kernel or torch entry point it needs works here
    followed_by: tuple = ()  # module classes: the lever replaces such a pair of neighbours


def _fc_fold(network: FcNetwork, c: Copy) -> nn.Module:
    fast = c.children(network)
    return linear.OneTimeStepFcNetwork(fast, network) if type(fast.network[0]) is linear.OneDNNLinear else fast


def _channels_last(network: nn.Module, c: Copy) -> nn.Module:
    fast = c.children(network)
    if any(type(m) is nn.GroupNorm for m in fast.modules()):  # ATen's channels-last GroupNorm is the slow one
        return fast
    for m in fast.modules():
        if type(m) is nn.Conv2d and m.in_channels == 1:
            m.register_forward_hook(convolution.channels_last_output)
    return fast.to(memory_format=torch.channels_last)


def _linear(module: nn.Module, c: Copy, activation: nn.Module | None = None):
    if c.purpose == "train":
        return linear.TrainableOneDNNLinear(module)
    fused = activation is not None and (type(activation) in linear.CHEAP_POST_OPS or not CPU_CLASSES["AVX2 only"][1]())
    fast = linear.OneDNNLinear(module, activation, c.dtype, post_op=fused, silu_kernel=c.uses("silu-kernel"))
    return fast if activation is None else [fast, nn.Identity()]


def _residual_block(block: ResidualBlock, c: Copy) -> nn.Module:
    fast = normalisation.FastResidualBlock(block)
    for name in ("conv1", "time", "conv2", "dropout", "skip"):
        setattr(fast, name, c.walk(getattr(fast, name)))
    return fast


_ANY = ("fp32", "bf16")
_BOTH = ("sample", "train")
_LINEARS = (nn.Linear, linear.TrainableOneDNNLinear)
HERE = "AVX2-only AMD EPYC"
LEVERS = [
    Lever("fc-time-fold", "linear", (FcNetwork,),
          "for a batch at one time step, the time features of one row folded into the first layer's float32 bias",
          "AVX512-BF16", ("bf16",), ("sample",),
          f"toy FcNetwork bf16 forward 1.08x (AVX512-BF16 EPYC); float32 0.93-0.96x in three runs ({HERE})",
          "commit 430dd22; " + BENCH, _fc_fold, linear.onednn_linear_works),
    Lever("channels-last", "convolution", (ExerciseUNet, DDPMUNet),
          "the maps in channels-last order, oneDNN's own (where no ATen GroupNorm is left)", "any", _ANY, _BOTH,
          f"exercise U-Net sampling 1.26x, training 1.10x; DDPM U-Net sampling 1.17x, training 1.06x ({HERE})", BENCH,
          _channels_last),
    Lever("onednn-linear", "linear", _LINEARS,
          "oneDNN's Linear, the activation after it fused (ReLU and LeakyReLU everywhere, others where not AVX2 "
          "only), in bf16 with bfloat16 weights made once", "any", _ANY, ("sample",),
          f"toy FcNetwork sampling 1.07-1.11x; DDPM U-Net sampling 0.92-1.11x over five runs ({HERE})", BENCH,
          lambda m, a, c: _linear(m, c, a),
          linear.onednn_linear_works, followed_by=tuple(linear.POST_OPS)),
    Lever("onednn-linear", "linear", _LINEARS, "oneDNN's Linear", "any", _ANY, ("sample",),
          "(the record above)", BENCH, _linear, linear.onednn_linear_works),
    Lever("onednn-linear-train", "linear", (nn.Linear,), "oneDNN's Linear with gradients (dW by torch.mm)",
          "not AVX2 only", ("fp32",), ("train",), "toy FcNetwork training 1.11x (AMD EPYC with AVX-512)",
          "README's bench_cpu table at commit 9c1adb0", _linear, linear.onednn_linear_works),
    Lever("silu-kernel", "elementwise", (nn.SiLU,),
          "a SiLU after a oneDNN Linear as pyddpm::silu_ in place on the rounded product", "AVX512-BF16", ("bf16",),
          ("sample",), "toy FcNetwork bf16 forward 1.06x (with SiluLinear, since removed)", "commit 88b1627", None,
          lambda: kernels.available("silu")),
    Lever("group-norm-kernel", "normalisation", (ResidualBlock,),
          "GroupNorm + SiLU as pyddpm::group_norm_nhwc, the time projection added inside the second", "any", _ANY,
          _BOTH, f"DDPM U-Net sampling 1.12x, training 1.04x ({HERE}); channels-last needs it", BENCH, _residual_block,
          kernels.available),
    Lever("group-norm-kernel", "normalisation", (nn.GroupNorm,), "GroupNorm then SiLU as one pyddpm::group_norm_nhwc",
          "any", _ANY, _BOTH, "(the record above)", BENCH,
          lambda m, s, c: [normalisation.FastGroupNorm(m, True), nn.Identity()], kernels.available,
          followed_by=(nn.SiLU,)),
    Lever("group-norm-kernel", "normalisation", (nn.GroupNorm,), "GroupNorm as pyddpm::group_norm_nhwc", "any", _ANY,
          _BOTH, "(the record above)", BENCH, lambda m, c: normalisation.FastGroupNorm(m), kernels.available),
    Lever("log-sigmoid-kernel", "elementwise", (nn.LogSigmoid,), "pyddpm::log_sigmoid, one pass each way", "any",
          _ANY, _BOTH, f"exercise U-Net sampling 1.35x, training 1.15x ({HERE})", BENCH,
          lambda m, c: elementwise.FastLogSigmoid(), lambda: kernels.available("log_sigmoid")),
    Lever("dropout-kernel", "elementwise", (nn.Dropout,), "pyddpm::dropout, its mask from Philox by element index",
          "any", _ANY, ("train",),
          f"DDPM U-Net training step 1.10x (forward, backward, AdamW; {HERE})", BENCH,
          lambda m, c: elementwise.FastDropout(m) if 0.0 < m.p < 1.0 else None, lambda: kernels.available("dropout")),
    Lever("float32-attention", "convolution", (SelfAttention,),
          "bfloat16 attention of a U-Net's 49 pixels computed in float32 (SDPA's bfloat16 CPU kernel is slower "
          "there)", "AVX512-BF16", ("bf16",), ("train",),
          "DDPM U-Net bf16 training: SDPA's bfloat16 backward took 8% of a step", "commit e7da030, README",
          lambda m, c: c.children(convolution.Float32Attention(m))),
    Lever("bf16-transposed-conv", "convolution", (nn.ConvTranspose2d,),
          "a transposed convolution as the adjoint of its convolution in oneDNN's primitives (ATen's bfloat16 one "
          "is ~2x slower)", "AVX512-BF16", ("bf16",), ("train",),
          "exercise U-Net bf16 training step 1.09x", "commit 2812771",
          lambda m, c: convolution.AdjointConvTranspose(m) if m.groups == 1 and m.padding_mode == "zeros" else None),
]


class Copy:
    """One fast copy in the making: the levers that apply to its network, this CPU, precision and purpose."""

    def __init__(self, network: nn.Module, precision: str, purpose: str, exclude=()):
        self.precision, self.purpose = precision, purpose
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.levers = [lv for lv in levers_for(network, precision, purpose) if lv.name not in set(exclude)]

    def uses(self, name: str) -> bool:
        return any(lv.name == name for lv in self.levers)

    def walk(self, module: nn.Module, after: nn.Module | None = None):
        """``module`` with the levers applied: the first lever's replacement (a list of two for a lever that
        replaces ``module`` and ``after``, its neighbour in an nn.Sequential), or ``module`` with its children
        walked."""
        for lever in self.levers:
            if lever.build is None or type(module) not in lever.replaces:
                continue
            if not lever.followed_by:
                new = lever.build(module, self)
            elif type(after) in lever.followed_by:
                new = lever.build(module, after, self)
            else:
                continue
            if new is not None:
                return new
        return self.children(module)

    def children(self, module: nn.Module) -> nn.Module:
        """``module`` with each child walked."""
        names = [name for name, _ in module.named_children()]
        i = 0
        while i < len(names):
            after = getattr(module, names[i + 1]) if isinstance(module, nn.Sequential) and i + 1 < len(names) else None
            new = self.walk(getattr(module, names[i]), after)
            if isinstance(new, list):  # a pair replaced
                setattr(module, names[i], new[0])
                setattr(module, names[i + 1], new[1])
                i += 2
            else:
                setattr(module, names[i], new)
                i += 1
        return module


def _applies(lever: Lever, network: nn.Module, precision: str, purpose: str) -> bool:
    classes = {type(m) for m in network.modules()}
    return (precision in lever.precisions and purpose in lever.purposes and CPU_CLASSES[lever.cpu][1]()
            and bool(classes & set(lever.replaces)) and lever.needs())


def levers_for(network: nn.Module, precision: str = "fp32", purpose: str = "sample") -> list[Lever]:
    """The levers of ``LEVERS`` that ``network`` gets on this CPU in ``precision`` for ``purpose`` ("sample" or
    "train"): none unless it is one of pyddpm's ``NETWORKS``."""
    if type(network) not in NETWORKS:
        return []
    return [lv for lv in LEVERS if _applies(lv, network, precision, purpose)]


def accelerate(network: nn.Module, precision: str = "fp32", purpose: str = "sample", exclude=()) -> nn.Module:
    """A copy of ``network`` with ``levers_for`` applied (without the levers named in ``exclude``), its own copies
    of the Parameters under the same names; ``network`` itself when no lever applies."""
    c = Copy(network, precision, purpose, exclude)
    return c.walk(copy.deepcopy(network)) if c.levers else network
