"""What evaluates eps_theta in a sampling loop: the network as built, or its fast copy (``fast_network``), made once
per model, weights and precision."""
from __future__ import annotations

import torch

from .fast_network import check_network_options, fast_network

RUNTIMES = ("auto", "torch")  # "auto" is torch: onnxruntime measured no faster than the fast copy (levers.py)


def sampling_network(model, precision: str = "fp32", fast: bool = True):
    """The network the samplers evaluate: ``fast_network`` of ``model.network`` on its device, or the network as
    it is (``fast=False``, float32 only). The fast copy is kept on the model until its weights change (an optimizer
    step or a load bumps their version counters), so repeated sampling does not copy it again."""
    check_network_options(precision, fast)
    if not fast:
        return model.network
    tensors = [*model.network.parameters(), *model.network.buffers()]
    key = (str(model.beta.device), tuple((id(t), t._version) for t in tensors))
    cache = model.__dict__.setdefault("_fast_network_cache", _FastNetworkCache())
    if precision not in cache or cache[precision][0] != key:
        cache[precision] = (key, fast_network(model.network, model.beta.device, precision))
    return cache[precision][1]


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
    ``sampling_network(model, precision, fast)`` (``x``, ``t_in`` and ``steps`` no longer change the choice)."""
    check_runtime_options(precision, fast, runtime)
    return sampling_network(model, precision, fast)
