"""CUDA-graph sampling: replaying one captured whole step (network + scheduled fused update) gives the same samples
as the eager loop (CUDA tests skip cleanly without a GPU); the step that is captured is checked on CPU too, and on
CPU asking for a graph is a clear error."""
import pytest
import torch

from pyddpm import step_schedule
from pyddpm import DDPM, ops
from pyddpm.nets import DDPMUNet, ExerciseUNet
from pyddpm.samplers import ddim_sample, ddpm_sample, plan_for, run_plan, step_runner
from pyddpm.samplers import generate_samples

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


@pytest.mark.parametrize("sampler, options", [("ddpm", dict(variance="beta")), ("ddpm", dict(variance="beta_tilde", clip=True)),
                                              ("ddim", dict(eta=1.0)), ("dpm++3m", {}), ("sde-dpm++2m", {}),
                                              ("unipc", dict(order=3))])
def test_the_captured_step_run_eagerly_equals_the_eager_loop_on_cpu(sampler, options):
    """What the graph captures (time input from the device-side schedule, network, scheduled update with the history
    buffers, advance) gives the eager loop's bits; on CUDA the same function is captured and replayed."""
    model = tiny_model(T=12)
    plan = plan_for(model, sampler, None if sampler == "ddpm" else 5, **options)
    eager = run_plan(model, (3, 784), plan, seed=9, sample_offset=5, graph=False)
    x = ops.normal_noise((3, 784), seed=9, sample_offset=5)
    history = [torch.zeros_like(x) for _ in range(plan.history)]
    step = step_runner(model, x, plan, seed=9, sample_offset=5, history=history)
    with torch.no_grad():
        for _ in plan.timesteps:
            step()
    assert torch.equal(x, eager)


@cuda
@fused_cuda
@pytest.mark.parametrize("sampler", ["dpm++2m", "sde-dpm++2m", "unipc"])
def test_graph_replay_equals_eager_solvers(sampler):
    model = tiny_model(device="cuda")
    eager = model.sample((8, 784), seed=5, sampler=sampler, steps=10, graph=False)
    graphed = model.sample((8, 784), seed=5, sampler=sampler, steps=10, graph=True)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)


def test_scheduled_step_equals_the_plain_fused_step_and_ignores_rows_out_of_range():
    g = torch.Generator().manual_seed(4)
    x, eps = torch.randn(5, 37, generator=g), torch.randn(5, 37, generator=g)
    coefs = [ops.StepCoefficients(1.01, -0.3, 0.2), ops.StepCoefficients(0.9, 0.1, 0.0)]
    schedule = step_schedule.step_schedule(coefs, [7, 1])
    for s, (coef, t) in enumerate(zip(coefs, [7, 1])):
        expected = ops.reverse_step(x, eps, coef, seed=11 if coef.sigma else None, step=t, sample_offset=2)
        got = step_schedule.reverse_step_scheduled(x.clone(), eps, schedule, seed=11, sample_offset=2)
        assert torch.equal(got, expected), s
        schedule.index.add_(1)
    assert torch.equal(step_schedule.reverse_step_scheduled(x.clone(), eps, schedule, seed=11), x)  # index 2 of 2 rows
    with pytest.raises(ValueError, match="same coef.clip"):
        step_schedule.step_schedule([coefs[0], coefs[1]._replace(clip=True)], [2, 1])
    with pytest.raises(ValueError, match="one Philox step per coefficient row"):
        step_schedule.step_schedule(coefs, [1])


def test_graph_needs_the_fused_backend():
    with pytest.raises(ValueError, match="backend='fused'"):
        ddpm_sample(tiny_model(), (2, 784), seed=1, backend="torch", graph=True)


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
