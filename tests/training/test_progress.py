"""Honest progress: the bar's run_eta covers the whole run, optimizer steps plus the work the command line still
has to do (per-epoch grids, the final sampling)."""
import re

import pytest
import torch

import pyddpm.cli.train as train_cli
from pyddpm.cli.train import OtherWork
from pyddpm.config import TrainConfig
from pyddpm.evaluate.report import TUNED_STEPS, TUNING_SWEEPS
from pyddpm.solvers import DEFAULT_SAMPLER, DEFAULT_STEPS
from pyddpm.step_tuning import most_calls
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


def test_other_work_prices_the_final_sampling_by_a_timed_forward_pass(tmp_path, monkeypatch):
    """The default sampler's calls (toy runs draw no grids) and, with --tune-steps, the tuning's most calls, priced by
    one forward pass at the sampling batch, timed once. A stand-in timing makes the price exact: a real pass varies
    by 10x and more on a busy CPU."""
    timed = []

    def one_pass(model, batch, shape):
        timed.append((batch, list(shape)))
        return 0.01

    monkeypatch.setattr(train_cli, "forward_seconds", one_pass)
    cfg = TrainConfig(**TINY)
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), resume=False)
    work = OtherWork(cfg)
    assert work(trainer) == pytest.approx(0.01 * DEFAULT_STEPS) == work(trainer)
    assert timed == [(cfg.num_samples, [2])]  # measured once
    cfg = TrainConfig(**{**TINY, "T": 200, "tune_steps": True})
    trainer = Trainer(cfg, tmp_path / "tuned", torch.device("cpu"), resume=False)
    model = trainer.sampling_model()
    tuning = sum(most_calls(model, DEFAULT_SAMPLER, s, TUNING_SWEEPS) for s in TUNED_STEPS) * 1000 / cfg.num_samples
    assert OtherWork(cfg)(trainer) == pytest.approx(0.01 * (DEFAULT_STEPS + tuning))


def test_pricing_the_other_work_leaves_the_training_random_stream_alone(tmp_path):
    """A resumed run replays the saved random state exactly; the ETA's timed forward pass must not draw from it."""
    cfg = TrainConfig(**TINY)
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), resume=False)
    before = torch.get_rng_state()
    OtherWork(cfg)(trainer)
    assert torch.equal(torch.get_rng_state(), before)
