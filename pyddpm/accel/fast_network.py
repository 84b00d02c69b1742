"""A network's fast copies on the CPU: for sampling (``fast_network``) and for training (``training_network``),
the same function in fewer cycles, made from the table of ``pyddpm.accel.levers``. In float32 a copy's output
equals the network's within float rounding (another summation order); ``precision="bf16"`` runs it under CPU bf16
autocast on CPUs with bfloat16 arithmetic (refused elsewhere), its output float32."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .levers import accelerate, native_bf16

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

__all__ = ["PRECISIONS", "FastNetwork", "check_network_options", "check_precision_hardware", "fast_network",
           "native_bf16", "training_network"]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


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


class FastNetwork(nn.Module):
    """A sampling copy, under autocast for ``precision="bf16"``; its output is float32."""

    def __init__(self, network: nn.Module, precision: str):
        super().__init__()
        self.network, self.precision = network, precision

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.precision == "fp32":
            return self.network(x, t)
        with torch.autocast(x.device.type, dtype=_DTYPES[self.precision]):
            return self.network(x, t).float()


def fast_network(network: nn.Module, device: torch.device | str, precision: str = "fp32",
                 exclude=()) -> FastNetwork:
    """The network for sampling on ``device`` (no autograd): on the CPU a copy of pyddpm's own networks with the
    levers of ``pyddpm.accel.levers`` (without those named in ``exclude``), any other network as it is; run in
    ``precision``. ``network`` is left as it is."""
    check_precision_hardware(precision, device)
    if torch.device(device).type == "cpu":
        network = accelerate(network, precision, "sample", exclude)
    return FastNetwork(network, precision).eval()


def training_network(network: nn.Module, device: torch.device | str, precision: str = "fp32",
                     exclude=()) -> nn.Module:
    """A copy of pyddpm's own ``network`` to train on a CPU ``device`` with the levers that keep autograd (the same
    state_dict names), or ``network`` itself (other networks and devices). ``precision`` is what the trainer's
    autocast runs."""
    check_precision_hardware(precision, device)
    if torch.device(device).type != "cpu":
        return network
    return accelerate(network, precision, "train", exclude)
