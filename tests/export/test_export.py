"""pyddpm-export: the ONNX and TorchScript files against PyTorch, their metadata, the TorchScript Philox noise,
the few-step solver step against a float64 reference of the contract, the exporter fallback and the CLI's errors."""
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers.export_runs import (EXPORT_NETS, FEW_STEP, plan_flags, exported, pyddpm_samples, trained_run,
                         unet_available)

from pyddpm import philox
from pyddpm.store import load_model
from pyddpm.cli.export import main
from pyddpm.export import EXPORT_FORMAT, NOISE_SPEC, ExportError
from pyddpm.export.metadata import METADATA_FILE
from pyddpm.export.noise import PhiloxNormal
from pyddpm.export.torchscript import trace_network
from pyddpm.ops import reverse_step_reference

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:FutureWarning")
FILES = ("denoiser.onnx", "step.onnx", "solver_step.onnx", "denoiser.pt", "sampler.pt")


def onnx_metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_files_metadata_and_checker(net, tmp_path_factory):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    model, config = load_model(run)
    coefs = model.step_coefficients()
    data = config["data"]
    for name in FILES:
        assert (out / name).is_file(), name
    for name, kind in (("denoiser.onnx", "denoiser"), ("step.onnx", "step"), ("solver_step.onnx", "solver_step")):
        proto = onnx.load(str(out / name))
        onnx.checker.check_model(proto, full_check=True)
        meta = onnx_metadata(out / name)
        assert meta["model"] == kind and meta["pyddpm_export"] == EXPORT_FORMAT and meta["noise_spec"] == NOISE_SPEC
        assert int(meta["T"]) == config["diffusion"]["T"] == model.T
        assert meta["schedule"] == "linear" and meta["variance"] == "beta"
        assert json.loads(meta["sample_shape"]) == data["shape"]
        assert json.loads(meta["data_transform"]) == {"center": data["center"], "scale": data["scale"]}
        assert "1-based" in meta["t"] and "dynamo" in meta["exporter"]
        table = json.loads(meta["step_coefficients"])
        for key in ("a", "b", "sigma"):
            expected = np.array([getattr(c, key) for c in coefs], dtype=np.float32)
            assert np.array_equal(np.array(table[key], dtype=np.float32), expected)
        assert table["sigma"][0] == 0.0  # no noise at t = 1
        if net == "toy":
            assert json.loads(meta["value_range"]) is None and meta["pixel_mapping"].startswith("none")
        else:
            assert json.loads(meta["value_range"]) == [0.0, 1.0]
            assert json.loads(meta["image_shape"]) == [1, 28, 28] and "round(255" in meta["pixel_mapping"]
        inputs = session(out / name).get_inputs()
        assert [i.name for i in inputs] == {"step": ["x_t", "t", "z"], "denoiser": ["x_t", "t"],
                                            "solver_step": ["x", "t", "z", "h", "row", "clip"]}[kind]
        assert ("solvers" in meta) == (kind == "solver_step")  # denoiser.onnx and step.onnx stay as they were
        assert inputs[0].shape[1:] == data["shape"] and isinstance(inputs[0].shape[0], str)  # dynamic batch
    for name in ("denoiser.pt", "sampler.pt"):
        extra = {METADATA_FILE: ""}
        module = torch.jit.load(str(out / name), _extra_files=extra)
        meta = json.loads(extra[METADATA_FILE])
        assert meta["model"] == name[:-3] and meta["T"] == str(model.T)
        assert module.T == model.T and list(module.sample_shape) == data["shape"]
        assert torch.equal(module.step.sigma, torch.tensor([c.sigma for c in coefs], dtype=torch.float32))


def reference_step(model, x, t: int, z):
    """x_{t-1} by pyddpm: the network at t, then the plain-torch reverse step with the given noise."""
    with torch.no_grad():
        eps = model.network(x, model.time_input(t, x.shape[0]))
        return reverse_step_reference(x, eps, model.step_coefficients()[t - 1], noise=z)


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_step_onnx_matches_the_pytorch_step(net, tmp_path_factory):
    out = exported(tmp_path_factory, net)
    model, config = load_model(trained_run(tmp_path_factory, net))
    step, denoiser = session(out / "step.onnx"), session(out / "denoiser.onnx")
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 5, 17):
        for t in sorted({1, 2, model.T // 2, model.T}):
            x = torch.randn(batch, *config["data"]["shape"], generator=generator)
            z = torch.randn(x.shape, generator=generator)
            steps = np.full(batch, t, dtype=np.int64)
            got = step.run(None, {"x_t": x.numpy(), "t": steps, "z": z.numpy()})[0]
            assert np.abs(got - reference_step(model, x, t, z).numpy()).max() <= 1e-5, (batch, t)
            eps = denoiser.run(None, {"x_t": x.numpy(), "t": steps})[0]
            with torch.no_grad():
                expected = model.network(x, model.time_input(t, batch)).numpy()
            assert np.abs(eps - expected).max() <= 1e-5, (batch, t)


def contract_step(x, eps, z, h, row, clip):
    """One call of a few-step plan in float64 (docs/export.md): (x_next, [d, H_0, H_1])."""
    x, eps, z, h, row = (np.asarray(v, dtype=np.float64) for v in (x, eps, z, h, row))
    a, b, sigma, c, p, q, lo, hi = row[:8]
    d = p * x + q * eps
    if clip:
        d = np.clip(d, lo, hi)
    v = a * x + b * eps + c * d + sum(row[8 + k] * h[:, k] for k in range(3)) + sigma * z
    return v, np.concatenate([d[:, None], h[:, :2]], 1)


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_solver_step_onnx_is_the_contract_s_step(net, tmp_path_factory):
    """solver_step.onnx and sampler.pt's solver_step against the contract in float64 on fresh random rows that use
    every term (three history buffers, c, the clamp, sigma), with eps_hat from pyddpm's network. The two sides
    differ by float32 rounding: the network's (~1e-6 relative, onnxruntime against PyTorch) and the update's eight
    roundings (< 1e-6 relative to the sum of the terms' magnitudes), so 1e-5 of that magnitude bounds it."""
    out = exported(tmp_path_factory, net)
    model, config = load_model(trained_run(tmp_path_factory, net))
    graph, scripted = session(out / "solver_step.onnx"), torch.jit.load(str(out / "sampler.pt"))
    generator = torch.Generator().manual_seed(2)
    for batch, clip in ((1, True), (6, False), (9, True)):
        shape = (batch, *config["data"]["shape"])
        x, z = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        h = torch.randn(batch, 3, *shape[1:], generator=generator)
        row = torch.randn(11, generator=generator, dtype=torch.float64).float()
        row[6], row[7] = -0.3, 0.4
        t = int(torch.randint(1, model.T + 1, (1,), generator=generator))
        steps = torch.full((batch,), t)
        with torch.no_grad():
            eps = model.network(x, model.time_input(t, batch))
        want_x, want_h = contract_step(x, eps, z, h, row, clip)
        terms = (row[0] * x, row[1] * eps, row[3] * row[4] * x, row[3] * row[5] * eps,
                 *(row[8 + k] * h[:, k] for k in range(3)), row[2] * z)
        magnitude = 1 + sum(term.abs() for term in terms).numpy()
        feeds = {"x": x.numpy(), "t": steps.numpy(), "z": z.numpy(), "h": h.numpy(), "row": row.numpy(),
                 "clip": np.array(clip)}
        with torch.no_grad():
            from_script = [v.numpy() for v in scripted.solver_step(x, steps, z, h, row, torch.tensor(clip))]
        for got_x, got_h in (graph.run(None, feeds), from_script):
            assert got_x.dtype == np.float32 and got_h.shape == h.shape
            assert (np.abs(got_x - want_x) <= 1e-5 * magnitude).all(), (batch, clip)
            assert np.array_equal(got_h[:, 1:], h[:, :2].numpy())  # the history shifts
            assert np.abs(got_h[:, 0] - want_h[:, 0]).max() <= 1e-5 * (1 + np.abs(want_h[:, 0]).max())


@pytest.mark.parametrize("sampler", FEW_STEP)
def test_torchscript_sampler_runs_the_plans_as_pyddpm_sample(sampler, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, "toy"), trained_run(tmp_path_factory, "toy")
    sampler_pt = torch.jit.load(str(out / "sampler.pt"))
    assert f"{sampler}:10" in sampler_pt.plan_names
    expected = pyddpm_samples(run, tmp_path, 24, 3, *plan_flags(sampler, 10))
    with torch.no_grad():
        x0 = sampler_pt.sample_plan(24, 3, 0, f"{sampler}:10")
        assert np.abs(sampler_pt.to_data(x0).numpy() - expected).max() <= 1e-4
        assert (sampler_pt.sample_plan(4, 3, 20, f"{sampler}:10") - x0[20:]).abs().max() <= 1e-6  # (seed, i) only
        with pytest.raises(Exception, match="carries no plan euler:10"):
            sampler_pt.sample_plan(2, 3, 0, "euler:10")


def test_step_onnx_takes_a_different_t_per_sample(tmp_path_factory):
    out = exported(tmp_path_factory, "toy")
    model, _ = load_model(trained_run(tmp_path_factory, "toy"))
    x, z = torch.randn(4, 2), torch.randn(4, 2)
    t = np.array([model.T, 7, 2, 1], dtype=np.int64)
    got = session(out / "step.onnx").run(None, {"x_t": x.numpy(), "t": t, "z": z.numpy()})[0]
    for k in range(4):
        expected = reference_step(model, x[k:k + 1], int(t[k]), z[k:k + 1]).numpy()
        assert np.abs(got[k:k + 1] - expected).max() <= 1e-5


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_torchscript_sampler_matches_pyddpm_sample(net, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    num, seed = (40, 5) if net == "toy" else (3, 11)
    expected = pyddpm_samples(run, tmp_path, num, seed)
    sampler = torch.jit.load(str(out / "sampler.pt"))
    with torch.no_grad():
        x0 = sampler.sample(num, seed, 0)
        assert np.abs(sampler.to_data(x0).numpy() - expected).max() <= 1e-3
        # the same samples from explicit noise: x_T (step 0) and z of step t at noise[t - 1]
        shape = [num] + list(sampler.sample_shape)
        noise = torch.stack([philox.philox_normal(shape, seed, t) for t in range(1, sampler.T + 1)])
        assert (sampler(philox.philox_normal(shape, seed, 0), noise) - x0).abs().max() <= 1e-6
        # sample i depends only on (seed, i)
        assert (sampler.sample(2, seed, num - 2) - x0[num - 2:]).abs().max() <= 1e-6
        denoiser = torch.jit.load(str(out / "denoiser.pt"))
        x, t = torch.randn(shape), torch.full((num,), 2)
        assert torch.allclose(denoiser(x, t), sampler.denoise(x, t), atol=1e-6)


def test_variance_option_is_baked_into_the_step(tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, "toy", variance="beta_tilde"), trained_run(tmp_path_factory, "toy")
    meta = onnx_metadata(out / "step.onnx")
    assert meta["variance"] == "beta_tilde"
    model, _ = load_model(run)
    sigma = np.array([c.sigma for c in model.step_coefficients("beta_tilde")], dtype=np.float32)
    assert np.array_equal(np.array(json.loads(meta["step_coefficients"])["sigma"], dtype=np.float32), sigma)
    expected = pyddpm_samples(run, tmp_path, 20, 9, "--variance", "beta_tilde")
    sampler = torch.jit.load(str(out / "sampler.pt"))
    with torch.no_grad():
        assert np.abs(sampler.to_data(sampler.sample(20, 9, 0)).numpy() - expected).max() <= 1e-3


def test_torchscript_noise_is_bit_identical_to_pyddpm_philox():
    noise = torch.jit.script(PhiloxNormal())
    cpu = torch.device("cpu")
    for shape, seed, step, offset in [((3, 7), 42, 0, 0), ((5, 2), 2**63 - 1, 2**32 - 1, 2**32 - 3),
                                      ((2, 1, 28, 28), 123, 17, 5), ((1, 1), 0, 1, 0)]:
        got = noise(list(shape), seed, step, offset, cpu)
        assert torch.equal(got.view(torch.int32), philox.philox_normal(shape, seed, step, offset).view(torch.int32))
    # ln u1 and Box-Muller over a spread of the 2**24 inputs: compiled by TorchScript, the same bits as eager
    # (eager against the kernels' bit casts of the spec: tests/ops/test_philox.py)
    words = (torch.arange(0, 2**24, 97, dtype=torch.int64) << 8) | 0x5A
    scripted = torch.jit.script(philox.normal_pair)
    for got, expected in zip(scripted(words, words.flip(0)), philox.normal_pair(words, words.flip(0))):
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_onnx_only_export_and_fallback_to_the_torchscript_based_exporter(tmp_path_factory, tmp_path, monkeypatch,
                                                                          capsys):
    run = trained_run(tmp_path_factory, "toy")
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated failure of the dynamo exporter")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    assert main([str(run), "--out", str(tmp_path), "--format", "onnx"]) == 0
    err = capsys.readouterr().err
    assert "warning: torch.onnx.export(dynamo=True) failed for Denoiser (RuntimeError: simulated" in err
    assert "falling back" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser.onnx", "manifest.json", "solver_step.onnx",
                                                          "step.onnx"]
    assert "deprecated" in onnx_metadata(tmp_path / "step.onnx")["exporter"]
    assert "deprecated" in onnx_metadata(tmp_path / "solver_step.onnx")["exporter"]
    model, _ = load_model(run)
    x, z = torch.randn(3, 2), torch.randn(3, 2)
    got = session(tmp_path / "step.onnx").run(None, {"x_t": x.numpy(), "t": np.full(3, 5), "z": z.numpy()})[0]
    assert np.abs(got - reference_step(model, x, 5, z).numpy()).max() <= 1e-5


def test_a_network_the_trace_cannot_capture_is_refused():
    class BatchDependent(torch.nn.Module):
        def forward(self, x, t):
            return x * float(x.shape[0]) + t  # the batch size becomes a constant in the trace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError, match="batch"):
            trace_network(BatchDependent(), torch.randn(4, 2), torch.rand(4, 1))


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx,pickle"], "unknown --format pickle"),
    (["--batch", "1"], "must be >= 2"),
    (["--sampler", "euler", "--steps", "10"], "--sampler: unknown sampler 'euler'; choose one of"),
    (["--steps", "0"], "--steps must be"),
    (["--steps", "31"], "--steps must be"),
    (["--sampler", "dpm++3m", "--steps", "2"], "dpm++3m is of order 3 and needs at least 3 steps"),
    (["--sampler", "ddpm", "--steps", "10"], "--steps"),
])
def test_bad_arguments_are_clear_errors(args, message, tmp_path_factory, tmp_path, capsys):
    """One line naming the flag, exit 2, nothing written (not even the output directory)."""
    run = trained_run(tmp_path_factory, "toy")
    assert main([str(run), "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_sampler_and_steps_choose_the_export_s_default_plan(tmp_path_factory, tmp_path, capsys):
    """--sampler/--steps add the plan asked for (here one outside the NFEs every export carries) and make it the
    default of the export's hosts; the files of Algorithm 2 stay what a plain export writes."""
    run = trained_run(tmp_path_factory, "toy")
    assert main([str(run), "--out", str(tmp_path), "--format", "onnx", "--sampler", FEW_STEP[0], "--steps", "7"]) == 0
    assert "solver_step.onnx" in capsys.readouterr().out
    solvers = json.loads((tmp_path / "manifest.json").read_text())["solvers"]
    assert solvers["default"] == {"sampler": FEW_STEP[0], "steps": 7}
    assert [(p["sampler"], p["steps"]) for p in solvers["plans"]].count((FEW_STEP[0], 7)) == 1
    plain = exported(tmp_path_factory, "toy")
    for name in ("denoiser.onnx", "step.onnx"):  # the same graph and metadata, whatever the plans
        assert onnx_metadata(tmp_path / name) == onnx_metadata(plain / name)


def test_missing_run_directory_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not unet_available("unet-ddpm")[0], reason=unet_available("unet-ddpm")[1])
def test_ddpm_unet_round_trip(tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, "unet-ddpm"), trained_run(tmp_path_factory, "unet-ddpm")
    assert "dynamo" in onnx_metadata(out / "step.onnx")["exporter"]  # attention exports without the fallback
    model, _ = load_model(run)
    x, z = torch.randn(3, 784), torch.randn(3, 784)
    for t in (1, model.T):
        got = session(out / "step.onnx").run(None, {"x_t": x.numpy(), "t": np.full(3, t), "z": z.numpy()})[0]
        assert np.abs(got - reference_step(model, x, t, z).numpy()).max() <= 1e-5
    expected = pyddpm_samples(run, tmp_path, 2, 4)
    sampler = torch.jit.load(str(out / "sampler.pt"))
    with torch.no_grad():
        assert np.abs(sampler.to_data(sampler.sample(2, 4, 0)).numpy() - expected).max() <= 1e-3
