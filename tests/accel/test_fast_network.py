"""pyddpm.accel.fast_network against the networks' own eager float32 forward, at trained activation ranges, and the
samplers on it against the samplers on the eager network (same seed).

Tolerances. float32 fast path: the same function with another summation order (oneDNN instead of MKL; channels-
last convolutions), so outputs agree to float32 rounding of the sums: |fast - eager| <= 1e-5 x max(1, |eager|)
(a dot product of K terms in another order differs by up to ~K x 2^-24 of the sum of |terms|; K <= 4608 here,
and the tests measure ~1e-6). Samples: 1000 steps of those rounding differences, each contracted by the reverse
process, stay within 1e-4 in model space. bf16: the network's inputs and weights rounded to 8 significant bits
(2^-8 = 0.4% relative): a trained network's eps_hat agrees within 5% of its scale, pre-activations at +-200 only
stay finite (bf16's spacing there is 1.0), and the samples are judged by what they are for: the same support
fraction as float32 within 3 standard errors.
"""
import copy
import importlib
import math
import warnings

import pytest
import torch
from torch import nn

from helpers.activation_range import NETWORKS, TARGET, push_preactivations
from pyddpm.accel import levers, linear
from pyddpm.accel.elementwise import FastDropout, FastLogSigmoid
from pyddpm.accel.fast_network import fast_network, native_bf16, training_network
from pyddpm.accel.normalisation import FastGroupNorm, FastResidualBlock
from pyddpm.data import toy_distribution
from pyddpm.nets import FcNetwork
from pyddpm.samplers import ddim_sample, ddpm_sample

fast_module = importlib.import_module("pyddpm.accel.fast_network")  # (the package's fast_network is the function)

# pyddpm refuses bf16 on a CPU without bfloat16 arithmetic (test_bf16_is_refused_on_a_cpu_without_bf16_arithmetic):
# the tests of what bf16 computes need one
needs_native_bf16 = pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no AVX512-BF16 or AMX: pyddpm "
                                       "refuses --precision bf16 on it")


def cpu_class(monkeypatch, avx2_only: bool) -> None:
    """Make this CPU count as AVX2 only (or not) for the levers' table."""
    monkeypatch.setitem(levers.CPU_CLASSES, "AVX2 only", ("", lambda: avx2_only))
    monkeypatch.setitem(levers.CPU_CLASSES, "not AVX2 only", ("", lambda: not avx2_only))


def pushed(name: str, batch: int = 16):
    """NETWORKS[name] with its pre-activations at +-TARGET on (x, t), and (x, t)."""
    factory, shape, layers = NETWORKS[name]
    torch.manual_seed(0)
    network = factory().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=generator)
    t = torch.rand(batch, 1, generator=generator)
    assert push_preactivations(network, layers(network), x, t) >= 0.99 * TARGET
    return network, x, t


@pytest.mark.parametrize("one_step", [False, True], ids=["t per row", "one t (as sampled)"])
@pytest.mark.parametrize("name", NETWORKS)
def test_fp32_fast_network_equals_eager_at_trained_activation_ranges(name, one_step):
    network, x, t = pushed(name)
    t = t[:1].expand_as(t).clone() if one_step else t
    before = {k: v.clone() for k, v in network.state_dict().items()}
    types = [type(m) for m in network.modules()]
    fast = fast_network(network, "cpu")
    with torch.no_grad():
        eager, out = network(x, t), fast(x, t)
    assert out.dtype == torch.float32 and out.shape == eager.shape
    assert torch.isfinite(out).all()
    scale = max(1.0, float(eager.abs().max()))
    if one_step and name.startswith("fc"):
        # the time folded into the first layer's bias rounds the time term of +-200 pre-activations once more
        # (200 x 2^-24 = 1.2e-5), which layers pushed to +-200 carry to the output: judged against float64,
        # the fast copy is as exact as the eager float32 network (measured 0.95-1.07x its error)
        with torch.no_grad():
            exact = copy.deepcopy(network).double()(x.double(), t.double())
        assert float((out - exact).abs().max()) <= 1.5 * float((eager - exact).abs().max()) + 1e-6 * scale
    else:
        assert float((out - eager).abs().max()) <= 1e-5 * scale
    # the trained network itself is untouched
    assert [type(m) for m in network.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


@pytest.mark.parametrize("name", ["fc-silu", "fc-relu", "unet"])
@pytest.mark.parametrize("avx2_only", [False, True], ids=["avx512", "avx2"])
def test_the_fast_path_really_rewrites_the_network(name, avx2_only, monkeypatch):
    """The Linear layers run on oneDNN with ReLU fused into them; SiLUs are oneDNN's fused swish, except on x86
    without AVX-512, where ATen's SiLU runs after the product (oneDNN's fused one is slower there, and pyddpm::silu_
    measured no gain in float32); either way the copy equals eager."""
    cpu_class(monkeypatch, avx2_only)
    network, x, t = pushed(name)
    fast = fast_network(network, "cpu")
    kinds = {type(m) for m in fast.modules()}
    if name.startswith("fc"):
        assert linear.OneDNNLinear in kinds and nn.Linear not in kinds
        linears = [m for m in fast.modules() if type(m) is linear.OneDNNLinear]
        silu = ("swish", False) if not avx2_only else (None, False)  # (oneDNN's post-op, pyddpm::silu_)
        assert [((m.post_op or (None,))[0], m.silu_kernel) for m in linears] == (
            [("relu", False)] * (len(linears) - 1) + [(None, False)] if name == "fc-relu"
            else [silu] * (len(linears) - 1) + [(None, False)])
        with torch.no_grad():
            eager = network(x, t)
            assert float((fast(x, t) - eager).abs().max()) <= 1e-5 * max(1.0, float(eager.abs().max()))
    else:
        assert FastLogSigmoid in kinds and nn.LogSigmoid not in kinds
        conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def folded(network: FcNetwork) -> linear.OneTimeStepFcNetwork:
    """The fc-time-fold lever's module (bf16 on AVX512-BF16 CPUs only) over the float32 fast copy, so that it is
    tested on every CPU."""
    return linear.OneTimeStepFcNetwork(fast_network(network, "cpu").network, network).eval()


def test_an_fc_networks_fast_copy_folds_one_time_step_into_its_first_layer():
    """A batch at one time step (as the samplers give) embeds the time once, for one row; a batch at several
    steps takes the whole network (both equal eager: the test above)."""
    network, x, t = pushed("fc-silu")
    assert type(fast_network(network, "cpu").network) is not linear.OneTimeStepFcNetwork  # float32: not a lever
    fast = folded(network)
    rows = []
    fast.fast.time_embedding.register_forward_hook(lambda m, args, out: rows.append(out.shape[0]))
    with torch.no_grad():
        fast(x, t[:1].expand_as(t))
        fast(x, t)
    assert rows == [1, len(x)]
    # the exercise's network (t as one input) and Fourier input features fold too, to float32 rounding
    torch.manual_seed(3)
    for other in (FcNetwork(2, 16), FcNetwork(2, 32, 3, "silu", "sinusoidal", input_embedding="fourier")):
        fast = folded(other.eval())
        x, t = torch.randn(64, 2) * 20, torch.full((64, 1), 0.3)
        with torch.no_grad():
            eager = other(x, t)
            assert float((fast(x, t) - eager).abs().max()) <= 1e-5 * max(1.0, float(eager.abs().max()))


def test_the_ddpm_unet_runs_channels_last_with_fused_group_norms():
    """Every GroupNorm is pyddpm's kernel, fused with the SiLU after it, and every convolution sees channels-last
    maps, the one-channel stem's output included (torch would return it in NCHW)."""
    from pyddpm.accel.convolution import channels_last_output
    from pyddpm.nets.unet_ddpm import ResidualBlock, SelfAttention

    network, x, t = pushed("unet-ddpm")
    fast = fast_network(network, "cpu")
    kinds = [type(m) for m in fast.modules()]
    assert FastGroupNorm in kinds and nn.GroupNorm not in kinds
    # the SiLUs after GroupNorms are fused, and the time MLP's Linear fuses its own (oneDNN's or pyddpm::silu_;
    # the module stays its ``activation`` for the fallback)
    assert all(name.endswith(".activation") for name, m in fast.named_modules() if type(m) is nn.SiLU)
    assert kinds.count(FastResidualBlock) == [type(m) for m in network.modules()].count(ResidualBlock)
    norms = [m for m in fast.modules() if isinstance(m, FastGroupNorm)]
    attention = sum(1 for m in network.modules() if isinstance(m, SelfAttention))
    assert sum(m.silu for m in norms) == len(norms) - attention  # all but the attention's norms
    assert channels_last_output in fast.network.stem._forward_hooks.values()
    layouts = []
    hooks = [m.register_forward_pre_hook(lambda m, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last))) for m in fast.modules()
        if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        fast(x, t)
    for h in hooks:
        h.remove()
    assert len(layouts) > 10 and all(layouts[1:])  # the first is the stem's one-channel input


@needs_native_bf16
@pytest.mark.parametrize("name", NETWORKS)
def test_bf16_fast_network_stays_finite_at_trained_activation_ranges(name):
    """bf16 has float32's exponent range: pre-activations of +-200 neither overflow nor give NaN (their values
    are off by up to bf16's spacing there, 1.0, which is why bf16 is an option judged on samples)."""
    network, x, t = pushed(name)
    with torch.no_grad():
        out = fast_network(network, "cpu", "bf16")(x, t)
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()


def test_fast_log_sigmoid_is_log_sigmoid_everywhere_with_finite_gradients():
    x = torch.cat([torch.linspace(-300, 300, 20001), torch.randn(10000) * 30]).requires_grad_()
    ref = nn.functional.logsigmoid(x.detach().double())
    out = FastLogSigmoid()(x)
    assert torch.isfinite(out).all()
    # float32 rounding of values up to 300 in magnitude: 1 ulp of 256 is 3e-5; near 0, 1e-6 absolute
    assert torch.allclose(out.double(), ref, rtol=2e-7, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(x.grad.double(), torch.sigmoid(-x.detach().double()), atol=1e-6)


def test_without_onednns_private_linear_the_linears_stay(monkeypatch):
    """torch.ops.mkldnn._linear_pointwise is a private entry point: missing (here: raising) at copy time, the
    Linear levers do not apply and the copy computes the network's own function."""
    network, x, t = pushed("fc-silu")

    def broken(*args):
        raise RuntimeError("no oneDNN here")
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    assert not linear.onednn_linear_works()
    fast = fast_network(network, "cpu")
    kinds = {type(m) for m in fast.modules()}
    assert nn.Linear in kinds and linear.OneDNNLinear not in kinds
    with torch.no_grad():
        assert torch.equal(fast(x, t), network(x, t))


@pytest.mark.parametrize("purpose", ["sample", "train"])
def test_a_linear_whose_onednn_call_raises_falls_back_to_the_plain_module(purpose, monkeypatch):
    """Made while oneDNN worked, a copy whose oneDNN Linear then raises runs F.linear from then on (one warning
    per layer), and gives the network's function (to float32 rounding: oneDNN's sums, then torch's)."""
    cpu_class(monkeypatch, avx2_only=False)  # (the training copy's oneDNN Linear, on any CPU)
    network, x, t = pushed("fc-silu")
    network.requires_grad_(purpose == "train")
    fast = fast_network(network, "cpu") if purpose == "sample" else training_network(network, "cpu")
    kind = linear.OneDNNLinear if purpose == "sample" else linear.TrainableOneDNNLinear
    assert kind in {type(m) for m in fast.modules()}

    def broken(*args):
        raise RuntimeError("oneDNN went away")
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.set_grad_enabled(purpose == "train"):
            out, eager = fast(x, t).detach(), network(x, t).detach()
    layers = [m for m in fast.modules() if type(m) is kind]
    assert len([w for w in caught if "oneDNN's Linear failed" in str(w.message)]) == len(layers)
    assert not any(m.onednn for m in layers)
    assert float((out - eager).abs().max()) <= 1e-5 * max(1.0, float(eager.abs().max()))


@pytest.mark.parametrize("purpose", ["sample", "train"])
def test_other_networks_are_the_users_own(purpose):
    """No lever applies to a network that is not pyddpm's own class (a subclass included): the fast copy is the
    network itself (under the bf16 wrapper at most), the training copy the network."""

    class Counting(FcNetwork):
        calls = 0

        def forward(self, x, t):
            Counting.calls += 1
            return super().forward(x, t)

    custom = nn.Sequential(nn.Linear(3, 3), nn.SiLU())
    for network in (Counting(2, 16), custom):
        assert levers.levers_for(network, "fp32", purpose) == []
        if purpose == "train":
            assert training_network(network, "cpu") is network
        else:
            assert fast_network(network, "cpu").network is network
    fast_network(Counting(2, 16), "cpu")(torch.randn(4, 2), torch.rand(4, 1))
    assert Counting.calls == 1


def test_the_table_and_the_command_say_which_levers_a_network_gets(capsys):
    """Each lever of the table names what it replaces, a CPU class, precisions, purposes, a gain and how it was
    measured; ``python -m pyddpm.accel`` prints the ones a network gets here."""
    from pyddpm.accel.__main__ import main

    for lever in levers.LEVERS:
        assert lever.replaces and lever.cpu in levers.CPU_CLASSES and lever.gain and lever.measured
        assert set(lever.precisions) <= {"fp32", "bf16"} and set(lever.purposes) <= {"sample", "train"}
    names = {lv.name for lv in levers.levers_for(NETWORKS["unet"][0](), "fp32", "sample")}
    assert {"log-sigmoid-kernel", "channels-last"} <= names
    assert main(["unet"]) == 0
    out = capsys.readouterr().out
    assert "log-sigmoid-kernel" in out and "channels-last" in out


@needs_native_bf16
@pytest.mark.parametrize("name", ["fc-silu", "fc-relu", "fc-gelu", "unet-ddpm"])
def test_bf16_linears_are_onednn_with_bf16_weights_and_match_autocast(name):
    """The bf16 copy's Linears hold bfloat16 weights (rounded once, not on every call as autocast does) and give
    autocast's function: the same roundings of x and W, float32 sums; only a ReLU, GELU or tanh comes before the
    last rounding to bfloat16 instead of after it (a SiLU comes after it, as pyddpm::silu_), so a layer's output
    differs by up to one bfloat16 spacing (2^-8 relative; here of pre-activations pushed to +-200) and the
    network's output by a few: within 1% of its scale
    for the FcNetworks (measured 0 to 0.2%), 5% for the DDPM U-Net, whose ~20 layers after its time MLP carry
    the differences of that MLP's +-200 activations (measured 2.5%)."""
    network, _, _ = pushed(name)
    generator = torch.Generator().manual_seed(2)
    shape = NETWORKS[name][1]
    x, t = torch.randn(16, *shape, generator=generator), torch.rand(16, 1, generator=generator)
    fast = fast_network(network, "cpu", "bf16")
    linears = [m for m in fast.modules() if isinstance(m, linear.OneDNNLinear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert any(m.silu_kernel for m in linears) == (name in ("fc-silu", "unet-ddpm"))  # their SiLUs after a Linear
    assert nn.Linear not in {type(m) for m in fast.modules()}
    with torch.no_grad():
        out = fast(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference = network(x, t).float()
    scale = float(reference.abs().max())
    tolerance = 0.05 if name == "unet-ddpm" else 0.01
    assert out.dtype == torch.float32 and float((out - reference).abs().max()) <= tolerance * scale


@needs_native_bf16
@pytest.mark.parametrize("name", ["fc-silu", "fc-relu", "fc-gelu", "fc-tanh"])
def test_bf16_at_one_time_step_is_as_close_to_fp32_as_autocast(name):
    """A batch at one time step folds the time into the first layer, whose time term is then float32 where
    autocast rounds the time features and their weights, so its error against float32 is not autocast's but no
    larger: rms over 256 rows at +-200 pre-activations, measured 0.6-1.3x autocast's over ten seeds (the tanh
    network amplifies bfloat16's roundings to several % either way); allowed 1.5x."""
    network, _, _ = pushed(name)
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(256, 2, generator=generator), torch.rand(1, 1, generator=generator).expand(256, 1)
    fast = fast_network(network, "cpu", "bf16")
    assert type(fast.network) is linear.OneTimeStepFcNetwork
    with torch.no_grad():
        fp32, out = network(x, t), fast(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = network(x, t).float()
    rms = [float((y - fp32).pow(2).mean().sqrt()) for y in (out, autocast)]
    assert 0 < rms[0] <= 1.5 * rms[1], rms


def test_samples_of_the_fast_path_equal_the_eager_networks(chequerboard_model):
    model = chequerboard_model
    for sampler in (lambda **o: ddpm_sample(model, (2000, 2), seed=5, **o),
                    lambda **o: ddim_sample(model, (2000, 2), 20, seed=5, **o)):
        fast, eager = sampler(fast=True), sampler(fast=False)
        assert float((fast - eager).abs().max()) <= 1e-4


def test_fast_seeded_samples_do_not_depend_on_the_batch(chequerboard_model):
    whole = ddpm_sample(chequerboard_model, (300, 2), seed=9, fast=True)
    part = ddpm_sample(chequerboard_model, (100, 2), seed=9, sample_offset=100, fast=True)
    assert float((whole[100:200] - part).abs().max()) <= 1e-4


@needs_native_bf16
def test_bf16_eps_of_a_trained_network_is_close_to_fp32(chequerboard_model):
    network = chequerboard_model.network
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2)) * 4
    for t in (0.0, 0.1, 0.5, 0.99):
        time = torch.full((4000, 1), t)
        with torch.no_grad():
            fp32, bf16 = network(x, time), fast_network(network, "cpu", "bf16")(x, time)
        assert float((bf16 - fp32).abs().max()) <= 0.05 * float(fp32.abs().max()), t


@needs_native_bf16
def test_bf16_samples_have_the_fp32_support_fraction(chequerboard_model):
    n = 4000
    fp32 = ddpm_sample(chequerboard_model, (n, 2), seed=11, fast=True) / 8
    bf16 = ddpm_sample(chequerboard_model, (n, 2), seed=11, precision="bf16", fast=True) / 8
    squares = toy_distribution("chequerboard").square_index
    a, b = float((squares(fp32) >= 0).double().mean()), float((squares(bf16) >= 0).double().mean())
    assert a > 0.8  # the model is trained: the comparison means something
    se = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    assert abs(a - b) <= 3 * se, (a, b)


def test_precision_is_checked_and_needs_the_fast_path(chequerboard_model):
    with pytest.raises(ValueError, match="precision"):
        ddpm_sample(chequerboard_model, (4, 2), seed=0, precision="fp16")
    with pytest.raises(ValueError, match="fast"):
        ddpm_sample(chequerboard_model, (4, 2), seed=0, precision="bf16", fast=False)


def test_the_fast_copy_is_reused_until_the_weights_change(chequerboard_model, monkeypatch):
    monkeypatch.setattr(fast_module, "native_bf16", lambda device: True)  # (what is cached, on any CPU)
    monkeypatch.setattr(levers, "native_bf16", lambda device: True)
    model = copy.deepcopy(chequerboard_model)
    from pyddpm.accel import sampling_network
    first = sampling_network(model)
    assert sampling_network(model) is first
    assert sampling_network(model, "bf16") is not first
    with torch.no_grad():
        model.network.network[0].weight.mul_(2.0)  # an in-place update, as an optimizer step makes
    fresh = sampling_network(model)
    assert fresh is not first
    x, t = torch.randn(8, 2), torch.full((8, 1), 0.5)
    with torch.no_grad():
        assert torch.allclose(fresh(x, t), model.network(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "unet-ddpm", "fc-silu"])
def test_training_network_has_the_eager_gradients_at_trained_activation_ranges(name, monkeypatch):
    """The training copy (pyddpm::log_sigmoid's backward, channels-last, oneDNN's Linear: on any CPU here) gives
    the network's loss and gradients to float32 rounding: |diff| <= 1e-4 x max(1, |eager|) per tensor (sums over
    the batch and the feature maps in another order; measured ~1e-6)."""
    cpu_class(monkeypatch, avx2_only=False)
    network, x, t = pushed(name)
    network.requires_grad_(True)
    fast = training_network(network, "cpu")
    losses, grads = [], []
    for net in (network, fast):
        net.zero_grad()
        loss = (net(x, t) ** 2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert float((losses[0] - losses[1]).abs()) <= 1e-4 * max(1.0, float(losses[0].abs()))
    for k, g in grads[0].items():
        assert float((grads[1][k] - g).abs().max()) <= 1e-4 * max(1.0, float(g.abs().max())), k


@pytest.mark.parametrize("name", ["unet", "unet-ddpm", "fc-silu"])
def test_a_training_copy_has_the_networks_state_dict(name, monkeypatch):
    """Checkpoints of a run trained on the fast copy load into the network as built, and back: the same names,
    shapes and values (the copy's modules keep their Parameters' names; the channels-last stem is a hook)."""
    cpu_class(monkeypatch, avx2_only=False)  # (oneDNN Linears, on any CPU)
    monkeypatch.setattr(fast_module, "native_bf16", lambda device: True)  # (the names, on any CPU)
    monkeypatch.setattr(levers, "native_bf16", lambda device: True)
    network, _, _ = pushed(name)
    for precision in ("fp32", "bf16"):
        copy_state = training_network(network, "cpu", precision).state_dict()
        assert list(copy_state) == list(network.state_dict())
        assert all(torch.equal(copy_state[k], v) for k, v in network.state_dict().items())


def test_fast_dropout_drops_p_and_scales_the_rest():
    """FastDropout keeps each element with probability 1 - p (binomial: within 5 standard errors over 10^6
    elements), scales the kept ones by 1 / (1 - p) so the mean is kept, passes gradients through the same mask,
    and is the identity in eval mode."""
    torch.manual_seed(0)
    drop = FastDropout(nn.Dropout(0.1))
    x = torch.rand(1000, 1000) + 1.0
    x.requires_grad_(True)
    y = drop(x)
    kept = y != 0
    n, share = kept.numel(), float(kept.float().mean())
    assert abs(share - 0.9) <= 5 * math.sqrt(0.9 * 0.1 / n)
    assert torch.allclose(y[kept], x[kept] / 0.9, rtol=1e-4)
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.9),
                                                             rtol=1e-4)
    drop.eval()
    assert drop(x) is x
    assert torch.equal(drop.train()(x.detach()[:0]), x.detach()[:0])  # empty input


@needs_native_bf16
def test_bf16_training_tracks_fp32(tmp_path):
    """pyddpm's Trainer with --precision bf16 against float32, the same seed: the mean loss of the last 150 of 400
    steps agrees within 3 standard errors of the per-step losses (Welch's t at 3 sigma; the per-step loss is a
    Monte-Carlo estimate of L_simple with ~20% noise), and bf16 really trains under autocast."""
    from pyddpm.config import TrainConfig
    from pyddpm.train import Trainer

    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(data="cb", hidden=128, depth=3, batch_size=256, num_train=102400, epochs=1, ema=0.0,
                          precision=precision, low_t_share=0.0)  # uniform t: the loss falls by > 20%
        trainer = Trainer(cfg, tmp_path / precision, torch.device("cpu"), resume=False)
        assert trainer.amp == (precision == "bf16")
        curves[precision] = torch.stack([trainer.train_step(step) for step in range(400)]).double()
    first = curves["fp32"][:50].mean()
    a, b = curves["fp32"][-150:], curves["bf16"][-150:]
    assert a.mean() < 0.8 * first  # it trained
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(float(a.mean() - b.mean())) <= 3 * se, (float(a.mean()), float(b.mean()), se)


@needs_native_bf16
def test_a_network_in_training_samples_through_the_same_fast_copies():
    """The Trainer's copy (trainable oneDNN Linears) gives the same fast sampling networks as the network itself,
    in float32 and in bf16 (inference oneDNN Linears with bfloat16 weights)."""
    network, x, t = pushed("fc-silu")
    training = training_network(network, "cpu")
    assert linear.TrainableOneDNNLinear in {type(m) for m in training.modules()}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            a, b = fast_network(network, "cpu", precision)(x, t), fast_network(training, "cpu", precision)(x, t)
            assert torch.equal(a, b), precision
    assert linear.TrainableOneDNNLinear not in {type(m) for m in fast_network(training, "cpu", "bf16").modules()}


def test_the_trainers_average_holds_the_network_as_built(tmp_path, monkeypatch):
    """The Trainer trains a fast copy (trainable oneDNN Linears) but keeps its EMA in the network as built, the
    one samplers copy and export; the average pairs parameters by name and moves towards the trained weights."""
    from pyddpm.config import TrainConfig
    from pyddpm.train import Trainer

    cpu_class(monkeypatch, avx2_only=False)  # (a copy to train, on any CPU)
    cfg = TrainConfig(data="cb", hidden=32, depth=2, batch_size=64, num_train=6400, epochs=1, ema=0.5)
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), resume=False)
    assert linear.TrainableOneDNNLinear in {type(m) for m in trainer.model.network.modules()}
    shadow = trainer.sampling_model()
    assert not any(type(m).__module__.startswith("pyddpm.accel") for m in shadow.network.modules())
    before = {k: v.clone() for k, v in shadow.state_dict().items()}
    trainer.train_step(0)
    weights = dict(trainer.model.named_parameters())
    decay = min(0.5, 2 / 11)  # the first update's warm-up decay
    for name, p in shadow.named_parameters():
        assert torch.allclose(p, decay * before[name] + (1 - decay) * weights[name].detach(), atol=1e-6), name


def test_the_average_pairs_parameters_by_name():
    from pyddpm.ema import EMA

    model = nn.Sequential()
    model.add_module("a", nn.Linear(3, 3))
    model.add_module("b", nn.Linear(3, 3))
    ema = EMA(model, 0.5)
    reordered = nn.Sequential()  # the same names, registered in the other order
    reordered.add_module("b", nn.Linear(3, 3))
    reordered.add_module("a", nn.Linear(3, 3))
    ema.update(reordered)
    for name, p in ema.shadow.named_parameters():
        expected = 2 / 11 * dict(model.named_parameters())[name] + 9 / 11 * dict(reordered.named_parameters())[name]
        assert torch.allclose(p, expected.detach()), name
    with pytest.raises(KeyError, match="'a.weight'"):
        ema.update(nn.Sequential(nn.Linear(3, 3)))


def test_native_bf16_is_what_the_cpu_reports():
    """AVX512-BF16 or AMX in /proc/cpuinfo's flags (Linux), and always on a GPU."""
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert native_bf16("cpu") == ("avx512_bf16" in flags or "amx_tile" in flags)
    assert native_bf16("cuda") and native_bf16(torch.device("cuda", 0))


def test_bf16_is_refused_on_a_cpu_without_bf16_arithmetic(monkeypatch, chequerboard_model, tmp_path):
    """Where bfloat16 is emulated (an AVX2-only CPU: 8-12x slower), every bf16 door is one ValueError naming
    the flag, before any work; float32 runs as ever."""
    from pyddpm.config import TrainConfig
    from pyddpm.train import Trainer

    monkeypatch.setattr(fast_module, "native_bf16", lambda device: torch.device(device).type != "cpu")
    network = chequerboard_model.network
    for build in (fast_network, training_network):
        with pytest.raises(ValueError, match="^--precision bf16: this CPU has no bfloat16 arithmetic"):
            build(network, "cpu", "bf16")
        assert build(network, "cpu", "fp32") is not None
    with pytest.raises(ValueError, match="^--precision bf16: this CPU"):
        ddpm_sample(copy.deepcopy(chequerboard_model), (8, 2), seed=0, precision="bf16", fast=True)
    for settings, flag in ((dict(precision="bf16"), "--precision bf16"), (dict(amp=True), "--amp")):
        cfg = TrainConfig(data="cb", hidden=16, depth=1, num_train=256, batch_size=64, **settings)
        with pytest.raises(ValueError, match=f"^{flag}: this CPU"):
            Trainer(cfg, tmp_path / "run", torch.device("cpu"), resume=False)
    assert not (tmp_path / "run").exists()


def test_the_training_copys_attention_attends_in_float32_under_bf16(monkeypatch):
    """Float32Attention (the DDPM U-Net's bf16 training copy): float32 q, k, v go to SDPA (the same bits); bfloat16
    ones give softmax(q k^T / sqrt(c)) v computed in float32 from them and rounded once to bfloat16, so forward and
    q, k, v gradients are within one bfloat16 rounding of the float64 attention of the same bfloat16 values (2^-8
    |ref|, plus 1e-4 of the tensor's largest value for float32's sums), and no further from it than SDPA's own
    bfloat16 kernel. Logits up to ~+-30, as in a trained network's sharp attention."""
    from pyddpm.accel.convolution import Float32Attention
    from pyddpm.nets.unet_ddpm import SelfAttention

    network = NETWORKS["unet-ddpm"][0]()
    monkeypatch.setattr(fast_module, "native_bf16", lambda device: True)  # (the copy's modules, on any CPU)
    monkeypatch.setattr(levers, "native_bf16", lambda device: True)
    assert Float32Attention in {type(m) for m in training_network(network, "cpu", "bf16").modules()}
    attention = Float32Attention(SelfAttention(64))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 1, 49, 64, generator=generator) * s for s in (4.0, 4.0, 1.0))
    grad = torch.randn(4, 1, 49, 64, generator=generator).bfloat16()
    assert torch.equal(attention.attend(q, k, v), nn.functional.scaled_dot_product_attention(q, k, v))

    def attend(function, dtype, autocast=False):
        inputs = [a.bfloat16().to(dtype).requires_grad_(True) for a in (q, k, v)]  # the same values
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = function(*inputs)
        out.backward(grad.to(out.dtype))  # outside autocast, as the Trainer's
        return [out.detach()] + [a.grad for a in inputs]

    ours = attend(attention.attend, torch.bfloat16, autocast=True)
    sdpa = attend(nn.functional.scaled_dot_product_attention, torch.bfloat16, autocast=True)
    reference = attend(lambda a, b, c: torch.softmax(a @ b.transpose(-1, -2) / 8.0, dim=-1) @ c, torch.float64)
    for name, a, b, ref in zip(("out", "dq", "dk", "dv"), ours, sdpa, reference):
        assert a.dtype == torch.bfloat16, name
        err, sdpa_err = (a.double() - ref).abs(), (b.double() - ref).abs()
        assert bool((err <= 2**-8 * ref.abs() + 1e-4 * ref.abs().max()).all()), (name, float(err.max()))
        assert float(err.max()) <= float(sdpa_err.max()), (name, float(err.max()), float(sdpa_err.max()))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("stride, padding, output_padding, dilation", [(2, 1, 0, 1), (2, 1, 1, 1), (1, 1, 0, 1),
                                                                       (2, 0, 1, 2)])
def test_the_adjoint_transposed_convolution_is_atens_in_float32(stride, padding, output_padding, dilation, layout):
    """_AdjointConvTranspose (the bf16 training copy's transposed convolution) against F.conv_transpose2d and its
    gradients, float32, fresh random inputs: the same function, to float32 rounding of its sums, 1e-5 of the
    scale (measured: the same bits)."""
    generator = torch.Generator().manual_seed(stride + 2 * padding + 4 * output_padding + 8 * dilation)
    x = torch.randn(5, 12, 7, 6, generator=generator).contiguous(memory_format=layout).requires_grad_(True)
    weight = (torch.randn(12, 8, 3, 3, generator=generator) * 0.3).requires_grad_(True)
    reference = nn.functional.conv_transpose2d(x, weight, None, stride, padding, output_padding, 1, dilation)
    out_size = tuple(reference.shape[2:])
    from pyddpm.accel.convolution import _AdjointConvTranspose

    out = _AdjointConvTranspose.apply(x, weight, out_size, ([stride] * 2, [padding] * 2, [dilation] * 2))
    assert out.shape == reference.shape
    grad = torch.randn(reference.shape, generator=generator)
    expected = torch.autograd.grad(reference, (x, weight), grad)
    got = torch.autograd.grad(out, (x, weight), grad)
    for a, b in zip((out.detach(), *got), (reference.detach(), *expected)):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


@needs_native_bf16
def test_the_bf16_training_copy_of_the_exercise_unet_tracks_autocast():
    """The bf16 training copy's transposed convolutions (AdjointConvTranspose) under autocast against the network
    as built under autocast, at trained activation ranges: the loss within 0.5% and each Parameter's gradient
    within 3% of its scale (bfloat16 rounds inputs, weights and each layer's output to 8 significant bits, 0.4%,
    in either; the copy rounds the transposed convolutions' output once more, before its bias; measured: loss
    within 0.02%, gradients 0.7-1.0%, over three inputs, where autocast's own differ from float32's by 17-19%);
    and it samples through the same fast copies as the network."""
    network, x, t = pushed("unet")
    network.requires_grad_(True)
    from pyddpm.accel.convolution import AdjointConvTranspose

    fast = training_network(network, "cpu", "bf16")
    transposed = sum(type(m) is nn.ConvTranspose2d for m in network.modules())
    assert transposed > 0 and sum(type(m) is AdjointConvTranspose for m in fast.modules()) == transposed
    assert AdjointConvTranspose not in {type(m) for m in training_network(network, "cpu").modules()}
    losses, grads = [], []
    for net in (network, fast):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (net(x, t).float() ** 2).mean()
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert abs(losses[1] - losses[0]) <= 0.005 * losses[0]
    for k, g in grads[0].items():
        assert float((grads[1][k] - g).abs().max()) <= 0.03 * float(g.abs().max()), k
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            a, b = fast_network(network, "cpu", precision)(x, t), fast_network(fast, "cpu", precision)(x, t)
            assert torch.equal(a, b), precision
