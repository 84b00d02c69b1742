"""The samplers' onnxruntime runtime (``pyddpm.accel.onnx_network``, ``accel.loop_network``) against torch: the network
at trained activation ranges, seeded samples of a trained model, and the choice ``runtime="auto"`` makes.

Tolerances are those of the fast torch copy (tests/test_fast_network.py), for the same reason: onnxruntime
evaluates the same float32 function in another summation order, so eps_hat agrees within 1e-5 x max(1, |eager|),
and 200 steps of those differences, each contracted by the reverse process, stay within 1e-4 in model space.
"""
import copy
import warnings

import pytest
import torch

from activation_range import NETWORKS, TARGET, push_preactivations
from pyddpm import DDPM
from pyddpm.accel import runtime as samplers
from pyddpm.accel import fast_network as fast_module
from pyddpm.accel import onnx_network as onnx_module
from pyddpm.export.onnx_export import ExportError
from pyddpm.nets import DDPMUNet
from pyddpm.accel.onnx_network import OnnxRuntimeNetwork, onnxruntime_network
from pyddpm.accel import loop_network, sampling_network
from pyddpm.samplers import ddim_sample, ddpm_sample


@pytest.mark.parametrize("name", NETWORKS)
def test_onnxruntime_network_equals_eager_at_trained_activation_ranges(name):
    factory, shape, layers = NETWORKS[name]
    torch.manual_seed(0)
    network = factory().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, *shape, generator=generator), torch.rand(16, 1, generator=generator)
    assert push_preactivations(network, layers(network), x, t) >= 0.99 * TARGET
    ort_network = onnxruntime_network(network, x, t)
    x2, t2 = torch.randn(5, *shape, generator=generator) * 3, torch.rand(5, 1, generator=generator)  # another batch
    # a batch at one time step, as the samplers give (an FcNetwork's graph then takes the time folded into a bias)
    one_step = [(x, t[:1].expand_as(t)), (x2, t2[3:4].repeat(5, 1))]
    for xs, ts in ((x, t), (x2, t2), *one_step):
        with torch.no_grad():
            eager = network(xs, ts)
        out = ort_network(xs, ts)
        assert out.dtype == torch.float32 and out.shape == eager.shape and torch.isfinite(out).all()
        scale = max(1.0, float(eager.abs().max()))
        if ort_network.folded is not None:
            # as the fast torch copy's folded first layer (tests/test_fast_network.py): the time term of +-200
            # pre-activations is rounded once more, so judged against float64 it is as exact as eager float32
            with torch.no_grad():
                exact = copy.deepcopy(network).double()(xs.double(), ts.double())
            assert float((out - exact).abs().max()) <= 1.5 * float((eager - exact).abs().max()) + 1e-6 * scale
        else:
            assert float((out - eager).abs().max()) <= 1e-5 * scale


def test_an_fc_networks_onnxruntime_graph_takes_the_time_folded_into_the_first_layers_bias(monkeypatch):
    """For a batch at one time step the session gets x and one row of bias (the time embedded once, in torch), and
    its first product skips the time columns; a batch at several steps runs the same folded module in torch."""
    from pyddpm.nets import FcNetwork

    torch.manual_seed(0)
    network = FcNetwork(2, 32, 3, "silu", "sinusoidal", input_embedding="fourier").eval()
    x, t = torch.randn(64, 2) * 20, torch.full((64, 1), 0.3)
    ort_network = onnxruntime_network(network, x, t)
    inputs = {i.name: i.shape for i in ort_network.session.get_inputs()}
    assert inputs == {"x_t": ["batch", 2], "time_bias": [1, 32]}
    assert ort_network.folded.x_weight.shape == (32, network.input_features) == (32, 2 + 32)
    runs = []
    monkeypatch.setattr(ort_network.session, "run", lambda *a, run=ort_network.session.run: runs.append(1) or run(*a))
    with torch.no_grad():
        for ts in (t, torch.rand(64, 1)):
            assert float((ort_network(x, ts) - network(x, ts)).abs().max()) <= 1e-5 * max(
                1.0, float(network(x, ts).abs().max()))
    assert runs == [1]  # the one-step batch only
    # made for a batch at several steps, the session is still checked against torch (on that batch at one step)
    runs.clear()
    monkeypatch.setattr(onnx_module.OnnxRuntimeNetwork, "__call__", lambda self, xs, ts, call=(
        onnx_module.OnnxRuntimeNetwork.__call__): runs.append(fast_module.one_time_step(ts)) or call(self, xs, ts))
    onnxruntime_network(network, x, torch.rand(64, 1))
    assert runs == [True]


def test_seeded_samples_on_onnxruntime_equal_torchs(chequerboard_model):
    model = copy.deepcopy(chequerboard_model)
    for sampler in (lambda **o: ddpm_sample(model, (2000, 2), seed=5, **o),
                    lambda **o: ddim_sample(model, (2000, 2), 20, seed=5, **o)):
        ort, eager = sampler(runtime="onnxruntime"), sampler(fast=False)
        assert float((ort - eager).abs().max()) <= 1e-4
    whole = ddpm_sample(model, (300, 2), seed=9, runtime="onnxruntime")
    part = ddpm_sample(model, (100, 2), seed=9, sample_offset=100, runtime="onnxruntime")
    assert float((whole[100:200] - part).abs().max()) <= 1e-4


def test_a_model_that_sampled_on_onnxruntime_copies_and_pickles_without_its_fast_copies(chequerboard_model):
    """The fast copies and runtime choices kept on a model are derived state: a deep copy or a pickle starts without
    them (an onnxruntime session cannot be copied) and makes its own, with the same samples."""
    import pickle

    model = copy.deepcopy(chequerboard_model)
    ort = ddpm_sample(model, (64, 2), seed=3, runtime="onnxruntime")
    assert any(isinstance(network, OnnxRuntimeNetwork) for _, _, choices in model._fast_network_cache.values()
               for network in choices.values())
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not twin._fast_network_cache
        assert torch.equal(ddpm_sample(twin, (64, 2), seed=3, runtime="onnxruntime"), ort)


def test_a_ddpm_unets_samples_on_onnxruntime_equal_torchs():
    torch.manual_seed(0)
    model = DDPM(DDPMUNet(channels=(16, 32), num_res_blocks=1, dropout=0.0), T=20).eval()
    ort = ddpm_sample(model, (6, 784), seed=3, runtime="onnxruntime")
    eager = ddpm_sample(model, (6, 784), seed=3, fast=False)
    assert float((ort - eager).abs().max()) <= 1e-4 * max(1.0, float(eager.abs().max()))


def timed_as(monkeypatch, torch_seconds: float, ort_seconds: float) -> list[str]:
    """Make ``samplers.median_seconds`` (the torch network alone) and ``samplers.bracketed_median_seconds`` (torch's
    and onnxruntime's) report these times; the calls."""
    calls = []

    def alone(function, repeats=3):
        function()
        assert "ort_network" not in function.__code__.co_freevars
        calls.append("torch")
        return torch_seconds

    def bracketed(first, second, repeats=3):
        first(), second()
        assert "ort_network" in second.__code__.co_freevars and "ort_network" not in first.__code__.co_freevars
        calls.append("torch and onnxruntime")
        return torch_seconds, ort_seconds
    monkeypatch.setattr(samplers, "median_seconds", alone)
    monkeypatch.setattr(samplers, "bracketed_median_seconds", bracketed)
    return calls


@pytest.mark.parametrize("torch_seconds, ort_seconds, chosen", [(0.01, 0.005, OnnxRuntimeNetwork),
                                                                 (0.01, 0.0094, OnnxRuntimeNetwork),
                                                                 (0.01, 0.0096, None),
                                                                 (0.005, 0.01, None)],
                         ids=["2x faster", "6% faster", "4% faster: within the margin", "slower"])
def test_auto_takes_the_runtime_that_measures_faster(chequerboard_model, monkeypatch, torch_seconds, ort_seconds,
                                                     chosen):
    """onnxruntime where it measures faster than torch by more than accel.runtime.ONNXRUNTIME_MARGIN (5%)."""
    model = copy.deepcopy(chequerboard_model)
    calls = timed_as(monkeypatch, torch_seconds, ort_seconds)
    x, t_in = torch.randn(64, 2), model.time_input(model.T, 64)
    with torch.no_grad():
        network = loop_network(model, x, t_in, steps=1000)
        assert loop_network(model, x, t_in, steps=1000) is network  # kept, not timed again
    assert calls == ["torch", "torch and onnxruntime"]
    assert isinstance(network, chosen) if chosen else network is sampling_network(model)
    with torch.no_grad():
        model.network.network[0].weight.mul_(1.5)  # new weights: a new choice
        again = loop_network(model, x, t_in, steps=1000)
    assert calls == ["torch", "torch and onnxruntime"] * 2 and again is not network
    # the default samplers use the choice: the same samples as the chosen runtime's
    default = ddpm_sample(model, (64, 2), seed=2)
    assert torch.equal(default, ddpm_sample(model, (64, 2), seed=2,
                                            runtime="onnxruntime" if chosen else "torch"))


def test_auto_does_not_export_for_a_short_loop(chequerboard_model, monkeypatch):
    model = copy.deepcopy(chequerboard_model)
    calls = timed_as(monkeypatch, 0.001, 0.0001)
    monkeypatch.setattr(samplers, "onnxruntime_network", lambda *a: pytest.fail("exported for a short loop"))
    with torch.no_grad():
        network = loop_network(model, torch.randn(8, 2), model.time_input(10, 8), steps=10)
    assert network is sampling_network(model) and calls == ["torch"]


@pytest.mark.parametrize("failure", ["missing", "disagrees"])
def test_auto_falls_back_to_torch_with_one_warning(chequerboard_model, monkeypatch, failure):
    model = copy.deepcopy(chequerboard_model)
    timed_as(monkeypatch, 1.0, 0.001)
    if failure == "missing":
        def missing():
            raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime (No module named 'onnxruntime')")
        monkeypatch.setattr(onnx_module, "require_onnx", missing)
    else:
        real_call = OnnxRuntimeNetwork.__call__
        monkeypatch.setattr(OnnxRuntimeNetwork, "__call__", lambda self, x, t: real_call(self, x, t) + 1e-2)
    monkeypatch.setattr(fast_module, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ddpm_sample(model, (32, 2), seed=4)
        ddpm_sample(model, (48, 2), seed=4)  # another shape: timed again, the same failure, no second warning
    messages = [str(w.message) for w in caught if "onnxruntime" in str(w.message)]
    assert len(messages) == 1
    assert ("No module named 'onnxruntime'" if failure == "missing" else "differs") in messages[0]
    assert torch.equal(first, ddpm_sample(model, (32, 2), seed=4, runtime="torch"))
    if failure == "missing":
        with pytest.raises(ExportError, match="onnxruntime"):
            ddpm_sample(model, (32, 2), seed=4, runtime="onnxruntime")


def test_runtime_options_are_checked(chequerboard_model):
    with pytest.raises(ValueError, match="unknown runtime"):
        ddpm_sample(chequerboard_model, (4, 2), seed=0, runtime="tensorrt")
    for options in (dict(precision="bf16"), dict(fast=False)):
        with pytest.raises(ValueError, match="--runtime onnxruntime"):
            ddpm_sample(chequerboard_model, (4, 2), seed=0, runtime="onnxruntime", **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_onnxruntime_runtime_is_refused_on_cuda(chequerboard_model):
    model = copy.deepcopy(chequerboard_model).cuda()
    with pytest.raises(ValueError, match="runs on the CPU"):
        ddpm_sample(model, (4, 2), seed=0, runtime="onnxruntime")
    assert ddpm_sample(model, (4, 2), seed=0).is_cuda  # auto stays with torch on CUDA


def test_a_training_copy_samples_on_torch_without_a_warning(chequerboard_model, monkeypatch):
    from pyddpm.accel.fast_network import training_network

    monkeypatch.setattr(fast_module, "onednn_linear_wins", lambda: True)  # (oneDNN Linears, on any CPU)
    model = copy.deepcopy(chequerboard_model)
    model.network = training_network(model.network, "cpu")
    timed_as(monkeypatch, 1.0, 0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            network = loop_network(model, torch.randn(16, 2), model.time_input(model.T, 16), steps=1000)
    assert network is sampling_network(model)
    with pytest.raises(ExportError, match="training copy"):
        ddpm_sample(model, (16, 2), seed=0, runtime="onnxruntime")


def test_bracketed_timing_times_the_first_before_and_after_the_second(monkeypatch):
    """On a machine that slows down steadily, the first's two medians average to the second's when both do the
    same work; it rests SPIN_SECONDS before timing the first again."""
    from pyddpm.accel import onnx_network
    order, rests, clock = [], [], iter(range(1000))
    monkeypatch.setattr(onnx_network.time, "perf_counter", lambda: next(clock) ** 2 / 1e4)  # a slowing machine
    monkeypatch.setattr(onnx_network.time, "sleep", rests.append)
    first, second = onnx_network.bracketed_median_seconds(lambda: order.append("a"), lambda: order.append("b"), 3)
    assert order == list("aaaa") + list("bbbb") + list("aaaa")  # each: one untimed call, three timed
    assert onnx_network.SPIN_SECONDS in rests
    # the j-th timed call lasts (4 j + 1) / 1e4 s: a's medians 5 and 29, b's 17
    assert (first, second) == (pytest.approx(17e-4), pytest.approx(17e-4))
