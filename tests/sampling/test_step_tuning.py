"""A run's own time steps (pyddpm.step_tuning): chosen by measurement, stored in the run directory for its weights,
and used by pyddpm-sample by itself."""
import json

import numpy as np
import pytest
from pyddpm.cli.sample import main as sample_main
from pyddpm.evaluate.report import TUNED_STEPS, tune_run_steps
from pyddpm.evaluate.toy import energy_distance
from pyddpm.samplers import generate_samples, plan_for, run_plan
from pyddpm.solvers import DEFAULT_SAMPLER
from pyddpm.step_tuning import START_SPACINGS, tune_timesteps
from pyddpm.store import STEPS_FILE, load_model, save_checkpoint, tuned_timesteps, write_tuned_timesteps

CONFIG = {"data": {"name": "chequerboard", "shape": [2], "center": 0.5, "scale": 8.0},
          "network": {"name": "fc", "kwargs": {"input_dim": 2, "num_hidden": 128, "num_layers": 3,
                                               "activation": "silu", "time_embedding": "sinusoidal"}},
          "diffusion": {"T": 200, "schedule": "linear", "beta_1": 1e-4, "beta_T": 2e-2, "variance": "beta"}}


@pytest.fixture(scope="module")
def run(chequerboard_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tuned") / "run"
    save_checkpoint(path, CONFIG, {f"model.{k}": v for k, v in chequerboard_model.state_dict().items()}, {})
    return path


def test_tuning_moves_the_steps_closer_to_the_ode(chequerboard_model):
    ts, record = tune_timesteps(chequerboard_model, "unipc", 5, [2], num=300, sweeps=1)
    assert ts[0] == 200 and all(a > b >= 1 for a, b in zip(ts, ts[1:])) and len(ts) == 5
    assert record["tuned"] <= min(record["start"].values())
    assert record["network_calls"] > 200  # the reference ODE solve and every trial


def test_a_stochastic_sampler_is_tuned_towards_algorithm_2(chequerboard_model):
    """SDE-DPM-Solver++'s samples have no ODE solution of their own: their reference is Algorithm 2's samples from
    other Philox noise, and the stored distance is the energy distance to them, recomputed here."""
    ts, record = tune_timesteps(chequerboard_model, "sde-dpm++2m", 5, [2], num=300, sweeps=1)
    assert "Algorithm 2" in record["objective"] and set(record["start"]) == set(START_SPACINGS)
    assert len(ts) == 5 and all(a > b >= 1 for a, b in zip(ts, ts[1:]))
    reference = run_plan(chequerboard_model, (300, 2), plan_for(chequerboard_model, "ddpm"), seed=1)
    x = run_plan(chequerboard_model, (300, 2), plan_for(chequerboard_model, "sde-dpm++2m", timesteps=ts), seed=0)
    assert energy_distance(x, reference) == pytest.approx(record["tuned"], rel=1e-9)
    assert record["tuned"] <= min(record["start"].values()) and record["network_calls"] > 200


def test_the_path_objective_needs_a_deterministic_sampler(chequerboard_model):
    with pytest.raises(ValueError, match="use 'distribution'"):
        tune_timesteps(chequerboard_model, "sde-dpm++2m", 5, [2], num=50, objective="path")


def test_stored_steps_belong_to_the_weights_they_were_tuned_for(run, chequerboard_model):
    write_tuned_timesteps(run, "unipc", [200, 120, 60, 20, 3], {"tuned": 0.1})
    assert tuned_timesteps(run) == {("unipc", 5): [200, 120, 60, 20, 3]}
    other = run.parent / "other"
    weights = {f"model.{k}": v + 1 for k, v in chequerboard_model.state_dict().items()}
    save_checkpoint(other, CONFIG, weights, {})
    (other / STEPS_FILE).write_text((run / STEPS_FILE).read_text())  # copied beside other weights: ignored
    assert tuned_timesteps(other) == {}


def test_pyddpm_sample_uses_the_stored_steps(run, tmp_path, capsys):
    write_tuned_timesteps(run, DEFAULT_SAMPLER, [200, 150, 90, 40, 8], {"tuned": 0.1})  # --steps alone
    out = tmp_path / "s.npy"
    assert sample_main([str(run), "--num", "50", "--steps", "5", "--out", str(out), "--device", "cpu",
                        "--eager"]) == 0
    loaded, config = load_model(run)  # the same samples as the explicit time steps (the network as trained)
    want = generate_samples(loaded, config["data"], 50, seed=0, sampler=DEFAULT_SAMPLER,
                            timesteps=[200, 150, 90, 40, 8])
    np.testing.assert_array_equal(np.load(out), want.numpy())
    assert plan_for(loaded, DEFAULT_SAMPLER, timesteps=[200, 150, 90, 40, 8]).spacing == "model"
    # --spacing asks for a fixed spacing instead
    assert sample_main([str(run), "--num", "50", "--steps", "5", "--spacing", "trailing", "--out", str(out),
                        "--device", "cpu", "--eager"]) == 0
    assert not np.array_equal(np.load(out), want.numpy())


def test_a_damaged_steps_file_is_one_clear_error(run, tmp_path, capsys):
    (run / STEPS_FILE).write_text(json.dumps({"unipc/3": {"sampler": "unipc", "timesteps": [5, 9, 1]}}))
    assert sample_main([str(run), "--num", "5", "--out", str(tmp_path / "s.npy"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyddpm-sample: error:") and "steps.json" in err and len(err.splitlines()) == 1
    (run / STEPS_FILE).unlink()


def test_a_tuned_run_stores_the_default_samplers_steps_at_each_tuned_nfe(run, chequerboard_model):
    """What pyddpm-train --tune-steps does after training: one steps.json entry per TUNED_STEPS, for these weights."""
    records = tune_run_steps(run, chequerboard_model, CONFIG)
    stored = tuned_timesteps(run)
    assert [r["sampler"] for r in records] == [DEFAULT_SAMPLER] * len(TUNED_STEPS)
    for steps, record in zip(TUNED_STEPS, records):
        assert stored[DEFAULT_SAMPLER, steps] == record["timesteps"] and "Algorithm 2" in record["objective"]
    (run / STEPS_FILE).unlink()
