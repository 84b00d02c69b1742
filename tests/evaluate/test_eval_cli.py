"""`pyddpm-eval` on tiny toy and MNIST runs, as a user runs it, with a tiny classifier stand-in (nothing downloads)."""
import argparse
import json
import math

import pytest
import torch

from pyddpm.data import DataTransform, toy_distribution
from pyddpm import DDPM
from pyddpm.evaluate.likelihood import bits_per_dim, dequantize_once
from pyddpm.evaluate.ode_likelihood import ContinuousSchedule, ode_log_likelihood
from pyddpm.store import load_model
from pyddpm.evaluate.classifier import ImageClassifier, checksum_path, save_classifier
from pyddpm.cli.eval import main as eval_main
from pyddpm.cli.eval import image_ode_likelihood, ode_row, samples_to_pixels
from pyddpm.cli.train import main as train_main
from helpers.export_runs import MNIST_DIR
from helpers.gaussian_model import HalfDiverging

needs_shared = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")


def test_samples_to_pixels_inverts_the_dequantisation():
    pixels = torch.arange(256)
    for u in (0.0, 0.5, 0.999):
        torch.testing.assert_close(samples_to_pixels((pixels + u) / 255).long(), pixels)
    assert samples_to_pixels(torch.tensor([-0.1, 1.0, 1.2])).tolist() == [0, 255, 255]


def test_toy_run(tmp_path, capsys):
    run = tmp_path / "toy"
    assert train_main(["--out", str(run), "--max-steps", "20", "--hidden", "16", "--depth", "2", "--batch-size", "100",
                       "--num-train", "1000", "--T", "20", "--num-samples", "100"]) == 0
    assert eval_main([str(run), "--num", "300", "--sampler", "ddim", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "support fraction" in out and "energy distance" in out
    record = json.loads((run / "eval.json").read_text())
    samples = record["samples"]
    assert samples["num_samples"] == 300 and samples["sampler"] == "ddim, 10 NFE, trailing spacing"
    assert samples["nfe"] == 10
    assert 0 <= samples["support_fraction"] <= 1 and samples["energy_distance_floor"] > 0
    assert (run / "eval.png").is_file()


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    run = root / "run"
    assert train_main(["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", "fc", "--hidden", "32", "--depth", "1",
                       "--max-steps", "3", "--batch-size", "16", "--T", "20", "--grid-samples", "0",
                       "--out", str(run)]) == 0
    torch.manual_seed(0)
    classifier = root / "clf.safetensors"
    save_classifier(ImageClassifier((4, 8), 16), classifier, {"data": "mnist", "test_accuracy": 0.5})
    return run, classifier


@needs_shared
def test_mnist_run_writes_bound_and_sample_quality(mnist_run, capsys):
    run, classifier = mnist_run
    out = run / "custom.json"
    assert eval_main([str(run), "--num", "40", "--test-images", "30", "--t-samples", "5", "--classifier",
                      str(classifier), "--out", str(out), "--variance", "beta_tilde"]) == 0
    table = capsys.readouterr().out
    assert "bits/dim (30 test images, 5 sampled t per image)" in table and "Frechet distance" in table
    record = json.loads(out.read_text())
    bound, samples = record["bound"], record["samples"]
    assert bound["test_images"] == 30 and bound["variance"] == "beta_tilde" and bound["per_t"] is None
    assert bound["bits_per_dim"] > 0 and bound["standard_error"] > 0
    assert bound["bits_per_dim"] == pytest.approx(bound["prior_L_T"] + bound["diffusion_sum_L_t"]
                                                  + bound["decoder_L_0"], rel=1e-9)
    assert samples["num_samples"] == 40 and samples["floor"]["num_images"] == 40
    assert sum(samples["label_histogram"]) == pytest.approx(1.0) and samples["frechet_distance"] >= 0
    assert samples["classifier"]["sha256"] == checksum_path(classifier).read_text().split()[0]
    assert out.with_suffix(".png").is_file()


@needs_shared
def test_mnist_run_with_a_tampered_classifier_is_a_clear_error(mnist_run, tmp_path, capsys):
    run, classifier = mnist_run
    bad = tmp_path / "bad.safetensors"
    data = bytearray(classifier.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    checksum_path(bad).write_text(checksum_path(classifier).read_text())
    assert eval_main([str(run), "--num", "10", "--classifier", str(bad), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "Traceback" not in err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--t-samples", "0"], "--t-samples must be a positive integer"),
    (["--t-samples", "50"], "T - 1 = 19"),
    (["--no-bound", "--no-samples"], "nothing to evaluate"),
])
@needs_shared
def test_bad_arguments_are_clear_errors(mnist_run, args, message, capsys):
    run, classifier = mnist_run
    assert eval_main([str(run), "--test-images", "4", "--classifier", str(classifier), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert eval_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_ddpm_and_a_flow_are_scored_on_the_same_points_in_the_same_units(tmp_path, capsys):
    """`--likelihood both` on a toy DDPM run and the flow's exact NLL: the same true points (seed + 2), both in nats
    of data space (each run's own data scale undone), the ODE figure recomputed here from the library."""
    ddpm, flow = tmp_path / "ddpm", tmp_path / "flow"
    tiny = ["--max-steps", "20", "--batch-size", "100", "--num-train", "1000", "--num-samples", "100"]
    assert train_main(["--out", str(ddpm), "--hidden", "16", "--depth", "2", "--T", "20", *tiny]) == 0
    assert train_main(["--out", str(flow), "--model", "flow", "--model-kwargs", '{"hidden": 16, "num_couplings": 2}',
                       *tiny]) == 0
    flags = ["--num", "50", "--test-points", "300", "--seed", "3"]
    assert eval_main([str(ddpm), *flags, "--steps", "5", "--likelihood", "both", "--rtol", "1e-4"]) == 0
    table = capsys.readouterr().out
    assert "probability-flow ODE, dopri5 rtol 0.0001 atol 1e-05, exact divergence" in table
    assert "paired point by point" in table
    assert eval_main([str(flow), *flags]) == 0
    ode = json.loads((ddpm / "eval.json").read_text())["ode"]
    bound = json.loads((ddpm / "eval.json").read_text())["likelihood"]
    exact = json.loads((flow / "eval.json").read_text())["likelihood"]
    assert ode["test_points"] == bound["test_points"] == exact["test_points"] == 300
    assert ode["true_nats"] == bound["true_nats"] == exact["true_nats"]  # the same points
    assert ode["rtol"] == 1e-4 and ode["atol"] == 1e-5 and ode["probes"] is None and ode["mean_network_calls"] > 10
    assert ode["paired_gap_nats"] == pytest.approx(ode["ode_nll_nats"] - ode["true_nats"], abs=1e-9)

    model, config = load_model(ddpm)
    points = toy_distribution("chequerboard").sample(300, generator=torch.Generator().manual_seed(5))
    transform = DataTransform(config["data"]["center"], config["data"]["scale"])
    assert transform.scale == 64 and exact["nats"] < 10  # the two runs' model spaces differ (the flow's: scale 2)
    result = ode_log_likelihood(model, transform.to_model(points.double()), rtol=1e-4, atol=1e-5, seed=3)
    assert float(-result.log_density.mean()) - 2 * math.log(64) == pytest.approx(ode["ode_nll_nats"], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--likelihood", "ode", "--rtol", "0"], "--rtol must be a positive number"),
    (["--likelihood", "ode", "--atol=-1e-5"], "--atol must be a positive number"),
    (["--likelihood", "ode", "--probes", "0"], "--probes must be a positive integer"),
    (["--likelihood", "ode", "--test-images", "0"], "--test-images must be a positive integer"),
    (["--rtol", "1e-5"], "--rtol applies to --likelihood ode or both"),
])
def test_bad_ode_settings_are_one_line_errors_before_any_work(args, message, tmp_path, capsys):
    assert eval_main([str(tmp_path / "no-run-needed"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@needs_shared
def test_mnist_run_writes_the_ode_bits_per_dim(mnist_run, capsys):
    run, _ = mnist_run
    out = run / "ode.json"
    assert eval_main([str(run), "--no-samples", "--test-images", "4", "--likelihood", "both", "--t-samples", "2",
                      "--probes", "2", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out)]) == 0
    assert "bits/dim, probability-flow ODE" in capsys.readouterr().out
    record = json.loads(out.read_text())
    ode = record["ode"]
    assert ode["test_images"] == 4 and ode["probes"] == 2 and ode["divergence"].startswith("Hutchinson")
    assert 0 < ode["probe_se"] and 0 < ode["ode_bits_per_dim_se"] and math.isfinite(ode["ode_bits_per_dim"])
    assert ode["rtol"] == 1e-3 and ode["mean_network_calls"] > 0 and "bound" in record
    # a few images far out can carry the mean (an undertrained U-Net's ODE maps some to the prior's far tail): the
    # median and the largest value are written beside it
    assert ode["ode_bits_per_dim_median"] <= ode["ode_bits_per_dim_max"]
    assert ode["ode_bits_per_dim_max"] >= ode["ode_bits_per_dim"] - 1e-9
    assert 0 <= ode["images_escaped"] <= 4


def test_escaped_images_are_counted_and_left_out_of_the_mean_but_not_the_median():
    """Images whose first pixel is bright run away under ``HalfDiverging`` (3 pixels an image); the others keep
    log N(x; 0, I). The mean and its s.e. are over the others; the median counts the escaped ones as +inf."""
    model = DDPM(torch.nn.Identity(), T=1000)
    model.network = HalfDiverging(ContinuousSchedule(model), 0)
    model.eval()
    pixels = torch.randint(0, 256, (20, 3), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    pixels[:, 0] = torch.tensor([200] * 6 + [40] * 14, dtype=torch.uint8)
    args = argparse.Namespace(seed=0, rtol=1e-5, atol=1e-5, probes=None, batch_size=8)
    record = image_ode_likelihood(model, pixels, args)
    x = dequantize_once(pixels, 0)
    exact = bits_per_dim(torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(1), 3)
    stay = exact[6:]
    assert record["images_escaped"] == 6 and record["test_images"] == 20
    assert record["ode_bits_per_dim"] == pytest.approx(float(stay.mean()), abs=1e-4)
    assert record["ode_bits_per_dim_se"] == pytest.approx(float(stay.std() / math.sqrt(14)), rel=1e-3)
    assert record["ode_bits_per_dim_max"] == pytest.approx(float(stay.max()), abs=1e-4)
    with_inf = torch.cat([torch.full((6,), math.inf, dtype=torch.float64), stay])
    assert record["ode_bits_per_dim_median"] == pytest.approx(float(with_inf.median()), abs=1e-4)
    rows = ode_row(record)
    assert "(14 of 20 test images; mean over those that did not escape)" in rows
    assert "| images escaped: ODE trajectory stopped beyond |x(s)| = 10 max(|x(s0)|, sqrt(D)), no value | 6 |" in rows
