"""onnxruntime as a CPU runtime for the samplers' network: the network exported to ONNX in memory and run by an
onnxruntime session on the loop's own tensors, with pyddpm's noise and fused update around it.

onnxruntime fuses the whole graph between the matrix products and convolutions, where torch runs one kernel per
op: on a 2-core AMD EPYC it runs the DDPM U-Net's forward ~1.3x faster than pyddpm's fast torch copy, the exercise
U-Net ~1.6x slower (``benchmarks/bench_cpu.py``). The samplers pick it by measurement (``runtime="auto"``,
``pyddpm.accel.loop_network``). Only the network moves: the noise is Philox as ever, so a seed gives the same
samples, within float32 rounding of another summation order.
"""
from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch import Tensor, nn

from . import fast_network as fast_network_module
from ..export.modules import stable_for_export
from ..export.onnx_export import ExportError, onnx_proto, require_onnx
from ..nets.fc import FcNetwork

INPUT_NAMES = ["x_t", "t_in"]
FOLDED_INPUT_NAMES = ["x_t", "time_bias"]
AGREEMENT = 1e-4  # |onnxruntime - torch| <= AGREEMENT x max(1, |torch|) on the loop's input, or it is not used


class TimeFoldedFcNetwork(nn.Module):
    """An FcNetwork as ``(x, time_bias) -> eps_hat``, for onnxruntime: the first layer's time columns times the
    time features, plus its bias, come in as ``time_bias`` (``self.time_bias(t)``, a
    ``fast_network.FirstLayerTimeBias``: one row for a batch at one time step, as the samplers' are), so the graph
    embeds the time for no row and its first product skips the time columns (32 of the default toy network's 66
    inputs), as ``fast_network.OneTimeStepFcNetwork`` does in torch."""

    def __init__(self, network: FcNetwork):
        super().__init__()
        self.input_embedding = network.input_embedding
        self.x_weight = nn.Parameter(network.network[0].weight.detach()[:, :network.input_features].clone(),
                                     requires_grad=False)
        self.time_bias = fast_network_module.FirstLayerTimeBias(network, network.time_features)
        self.rest = nn.Sequential(*list(network.network)[1:])

    def forward(self, x: Tensor, time_bias: Tensor) -> Tensor:
        inputs = x if self.input_embedding is None else self.input_embedding.with_input(x)
        return self.rest(nn.functional.linear(inputs, self.x_weight) + time_bias)


class OnnxRuntimeNetwork:
    """``network(x, t_in)`` evaluated by an onnxruntime session (CPU, float32, ``threads`` intra-op threads): the
    network exported in memory by the TorchScript-based exporter (0.1-0.5 s for pyddpm's networks, against 3-8 s
    for the torch.export-based one) with a dynamic batch, its LogSigmoids in their stable form; an FcNetwork as a
    ``TimeFoldedFcNetwork``, its time bias computed in torch for one row (a batch at several time steps runs that
    module in torch). Takes and returns CPU float32 tensors; the output shares no memory with the input."""

    def __init__(self, network: nn.Module, x: Tensor, t_in: Tensor, threads: int):
        _, ort = require_onnx()
        self.folded = TimeFoldedFcNetwork(network).eval() if type(network) is FcNetwork else None
        if self.folded is None:
            module, args, names = stable_for_export(network).eval(), (x, t_in), INPUT_NAMES
        else:
            module, args, names = self.folded, (x, self.folded.time_bias(t_in[:1])), FOLDED_INPUT_NAMES
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = onnx_proto(module, args, names, "eps", dynamo=False, static_inputs=("time_bias",))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: Tensor, t_in: Tensor) -> Tensor:
        if self.folded is None:
            second = t_in
        elif fast_network_module.one_time_step(t_in):
            with torch.no_grad():
                second = self.folded.time_bias(t_in.reshape(-1)[:1])
        else:
            with torch.no_grad():
                return self.folded(x, self.folded.time_bias(t_in))
        feeds = dict(zip(INPUT_NAMES if self.folded is None else FOLDED_INPUT_NAMES,
                         (x.detach().contiguous().numpy(), second.detach().contiguous().numpy())))
        return torch.from_numpy(self.session.run(None, feeds)[0])


def exportable(network: nn.Module) -> bool:
    """Whether ``network`` is built of modules the exporters know: not a training copy of ``pyddpm.fast_network``
    (whose autograd Functions and pyddpm._C kernels do not export)."""
    return all(type(m).__module__ != fast_network_module.__name__ for m in network.modules())


def onnxruntime_network(network: nn.Module, x: Tensor, t_in: Tensor) -> OnnxRuntimeNetwork:
    """``network`` under onnxruntime with torch's thread count, checked against ``network`` on (x, t_in): ExportError
    when onnxruntime is missing, the network is a training copy, the export fails, or the two disagree by more
    than ``AGREEMENT``."""
    if not exportable(network):
        raise ExportError("a training copy of the network (pyddpm.fast_network.training_network) does not export; "
                          "sample from the network as built")
    try:
        ort_network = OnnxRuntimeNetwork(network, x, t_in, torch.get_num_threads())
        if ort_network.folded is not None:  # its session runs the batches at one time step: check it on one
            t_in = t_in.reshape(-1, 1)[:1].expand(x.shape[0], 1)
        got = ort_network(x, t_in)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter or session failure means: not this runtime
        raise ExportError(f"the network did not export to onnxruntime ({type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0]})") from None
    with torch.no_grad():
        expected = network(x, t_in).float()
    diff = float((got - expected).abs().max())
    if not diff <= AGREEMENT * max(1.0, float(expected.abs().max())):
        raise ExportError(f"onnxruntime's output differs from torch's by {diff:.3g} on the sampler's input")
    return ort_network


SETTLE_SECONDS = 0.02  # rest between timing blocks: onnxruntime's and OpenMP's threads spin on after a run


SPIN_SECONDS = 0.3  # how long onnxruntime's threads spin on after a run, slowing what runs next on the cores


def bracketed_median_seconds(first, second, repeats: int = 3) -> tuple[float, float]:
    """The median wall times of ``repeats`` calls of ``first()`` and of ``second()`` (onnxruntime's network), after
    a warm-up call of each: ``first`` is timed before and after ``second`` and its two medians averaged, so that
    a drift of the machine's speed moves both alike. ``first`` waits SPIN_SECONDS after ``second``: onnxruntime's
    threads spin on after a run, and the DDPM U-Net's torch forward took 80 ms right after it, 55 ms 0.02 s
    after, 42 ms 0.3 s after (2 cores; the choice went to onnxruntime at 50 ms a step against torch's 43)."""
    before = median_seconds(first, repeats)
    after_second = median_seconds(second, repeats)
    time.sleep(SPIN_SECONDS)
    after = median_seconds(first, repeats)
    return (before + after) / 2, after_second


def median_seconds(function, repeats: int = 3) -> float:
    """The median wall time of ``repeats`` calls of ``function()`` after one untimed call, then a short rest."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    time.sleep(SETTLE_SECONDS)
    return statistics.median(times)
