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
from pyddpm.export.plans import HISTORY, ROW, export_plans
from pyddpm.export.torchscript import export_torchscript
from helpers.activation_range import NETWORKS, TARGET, push_preactivations

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:FutureWarning")
T = 10


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
        h = torch.randn(4, HISTORY, *shape, generator=generator)
        row = torch.randn(len(ROW), generator=generator)
        row[ROW.index("lo")], row[ROW.index("hi")] = -0.5, 0.5
        written = export_torchscript(step, coefs, list(shape), {"center": 0.0, "scale": 1.0}, None, tmp_path,
                                     metadata, (x, t, z, h, row, torch.tensor(True)), export_plans(model, tmp_path))
    assert [p.name for p in written] == ["denoiser.pt", "sampler.pt"]


def test_nan_free_export_needs_the_stable_form():
    """The case the stable form exists for: Log(Sigmoid(x)) underflows where torch's LogSigmoid does not."""
    x = torch.tensor([-145.0, -90.0, 0.0, 30.0])
    assert torch.isinf(torch.log(torch.sigmoid(x[:2]))).all()
    from pyddpm.export.modules import StableLogSigmoid
    assert torch.allclose(StableLogSigmoid()(x), nn.LogSigmoid()(x), rtol=1e-6, atol=0)
