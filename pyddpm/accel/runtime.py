"""What evaluates eps_theta in a sampling loop: the network as built, or its fast copy (``fast_network``), made once
per model, weights and precision."""
from __future__ import annotations

import time

import torch

from .fast_network import check_network_options, fast_network

RUNTIMES = ("auto", "torch")
# runtime="auto" makes the fast copy only for float32 loops the network as built would take this long over: making
# it costs about as much as a short loop saves (docs/solvers.md, the whole command); bf16 always takes the copy
FAST_FROM_SECONDS = 1.0


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


def loop_network(model, x: torch.Tensor, t_in: torch.Tensor, steps: int, precision: str = "fp32",
                 fast: bool = True, runtime: str = "auto"):
    """What evaluates eps_theta in a loop of ``steps`` steps on batches shaped like ``x`` (time input ``t_in``):
    ``sampling_network(model, precision, fast)``; with ``runtime="auto"`` a float32 loop that the network as built
    would finish in under ``FAST_FROM_SECONDS`` (one call timed after a warm-up call) keeps the network as built,
    whose first calls need no copy. Run under torch.no_grad()."""
    check_runtime_options(precision, fast, runtime)
    if fast and runtime == "auto" and precision == "fp32" and not _has_fast_copy(model, precision):
        model.network(x, t_in)
        start = time.perf_counter()
        model.network(x, t_in)
        if (time.perf_counter() - start) * steps < FAST_FROM_SECONDS:
            return model.network
    return sampling_network(model, precision, fast)
