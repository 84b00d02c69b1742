"""What evaluates eps_theta in a sampling loop: the network as built, its fast torch copy (``fast_network``), or
the copy under onnxruntime (``onnx_network``), chosen once per model, weights and batch shape."""
from __future__ import annotations

import torch

from ..export.onnx_export import ExportError
from .fast_network import check_network_options, fast_network, warn_once
from .onnx_network import bracketed_median_seconds, exportable, median_seconds, onnxruntime_network

RUNTIMES = ("auto", "torch", "onnxruntime")
# runtime="auto" takes onnxruntime only where it measures this much faster: within the noise of its few timings
# torch's network stays (it needs no export, and no second runtime's threads spin on after it); on a 2-core AMD
# EPYC with AVX-512 the toy network took 11.7-14.7 ms a step in torch against 12.8-18.3 in onnxruntime over nine
# benchmark runs (torch faster in each), three of four chose onnxruntime without a margin, one of five with 3%
ONNXRUNTIME_MARGIN = 1.05
AUTO_FROM_SECONDS = 2.0  # runtime="auto" tries onnxruntime for loops the torch network takes this long over


def sampling_network(model, precision: str = "fp32", fast: bool = True):
    """The network the samplers evaluate: ``fast_network`` of ``model.network`` on its device, or the network as
    it is (``fast=False``, float32 only). The fast copy is kept on the model until its weights change (an optimizer
    step or a load bumps their version counters), so repeated sampling does not copy it again."""
    check_network_options(precision, fast)
    if not fast:
        return model.network
    return _fast_network_entry(model, precision)[1]


class _FastNetworkCache(dict):
    """A model's fast copies and runtime choices (``_fast_network_entry``): derived from its weights and made again
    when needed, so a copy or a pickle of the model starts without them (onnxruntime's sessions and oneDNN's
    reordered weights cannot be copied)."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return type(self), ()


def _fast_network_entry(model, precision: str) -> tuple:
    """(key, fast copy, {runtime choices}) in ``precision`` for the model's current weights, made again when they
    change (one entry per precision, so that sampling in turns in fp32 and bf16 does not remake both)."""
    tensors = [*model.network.parameters(), *model.network.buffers()]
    key = (str(model.beta.device), tuple((id(t), t._version) for t in tensors))
    cache = model.__dict__.setdefault("_fast_network_cache", _FastNetworkCache())
    if precision not in cache or cache[precision][0] != key:
        cache[precision] = (key, fast_network(model.network, model.beta.device, precision), {})
    return cache[precision]


def check_runtime_options(precision: str, fast: bool, runtime: str) -> None:
    """ValueError unless the samplers can run a network in ``precision`` with ``fast`` on ``runtime``."""
    check_network_options(precision, fast)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and (precision != "fp32" or not fast):
        raise ValueError("--runtime onnxruntime runs the network in float32 from its fast copy; leave out "
                         "--precision bf16 and --eager (or sample with --runtime torch)")


def loop_network(model, x: torch.Tensor, t_in: torch.Tensor, steps: int, precision: str = "fp32",
                 fast: bool = True, runtime: str = "auto"):
    """What evaluates eps_theta in a loop of ``steps`` steps on batches shaped like ``x`` (with time input
    ``t_in``): ``sampling_network``'s torch network, or the network under onnxruntime (``pyddpm.onnx_network``;
    CPU, float32, fast copy only) for ``runtime="onnxruntime"``, and for ``"auto"`` where it measures faster
    (by ``ONNXRUNTIME_MARGIN``).

    "auto" times the torch network on (x, t_in) and, when the loop would take it ``AUTO_FROM_SECONDS`` or more,
    exports the network (0.1-0.5 s, once per weights) and times torch's network before and after onnxruntime's
    (``bracketed_median_seconds``; timed once each, one after the other, a drifting machine chose onnxruntime for
    the DDPM U-Net at 49 ms a step against torch's 41); the faster one is kept with the fast copy, per batch
    shape. It stays with torch on CUDA, in bf16, with ``fast=False``, for a training copy
    of the network (``onnx_network.exportable``), and (one warning) when the export fails or disagrees. Run under
    torch.no_grad().
    """
    check_runtime_options(precision, fast, runtime)
    if not fast:  # (check_runtime_options refuses the onnxruntime runtime without the fast copy)
        return model.network
    _, network, choices = _fast_network_entry(model, precision)
    onnx_possible = x.device.type == "cpu" and precision == "fp32"
    if runtime == "torch" or (runtime == "auto" and not onnx_possible):
        return network
    if not onnx_possible:
        raise ValueError(f"--runtime onnxruntime runs on the CPU; the model is on {x.device}: sample with "
                         "--runtime torch (or auto)")
    if runtime == "onnxruntime":
        return _onnxruntime_choice(model, choices, x, t_in)
    shape = tuple(x.shape)
    if shape not in choices:
        choice = network
        torch_seconds = median_seconds(lambda: network(x, t_in))
        if torch_seconds * steps >= AUTO_FROM_SECONDS and exportable(model.network):
            try:
                ort_network = _onnxruntime_choice(model, choices, x, t_in)
                torch_seconds, ort_seconds = bracketed_median_seconds(lambda: network(x, t_in),
                                                                   lambda: ort_network(x, t_in))
                if ort_seconds * ONNXRUNTIME_MARGIN < torch_seconds:
                    choice = ort_network
            except ExportError as err:
                warn_once(f"pyddpm: sampling with torch's network, not onnxruntime's: {err}")
        choices[shape] = choice
    return choices[shape]


def _onnxruntime_choice(model, choices: dict, x: torch.Tensor, t_in: torch.Tensor):
    """The model's network under onnxruntime, made once per weights (an ExportError is kept and raised again)."""
    if "onnxruntime" not in choices:
        try:
            choices["onnxruntime"] = onnxruntime_network(model.network, x, t_in)
        except ExportError as err:
            choices["onnxruntime"] = err
    if isinstance(choices["onnxruntime"], ExportError):
        raise choices["onnxruntime"]
    return choices["onnxruntime"]
