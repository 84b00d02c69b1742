"""What evaluates eps_theta in a sampling loop: the network as built, or its fast copy (``fast_network``), made once
per model, weights and precision."""
from __future__ import annotations

import time

import torch

from .fast_network import check_network_options, fast_network

RUNTIMES = ("auto", "torch")
# runtime="auto" moves a float32 loop to the fast copy only when its remaining calls, at the first call's time, would
# take this long: with 1 s, `pyddpm-sample` on an MNIST U-Net took 1.12-1.50x its --eager time at 5-20 calls
# (docs/solvers.md), and the copy saves about a quarter of each call (docs/performance.md); bf16 always takes it
FAST_FROM_SECONDS = 10.0


def sampling_network(model, precision: str = "fp32", fast: bool = True):
    """The network the samplers evaluate: ``fast_network`` of ``model.network`` on its device, or the network as
    it is (``fast=False``, float32 only). The fast copy is kept on the model until its weights change (an optimizer
    step or a load bumps their version counters), so repeated sampling does not copy it again."""
    check_network_options(precision, fast)
    if not fast:
        return model.network
    key = _weights_key(model)
    cache = model.__dict__.setdefault("_fast_network_cache", _FastNetworkCache())
    if precision not in cache or cache[precision][0] != key:
        cache[precision] = (key, fast_network(model.network, model.beta.device, precision))
    return cache[precision][1]


def _weights_key(model) -> tuple:
    """What a fast copy depends on: the device and every parameter's and buffer's identity and version."""
    tensors = [*model.network.parameters(), *model.network.buffers()]
    return str(model.beta.device), tuple((id(t), t._version) for t in tensors)


def _has_fast_copy(model, precision: str) -> bool:
    cache = model.__dict__.get("_fast_network_cache", {})
    return precision in cache and cache[precision][0] == _weights_key(model)


class _FastNetworkCache(dict):
    """A model's fast copies (``sampling_network``): derived from its weights and made again when needed, so a copy
    or a pickle of the model starts without them."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return type(self), ()


def check_runtime_options(precision: str, fast: bool, runtime: str) -> None:
    """ValueError unless the samplers can run a network in ``precision`` with ``fast`` on ``runtime``."""
    check_network_options(precision, fast)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)} (onnxruntime runs "
                         "exported models: pyddpm-export, then export/onnx_sampler.py)")


def loop_network(model, steps: int, precision: str = "fp32", fast: bool = True, runtime: str = "auto"):
    """What evaluates eps_theta in a loop of ``steps`` calls: ``sampling_network(model, precision, fast)``, except
    that with ``runtime="auto"`` a float32 loop without a fast copy yet makes its first call with the network as
    built, timed, and moves to the fast copy only if the remaining ``steps - 1`` calls would take
    ``FAST_FROM_SECONDS`` or more at that time (no call is spent on measuring). Run under torch.no_grad()."""
    check_runtime_options(precision, fast, runtime)
    if fast and runtime == "auto" and precision == "fp32" and not _has_fast_copy(model, precision):
        return _FirstCallDecides(model, steps)
    return sampling_network(model, precision, fast)


class _FirstCallDecides:
    """eps_theta for ``loop_network``'s auto runtime: the network as built for the first call, then the network
    that call's time chose."""

    def __init__(self, model, steps: int):
        self.model, self.steps, self.network = model, steps, None

    def __call__(self, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        if self.network is not None:
            return self.network(x, t_in)
        start = time.perf_counter()
        eps = self.model.network(x, t_in)
        repays = (time.perf_counter() - start) * (self.steps - 1) >= FAST_FROM_SECONDS
        self.network = sampling_network(self.model, "fp32") if repays else self.model.network
        return eps
