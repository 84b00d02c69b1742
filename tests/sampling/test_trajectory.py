"""The samplers' callback, the denoising trajectory, the forward-process figure and the end of pyddpm-train."""
from __future__ import annotations

import pytest
import torch

from pyddpm import DDPM, FcNetwork
from pyddpm.cli.sample import main as sample_main
from pyddpm.cli.train import main as train_main
from pyddpm.data import DataTransform, TwoGaussians
from pyddpm.evaluate.plots import plot_forward_process
from pyddpm.samplers import ddpm_sample, generate_samples, plan_for, sample_trajectory, trajectory_steps
from pyddpm.store import save_checkpoint

DATA = {"name": "two-gaussians", "shape": [2], "center": 0.5, "scale": 2.0}
CONFIG = {"data": DATA, "network": {"name": "fc", "kwargs": {"input_dim": 2, "num_hidden": 16}},
          "diffusion": {"T": 12, "schedule": "linear", "beta_1": 1e-4, "beta_T": 0.2, "variance": "beta"}}


def tiny_model() -> DDPM:
    torch.manual_seed(0)
    return DDPM(FcNetwork(2, 16), beta_1=1e-4, beta_T=0.2, T=12).eval()


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_callback_sees_every_step_and_ends_at_the_output(backend):
    model, seen = tiny_model(), []
    out = ddpm_sample(model, (7, 2), seed=3, backend=backend, callback=lambda t, x: seen.append((t, x.clone())))
    assert [t for t, _ in seen] == list(range(12, -1, -1))
    torch.testing.assert_close(seen[-1][1], out, rtol=0, atol=0)
    without = ddpm_sample(model, (7, 2), seed=3, backend=backend)  # the callback changes nothing
    torch.testing.assert_close(without, out, rtol=0, atol=0)
    assert not torch.equal(seen[0][1], seen[1][1])


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 5), ("unipc", 5)])
def test_trajectory_last_frame_equals_the_samplers_output(sampler, steps):
    model = tiny_model()
    plan = plan_for(model, sampler, steps)
    keep = trajectory_steps(plan, 4)
    assert keep[0] == 12 and keep[-1] == 0 and len(keep) == 4
    frames = sample_trajectory(model, DATA, 9, keep, seed=5, plan=plan)
    assert list(frames) == keep
    expected = generate_samples(model, DATA, 9, seed=5, sampler=sampler, steps=steps)
    torch.testing.assert_close(frames[0], expected, rtol=0, atol=0)


def test_forward_figure_follows_q_sample(tmp_path):
    model = tiny_model()
    x0 = TwoGaussians().sample((50,), generator=torch.Generator().manual_seed(1))
    frames = plot_forward_process(model, x0, CONFIG, tmp_path / "forward.png", steps=[0, 3, 12], seed=7)
    assert (tmp_path / "forward.png").stat().st_size > 10_000
    transform = DataTransform(0.5, 2.0)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))  # the documented noise: one draw for all t
    for t in (3, 12):
        x_t = model.q_sample(transform.to_model(x0), torch.full((50,), t), eps)
        torch.testing.assert_close(frames[t], transform.from_model(x_t))
    torch.testing.assert_close(frames[0], x0)


def test_toy_data_sample_shape_like_torch_distributions():
    a = TwoGaussians().sample((30,), generator=torch.Generator().manual_seed(2))
    b = TwoGaussians().sample(30, generator=torch.Generator().manual_seed(2))
    assert a.shape == (30, 2) and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"sample_shape must be \(n,\)"):
        TwoGaussians().sample((3, 4))


def test_pyddpm_sample_draws_the_trajectory(tmp_path, capsys):
    model = tiny_model()
    save_checkpoint(tmp_path / "run", CONFIG, {f"model.{k}": v for k, v in model.state_dict().items()}, {})
    for name in ("t.png", "t.gif"):
        assert sample_main([str(tmp_path / "run"), "--num", "40", "--out", str(tmp_path / "s.png"), "--device", "cpu",
                            "--trajectory", str(tmp_path / name), "--frames", "4"]) == 0
        assert (tmp_path / name).stat().st_size > 5_000
    assert sample_main([str(tmp_path / "run"), "--trajectory", str(tmp_path / "t.jpg")]) == 2
    assert "--trajectory must end in .png or .gif" in capsys.readouterr().err


def test_train_ends_with_a_table_and_the_forward_figure(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--data", "tg", "--hidden", "8", "--depth", "1", "--T", "10", "--num-train", "200",
                       "--batch-size", "50", "--epochs", "1", "--num-samples", "50", "--device", "cpu",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "200 training points drawn from the true two-gaussians distribution" in text
    assert "mixture_weights" in text and "0.200 / 0.800" in text and "floor" in text
    assert (out / "forward.png").is_file() and (out / "metrics.json").is_file()
