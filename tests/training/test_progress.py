"""Honest progress: the bar's run_eta covers the whole run, optimizer steps plus the work the command line still
has to do (per-epoch grids, the final sampling)."""
import re

import torch

from pyddpm.cli.train import OtherWork, forward_seconds
from pyddpm.config import TrainConfig
from pyddpm.train import Trainer

TINY = dict(data="chequerboard", hidden=16, depth=2, T=50, num_train=2000, batch_size=100, epochs=2,
            num_samples=500, checkpoint_every=1000)


def run_eta_seconds(text: str) -> list[int]:
    """Every run_eta=[H:]MM:SS shown by the bar, in seconds."""
    values = []
    for match in re.findall(r"run_eta=([0-9:]+)", text):
        parts = [int(p) for p in match.split(":")]
        values.append(sum(p * 60**i for i, p in enumerate(reversed(parts))))
    return values


def test_run_eta_includes_the_work_after_training(tmp_path, capsys):
    trainer = Trainer(TrainConfig(**TINY), tmp_path / "run", torch.device("cpu"), resume=False)
    assert trainer.run(other_work=lambda trainer: 7200.0, log_every=5)
    etas = run_eta_seconds(capsys.readouterr().err)
    assert etas, "the bar shows no run_eta"
    # two hours of other work are always in it, and the training part shrinks to 0 by the last step
    assert all(eta >= 7200 for eta in etas) and etas[-1] <= 7200 + 1


def test_other_work_prices_the_final_sampling_by_a_timed_forward_pass(tmp_path):
    cfg = TrainConfig(**TINY)
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), resume=False)
    estimate = OtherWork(cfg)(trainer)
    one = forward_seconds(trainer.sampling_model(), cfg.num_samples, [2])
    # T forward passes of the 500-point batch (toy runs draw no grids); timings of one pass vary by 10x on a busy CPU
    assert estimate > 0 and 0.1 * one * cfg.T <= estimate <= 10 * one * cfg.T


def test_pricing_the_other_work_leaves_the_training_random_stream_alone(tmp_path):
    """A resumed run replays the saved random state exactly; the ETA's timed forward pass must not draw from it."""
    cfg = TrainConfig(**TINY)
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), resume=False)
    before = torch.get_rng_state()
    OtherWork(cfg)(trainer)
    assert torch.equal(torch.get_rng_state(), before)
