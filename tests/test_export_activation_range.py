"""Export at the activation ranges trained networks reach: every network, every activation, pre-activations
pushed to +-200 (a trained exercise U-Net reaches -145 at its LogSigmoids, where Log(Sigmoid(x)) underflows to
-inf in float32 and the exported graph gave NaN). denoiser.onnx, step.onnx and the TorchScript files must still
reproduce PyTorch (the exporters' own check: max abs difference <= 1e-4 x max(1, |output|), float32 rounding
of the same ops in another order)."""
import warnings

import pytest
import torch
from torch import nn

from pyddpm import DDPM, __version__
from pyddpm.export.modules import Denoiser, ReverseStep
from pyddpm.export.onnx_export import export_onnx
from pyddpm.export.torchscript import export_torchscript
from pyddpm.nets import DDPMUNet, ExerciseUNet, FcNetwork
from pyddpm.nets.fc import ACTIVATIONS
from pyddpm.nets.unet_ddpm import ResidualBlock

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:FutureWarning")
TARGET = 200.0  # |pre-activation| every scaled layer reaches on the example batch
T = 10



def all_but_the_output_layer(*kinds):
    """The layers of ``kinds`` in a network except the last one (the output layer has no activation after it)."""
    return lambda network: [m for m in network.modules() if isinstance(m, kinds)][:-1]


def ddpm_unet_preactivations(network: DDPMUNet) -> list[nn.Module]:
    """The layers whose outputs feed a SiLU: the residual blocks' and the head's GroupNorms, the time MLP's first
    Linear (not the attention's GroupNorm: it feeds q, k, v)."""
    return ([m for block in [*network.down, *network.middle, *network.up] if isinstance(block, ResidualBlock)
             for m in (block.norm1, block.norm2)] + [network.head[0], network.time_embedding[1]])


NETWORKS = {  # name: (network, sample shape, the layers whose outputs are pre-activations)
    **{f"fc-{a}": (lambda a=a: FcNetwork(2, 32, num_layers=3, activation=a, time_embedding="sinusoidal"), (2,),
                   all_but_the_output_layer(nn.Linear)) for a in ACTIVATIONS},
    "unet": (lambda: ExerciseUNet(channels=(8, 16, 16)), (784,),
             all_but_the_output_layer(nn.Conv2d, nn.ConvTranspose2d)),
    "unet-ddpm": (lambda: DDPMUNet(channels=(16, 32), num_res_blocks=1, dropout=0.0), (784,),
                  ddpm_unet_preactivations),
}


def push_preactivations(network: nn.Module, layers: list[nn.Module], x: torch.Tensor, t: torch.Tensor) -> float:
    """Rescale each of ``layers`` in forward order so that its output (an activation's input) reaches |TARGET|
    on (x, t); returns the smallest of the layers' largest |pre-activation| afterwards."""
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in layers]
    with torch.no_grad():
        network(x, t)
    for h in hooks:
        h.remove()
    assert set(order) == set(layers)
    seen = {}
    for layer in dict.fromkeys(order):  # first use order, each layer once
        hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__(m, float(o.abs().max())))
        with torch.no_grad():
            network(x, t)
            factor = TARGET / seen[layer]
            layer.weight.mul_(factor)
            if layer.bias is not None:
                layer.bias.mul_(factor)
        hook.remove()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, float(o.abs().max()))) for m in order]
    with torch.no_grad():
        out = network(x, t)
    for h in hooks:
        h.remove()
    assert torch.isfinite(out).all()
    return min(seen.values())


@pytest.mark.parametrize("name", NETWORKS)
def test_export_reproduces_pytorch_at_trained_activation_ranges(name, tmp_path):
    factory, shape, preactivation_layers = NETWORKS[name]
    torch.manual_seed(0)
    model = DDPM(factory(), T=T).eval()
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, *shape, generator=generator)
    t = torch.randint(1, T + 1, (4,), generator=generator)
    z = torch.randn(x.shape, generator=generator)
    reached = push_preactivations(model.network, preactivation_layers(model.network), x, ((t - 1).float() / T).reshape(-1, 1))
    assert reached >= 0.99 * TARGET

    coefs = model.step_coefficients()
    step = ReverseStep(Denoiser(model.network, T), coefs).eval()
    with torch.no_grad():
        eager = model.network(x, ((t - 1).float() / T).reshape(-1, 1))
        assert torch.equal(step.denoiser(x, t), eager) or torch.allclose(step.denoiser(x, t), eager, rtol=1e-6,
                                                                         atol=1e-6 * float(eager.abs().max()))
    metadata = {"pyddpm_version": __version__}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # each call raises ExportError if onnxruntime's output is not finite or differs beyond the tolerance
        export_onnx(step.denoiser, (x, t), tmp_path / "denoiser.onnx", ["x_t", "t"], "eps_hat", metadata)
        export_onnx(step, (x, t, z), tmp_path / "step.onnx", ["x_t", "t", "z"], "x_prev", metadata)
        written = export_torchscript(step, coefs, list(shape), {"center": 0.0, "scale": 1.0}, None, tmp_path,
                                     metadata, (x, t, z))
    assert [p.name for p in written] == ["denoiser.pt", "sampler.pt"]


def test_nan_free_export_needs_the_stable_form():
    """The case the stable form exists for: Log(Sigmoid(x)) underflows where torch's LogSigmoid does not."""
    x = torch.tensor([-145.0, -90.0, 0.0, 30.0])
    assert torch.isinf(torch.log(torch.sigmoid(x[:2]))).all()
    from pyddpm.export.modules import StableLogSigmoid
    assert torch.allclose(StableLogSigmoid()(x), nn.LogSigmoid()(x), rtol=1e-6, atol=0)
