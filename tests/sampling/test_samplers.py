"""The sampling loop (pyddpm.samplers) over every sampler: the user's network is called as the algorithm says, the
fused and reference backends agree to the bit on trained weights, the noise is batch-invariant, and trajectories and
CLI-level defaults name the sampler."""
import pytest
import torch
from torch import nn

from pyddpm import DDPM
from pyddpm.samplers import generate_samples, plan_for, run_plan, sample_trajectory, trajectory_steps
from pyddpm.solvers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, resolve_sampler

FEW_STEP = [s for s in SAMPLERS if s != "ddpm"]


class CountingNetwork(nn.Module):
    """A noise predictor that records the time input of every call (its own state)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.times: list[float] = []

    def forward(self, x, t):
        self.times.append(float(t[0, 0]))
        return self.linear(torch.cat([x, t.expand(len(x), 1)], 1))


@pytest.mark.parametrize("batch", [100, 20_000])
def test_algorithm_2_calls_the_users_network_t_times_in_order(batch):
    network = CountingNetwork()
    hooks = []
    network.register_forward_hook(lambda module, args, out: hooks.append(1))
    model = DDPM(network, T=50)
    model.sample((batch, 2), seed=0)
    assert network.times == pytest.approx([(t - 1) / 50 for t in range(50, 0, -1)], abs=1e-7)  # float32 input
    assert len(hooks) == 50


@pytest.mark.parametrize("sampler", FEW_STEP)
def test_each_sampler_calls_the_network_once_per_step(sampler):
    network = CountingNetwork()
    model = DDPM(network, T=100)
    model.sample((10, 2), seed=0, sampler=sampler, steps=7)
    plan = plan_for(model, sampler, 7)
    assert network.times == pytest.approx([(t - 1) / 100 for t in plan.timesteps], abs=1e-7) and len(network.times) == 7


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fused_equals_reference_on_trained_weights(chequerboard_model, sampler):
    """Trained weights, realistic activations: the fused loop and the plain-torch loop give the same bits."""
    steps = None if sampler == "ddpm" else 10
    fused = chequerboard_model.sample((500, 2), seed=3, sampler=sampler, steps=steps)
    reference = chequerboard_model.sample((500, 2), seed=3, sampler=sampler, steps=steps, backend="torch")
    assert torch.equal(fused, reference)


@pytest.mark.parametrize("sampler", ["sde-dpm++2m", "unipc", "dpm++3m"])
def test_samples_do_not_depend_on_the_batch_split(chequerboard_model, sampler):
    config = {"name": "chequerboard", "shape": [2], "center": 0.5, "scale": 8.0}
    whole = generate_samples(chequerboard_model, config, 300, seed=4, sampler=sampler, steps=8)
    split = generate_samples(chequerboard_model, config, 300, seed=4, sampler=sampler, steps=8, batch_size=70)
    assert torch.equal(whole, split)


def test_few_steps_land_on_the_chequerboard(chequerboard_model):
    """10 calls of the default sampler put about as many samples inside the squares as Algorithm 2's 200."""
    from pyddpm.data import toy_distribution

    config = {"name": "chequerboard", "shape": [2], "center": 0.5, "scale": 8.0}
    board = toy_distribution("chequerboard")
    inside = {}
    for name, kw in (("ddpm", {}), ("default", dict(sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS))):
        samples = generate_samples(chequerboard_model, config, 4000, seed=0, **kw)
        inside[name] = float((board.square_index(samples.double()) >= 0).float().mean())
    # 4,000 samples: a support fraction near 0.9 has a standard error of 0.005; 0.03 is 6 of them
    assert inside["default"] >= inside["ddpm"] - 0.03, inside


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_trajectory_of_every_sampler_ends_at_its_samples(chequerboard_model, sampler):
    config = {"name": "chequerboard", "shape": [2], "center": 0.5, "scale": 8.0}
    plan = plan_for(chequerboard_model, sampler, None if sampler == "ddpm" else 6)
    keep = trajectory_steps(plan, 4)
    frames = sample_trajectory(chequerboard_model, config, 50, keep, seed=2, plan=plan)
    assert list(frames) == sorted(keep, reverse=True) and keep[0] == plan.timesteps[0] and keep[-1] == 0
    samples = generate_samples(chequerboard_model, config, 50, seed=2, sampler=sampler, steps=plan.nfe
                               if sampler != "ddpm" else None)
    assert torch.equal(frames[0], samples)


def test_history_buffers_start_at_zero_for_every_batch(chequerboard_model):
    """Two loops in a row give the same samples: nothing of one loop's history leaks into the next."""
    plan = plan_for(chequerboard_model, "dpm++3m", 9)
    first = run_plan(chequerboard_model, (64, 2), plan, seed=1)
    second = run_plan(chequerboard_model, (64, 2), plan, seed=1)
    assert torch.equal(first, second)


@pytest.mark.parametrize("given, want", [
    ((None, None), (DEFAULT_SAMPLER, DEFAULT_STEPS)), ((None, 7), (DEFAULT_SAMPLER, 7)), (("ddpm", None), ("ddpm", None)),
    (("ddim", None), ("ddim", DEFAULT_STEPS)), (("dpm++2m", 20), ("dpm++2m", 20)),
    ((None, None, DEFAULT_STEPS), ("ddpm", None)),  # T <= the default's calls: Algorithm 2 is as few
])
def test_defaults(given, want):
    assert resolve_sampler(*given) == want


def test_auto_makes_the_fast_copy_only_for_loops_that_repay_it(chequerboard_model, monkeypatch):
    """runtime="auto": the first call runs on the network as built, and no call is spent on timing; a loop whose
    remaining calls are quick keeps that network (no copy made), a long one (here: any, the threshold set to 0)
    moves to the fast copy from its second call, and the copy then serves later loops at once."""
    from pyddpm.accel import loop_network, runtime

    x, t_in = torch.randn(50, 2), chequerboard_model.time_input(200, 50)
    network = chequerboard_model.network
    calls = []
    handle = network.register_forward_hook(lambda *_: calls.append(1))
    chequerboard_model.__dict__.pop("_fast_network_cache", None)
    try:
        with torch.no_grad():
            short = loop_network(chequerboard_model, 3, fast=True, runtime="auto")
            eps = [short(x, t_in) for _ in range(3)]
            assert len(calls) == 3  # every call on the network as built: the user's hooks see each one
            assert "fp32" not in chequerboard_model.__dict__.get("_fast_network_cache", {})
            monkeypatch.setattr(runtime, "FAST_FROM_SECONDS", 0.0)
            long = loop_network(chequerboard_model, 3, fast=True, runtime="auto")
            assert torch.equal(long(x, t_in), eps[0]) and len(calls) == 4  # the first call: the network as built
            fast = runtime.sampling_network(chequerboard_model)  # the copy the first call made
            assert long.network is fast and fast is not network
            assert torch.allclose(long(x, t_in), eps[0], rtol=1e-5, atol=1e-5)
            monkeypatch.setattr(runtime, "FAST_FROM_SECONDS", 1e9)
            assert loop_network(chequerboard_model, 3, fast=True, runtime="auto") is fast
            assert loop_network(chequerboard_model, 3, fast=True, runtime="torch") is fast
    finally:
        handle.remove()
