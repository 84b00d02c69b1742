"""CUDA-graph sampling: replaying the captured network gives the same samples as eager evaluation (CUDA tests skip
cleanly without a GPU); on CPU asking for a graph is a clear error."""
import pytest
import torch

from pyddpm import DDPM, ops
from pyddpm.nets import DDPMUNet, ExerciseUNet
from pyddpm.samplers import ddim_sample, ddpm_sample
from pyddpm.sample import generate_samples

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
fused_cuda = pytest.mark.skipif(not ops.cuda_built(), reason="pyddpm._C was built without CUDA")


def tiny_model(network: str = "unet", T: int = 30, device: str = "cpu") -> DDPM:
    torch.manual_seed(0)
    net = ExerciseUNet(channels=(8, 16, 16)) if network == "unet" else DDPMUNet(channels=(8, 16), num_res_blocks=1)
    return DDPM(net, T=T).to(device).eval()


def test_graph_on_cpu_is_a_clear_error_and_auto_stays_eager():
    model = tiny_model()
    with pytest.raises(ValueError, match="CUDA-graph sampling needs a CUDA device"):
        ddpm_sample(model, (2, 784), seed=0, graph=True)
    auto = ddim_sample(model, (2, 784), 5, seed=0)
    assert torch.equal(auto, ddim_sample(model, (2, 784), 5, seed=0, graph=False))


@cuda
@fused_cuda
@pytest.mark.parametrize("network", ["unet", "unet-ddpm"])
@pytest.mark.parametrize("variance, clip", [("beta", False), ("beta_tilde", True)])
def test_graph_replay_equals_eager_ddpm(network, variance, clip):
    model = tiny_model(network, device="cuda")
    eager = ddpm_sample(model, (16, 784), seed=3, variance=variance, clip=clip, graph=False)
    graphed = ddpm_sample(model, (16, 784), seed=3, variance=variance, clip=clip, graph=True)
    torch.cuda.synchronize()
    assert torch.isfinite(eager).all()
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)


@cuda
@fused_cuda
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_graph_replay_equals_eager_ddim(eta):
    model = tiny_model(device="cuda")
    eager = ddim_sample(model, (8, 784), 10, eta=eta, seed=5, sample_offset=8, graph=False)
    graphed = ddim_sample(model, (8, 784), 10, eta=eta, seed=5, sample_offset=8, graph=True)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)


@cuda
def test_graph_with_the_reference_step_equals_eager():
    model = tiny_model(device="cuda")
    eager = ddpm_sample(model, (4, 784), seed=1, backend="torch", graph=False)
    graphed = ddpm_sample(model, (4, 784), seed=1, backend="torch", graph=True)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)


@cuda
@fused_cuda
def test_generate_samples_uses_graphs_by_default_and_matches_eager():
    model = tiny_model(device="cuda")
    data = {"name": "mnist", "shape": [784], "center": 0.5, "scale": 2.0, "image_shape": [1, 28, 28],
            "value_range": [0.0, 1.0]}
    auto = generate_samples(model, data, 10, seed=2, batch_size=4)  # batches of 4, 4, 2: one capture each
    eager = generate_samples(model, data, 10, seed=2, batch_size=4, graph=False)
    torch.testing.assert_close(auto, eager, rtol=0, atol=1e-5)
    assert auto.min() >= 0 and auto.max() <= 1
