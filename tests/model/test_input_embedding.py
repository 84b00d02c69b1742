"""The toy data's edge levers: FcNetwork's optional Fourier input embedding (``input_embedding="fourier"``) and the
training option ``low_t_share`` (more of each batch at small t). The embedding changes the network, FcNetwork's
default (the exercise's network) does not; both are the toy data's defaults and not the images'; runs stored before
the options rebuild and resume as they were; bad values are refused by name; the exported ONNX / TorchScript files
compute the same function."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from pyddpm import DDPM
from pyddpm.cli.train import build_parser, config_from_args, given_flags
from pyddpm.cli.train import main as train_main
from pyddpm.config import TrainConfig, network_settings
from pyddpm.diffusion import low_t_timesteps
from pyddpm.nets import FcNetwork, build_network
from pyddpm.nets.fc import FourierInputEmbedding
from pyddpm.schema import SchemaError, check_run_config
from pyddpm.store import build_model, load_model, read_checkpoint, save_checkpoint
from pyddpm.train import Objective

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:FutureWarning")
TOY_DATA = {"name": "chequerboard", "shape": [2]}
TINY = ["--data", "cb", "--hidden", "16", "--depth", "2", "--T", "20", "--max-steps", "4", "--batch-size", "32",
        "--num-train", "256", "--num-samples", "8", "--seed", "3", "--device", "cpu"]


def test_the_default_network_is_the_exercises():
    net = FcNetwork(2, 64)
    assert net.input_embedding is None and net.time_embedding is None
    assert [tuple(p.shape) for p in net.parameters()] == [(64, 3), (64,), (64, 64), (64,), (2, 64), (2,)]
    assert list(net.state_dict()) == ["network.0.weight", "network.0.bias", "network.2.weight", "network.2.bias",
                                      "network.4.weight", "network.4.bias"]
    x, t = torch.randn(7, 2), torch.rand(7, 1)
    layers = net.network
    expected = layers[4](torch.relu(layers[2](torch.relu(layers[0](torch.cat([x, t], 1))))))
    assert torch.equal(net(x, t), expected)
    torch.manual_seed(0)
    a = FcNetwork(2, 64)
    torch.manual_seed(0)
    b = FcNetwork(2, 64, input_embedding="none")
    assert torch.equal(a(x, t), b(x, t))  # "none" is the default, the same initial weights


def test_fourier_features_and_the_wider_first_layer():
    emb = FourierInputEmbedding(2, frequencies=3, max_period=8.0)
    x = torch.tensor([[1.0, -2.0]])
    w = 2 * math.pi / 8.0 * torch.tensor([1.0, 2.0, 4.0])
    angles = torch.cat([x[0, 0] * w, x[0, 1] * w])
    assert torch.allclose(emb(x), torch.cat([angles.sin(), angles.cos()])[None], atol=1e-6)
    assert emb.out_features == 12 and list(emb.state_dict()) == []  # the frequencies are rebuilt, not stored
    net = FcNetwork(2, 32, num_layers=3, activation="silu", time_embedding="sinusoidal", input_embedding="fourier")
    assert net.network[0].in_features == 2 + 2 * 2 * 8 + 32
    out = net(torch.randn(5, 2), torch.rand(5, 1))
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    five = FcNetwork(2, 32, input_embedding="fourier", input_frequencies=5, input_max_period=16.0)
    assert five.network[0].in_features == 2 + 2 * 2 * 5 + 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_embedding="gaussian"), "unknown input_embedding 'gaussian'; choose one of none, fourier"),
    (dict(input_embedding="fourier", input_frequencies=0), "input_frequencies must be an integer in [1, 32]"),
    (dict(input_embedding="fourier", input_frequencies=2.5), "input_frequencies must be an integer"),
    (dict(input_embedding="fourier", input_max_period=-1.0), "input_max_period must be a positive number"),
    (dict(input_embedding="fourier", input_max_period=float("nan")), "input_max_period must be a positive number"),
])
def test_bad_network_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match="FcNetwork: " + message.replace("[", r"\[").replace("]", r"\]")):
        FcNetwork(2, 16, **kwargs)


def test_run_config_entry_and_rebuild():
    cfg = TrainConfig(input_embedding="none")
    plain = network_settings(cfg, TOY_DATA)["kwargs"]
    assert not any(key.startswith("input_") for key in plain if key != "input_dim")  # as written before the option
    cfg.input_embedding, cfg.input_frequencies, cfg.input_max_period = "fourier", 6, 32.0
    entry = network_settings(cfg, TOY_DATA)
    assert entry["kwargs"]["input_embedding"] == "fourier" and entry["kwargs"]["input_frequencies"] == 6
    net = build_network(entry["name"], **entry["kwargs"])
    assert net.network[0].in_features == 2 + 2 * 2 * 6 + 32
    assert torch.allclose(net.input_embedding.freqs, 2 * math.pi * 2.0 ** torch.arange(6) / 32.0)


def _cli_config(argv):
    return config_from_args(build_parser().parse_args(argv), given_flags(argv))


def test_the_toy_default_is_fourier_with_low_t_and_images_keep_the_exercises():
    toy = _cli_config([])
    assert toy.input_embedding == "fourier" and toy.low_t_share == 0.5 and toy.low_t_range == 0.2
    assert network_settings(toy, TOY_DATA)["kwargs"]["input_embedding"] == "fourier"
    mnist = {"name": "mnist", "shape": [784], "image_shape": [1, 28, 28]}
    for argv in (["--data", "mnist"], ["--data", "mnist", "--net", "unet"], ["--data", "fashion-mnist"]):
        cfg = _cli_config(argv)
        assert cfg.input_embedding == "none" and cfg.low_t_share == 0.0, argv
        assert "input_embedding" not in network_settings(cfg, mnist)["kwargs"], argv
    # the library's TrainConfig resolves the same way when the setting is left at None
    assert TrainConfig().resolved_input_embedding() == "fourier" and TrainConfig().resolved_low_t_share() == 0.5
    assert TrainConfig(data="mnist").resolved_input_embedding() == "none"
    assert TrainConfig(data="mnist").resolved_low_t_share() == 0.0
    assert TrainConfig(data="two-gaussians", net="unet").resolved_input_embedding() == "none"
    explicit = _cli_config(["--input-embedding", "none", "--low-t-share", "0"])
    assert explicit.input_embedding == "none" and explicit.low_t_share == 0.0


def test_low_t_timesteps():
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    t = low_t_timesteps(100_000, 1000, 0.3, 0.2)
    assert t.min() >= 1 and t.max() <= 1000
    assert abs(float((t <= 200).double().mean()) - (0.3 + 0.7 * 0.2)) < 0.01
    assert low_t_timesteps(1000, 1000, 1.0, 0.2).max() <= 200
    assert low_t_timesteps(1000, 20, 1.0, 0.01).max() == 1  # at least step 1
    torch.manual_seed(0)
    uniform = low_t_timesteps(50, 1000, 0.0, 0.2)
    torch.manual_seed(0)
    assert torch.equal(uniform, torch.randint(1, 1001, (50,)))  # share 0: Algorithm 1's draws
    with pytest.raises(ValueError, match="share in"):
        low_t_timesteps(4, 10, 1.5, 0.2)
    torch.set_rng_state(generator_state)


def test_share_zero_is_algorithm_1_and_the_loss_stays_uniform():
    model = DDPM(FcNetwork(2, 16, time_embedding="sinusoidal"), T=100)
    x = torch.randn(64, 2)
    torch.manual_seed(1)
    expected = model.loss(x)
    torch.manual_seed(1)
    assert torch.equal(Objective(model, 0.0)(x), expected)
    torch.manual_seed(1)
    assert torch.equal(model.negative_elbo(x, torch.randint(1, 101, (64,))).mean(), expected)
    torch.manual_seed(1)
    low = Objective(model, 0.3, 0.2)(x)
    torch.manual_seed(1)
    t = low_t_timesteps(64, 100, 0.3, 0.2)
    assert torch.equal(low, model.negative_elbo(x, t).mean())
    with pytest.raises(ValueError, match=r"t must have shape \(64,\)"):
        model.negative_elbo(x, t[:3])


def _config(kwargs: dict) -> dict:
    return {"diffusion": {"T": 10, "schedule": "linear", "beta_1": 1e-4, "beta_T": 0.02, "variance": "beta"},
            "network": {"name": "fc", "kwargs": kwargs}, "data": {**TOY_DATA, "center": 0.5, "scale": 64.0}}


def test_an_old_run_config_rebuilds_the_same_network():
    old = {"input_dim": 2, "num_hidden": 32, "num_layers": 3, "activation": "silu", "time_embedding": "sinusoidal"}
    check_run_config(_config(old))
    torch.manual_seed(0)
    rebuilt = build_model(_config(old)).network
    torch.manual_seed(0)
    expected = FcNetwork(2, 32, num_layers=3, activation="silu", time_embedding="sinusoidal")
    assert rebuilt.input_embedding is None
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in expected.state_dict().items()}
    x, t = torch.randn(4, 2), torch.rand(4, 1)
    assert torch.equal(rebuilt(x, t), expected(x, t))


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_embedding=3), "network.kwargs.input_embedding: must be a string"),
    (dict(input_embedding="fourier", input_frequencies=99), "network.kwargs.input_frequencies: must be an integer"),
    (dict(input_embedding="fourier", input_max_period="64"), "network.kwargs.input_max_period: must be a finite"),
    (dict(input_embedding="fourier", input_max_period=0.0), "network.kwargs.input_max_period: must be a finite"),
])
def test_the_run_config_check_refuses_bad_entries(kwargs, message):
    with pytest.raises(SchemaError, match=message):
        check_run_config(_config({"input_dim": 2, "num_hidden": 8, **kwargs}))


@pytest.mark.parametrize("flags, message", [
    (["--input-frequencies", "0"], "pyddpm-train: error: --input-frequencies must be a positive integer (at most 32), got 0"),
    (["--input-max-period", "0"], "pyddpm-train: error: --input-max-period must be a positive number, got 0.0"),
    (["--input-max-period", "inf"], "pyddpm-train: error: --input-max-period must be a positive number, got inf"),
    (["--net", "unet", "--data", "mnist", "--input-embedding", "fourier"],
     "pyddpm-train: error: --input-embedding fourier applies to --net fc, not --net unet"),
    (["--low-t-share", "1.5"], "pyddpm-train: error: --low-t-share must be a number in [0, 1], got 1.5"),
    (["--low-t-share", "nan"], "pyddpm-train: error: --low-t-share must be a number in [0, 1], got nan"),
    (["--low-t-range", "0"], "pyddpm-train: error: --low-t-range must be a number in (0, 1], got 0.0"),
    (["--model", "flow", "--low-t-share", "0.5"], "pyddpm-train: error: --low-t-share sets the DDPM's network or "
     "diffusion; --model flow has neither: give its settings with --model-kwargs"),
    (["--model", "vae", "--input-embedding", "fourier"], "pyddpm-train: error: --input-embedding sets the DDPM's "
     "network or diffusion; --model vae has neither: give its settings with --model-kwargs"),
])
def test_bad_flags_are_one_line_errors(flags, message, tmp_path, capsys):
    common = TINY if "--model" not in flags else TINY[:2] + TINY[8:]  # a baseline run: no network flags
    assert train_main([*common, "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == message and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_input_embedding_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main([*TINY, "--out", str(tmp_path / "run"), "--input-embedding", "gaussian"])
    assert exit_info.value.code == 2
    assert "--input-embedding: invalid choice: 'gaussian'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fourier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fourier") / "run"
    assert train_main([*TINY, "--out", str(out), "--input-embedding", "fourier", "--input-frequencies", "4"]) == 0
    return out


def test_a_fourier_run_rebuilds_from_its_config(fourier_run):
    config = json.loads((fourier_run / "config.json").read_text())
    assert config["network"]["kwargs"]["input_embedding"] == "fourier"
    assert config["train"]["input_embedding"] == "fourier" and config["train"]["input_frequencies"] == 4
    assert config["train"]["low_t_share"] == 0.5  # the toy default, written into the run's config
    model, _ = load_model(fourier_run)
    assert isinstance(model.network.input_embedding, FourierInputEmbedding)
    assert model.network.network[0].in_features == 2 + 2 * 2 * 4 + 32


def test_a_fourier_run_resumes(fourier_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fourier_run, run)
    assert train_main(["--resume", str(run), "--max-steps", "6", "--device", "cpu"]) == 0
    assert json.loads((run / "config.json").read_text())["network"] == \
        json.loads((fourier_run / "config.json").read_text())["network"]


def test_an_old_run_without_the_settings_resumes_unchanged(tmp_path):
    """A run written before the options existed (no input_* or low_t_* entries) resumes with the network and the
    uniform t it was trained with, although the toy defaults are now fourier and 0.5."""
    run = tmp_path / "run"
    assert train_main([*TINY, "--out", str(run), "--input-embedding", "none", "--low-t-share", "0"]) == 0
    checkpoint = read_checkpoint(run)
    config = checkpoint.config
    for key in ("input_embedding", "input_frequencies", "input_max_period", "low_t_share", "low_t_range"):
        config["train"].pop(key)
        assert key not in config["network"]["kwargs"]
    save_checkpoint(run, config, checkpoint.tensors, checkpoint.state)
    old_network = dict(config["network"])
    assert train_main(["--resume", str(run), "--max-steps", "6", "--device", "cpu"]) == 0
    resumed = read_checkpoint(run).config
    assert resumed["network"] == old_network and resumed["train"]["low_t_share"] == 0.0
    assert resumed["train"]["input_embedding"] == "none" and read_checkpoint(run).state["step"] == 6
    model, _ = load_model(run)
    assert model.network.input_embedding is None


def test_a_fourier_run_exports_to_onnx_and_torchscript(fourier_run, tmp_path):
    import onnxruntime as ort

    from pyddpm.export import export_run

    out = tmp_path / "export"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*falling back to the deprecated TorchScript-based exporter")
        export_run(fourier_run, out)
    model, _ = load_model(fourier_run)
    denoiser = ort.InferenceSession(str(out / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "denoiser.pt"))
    generator = torch.Generator().manual_seed(0)
    for batch, t in ((1, 1), (9, 7), (33, model.T)):
        x = 20 * torch.randn(batch, 2, generator=generator)  # model-space toy coordinates span [-32, 32]
        with torch.no_grad():
            expected = model.network(x, model.time_input(t, batch))
            got_ts = scripted(x, torch.full((batch,), t))
        got = denoiser.run(None, {"x_t": x.numpy(), "t": np.full(batch, t, dtype=np.int64)})[0]
        assert np.abs(got - expected.numpy()).max() <= 1e-4, (batch, t)
        assert (got_ts - expected).abs().max() <= 1e-4, (batch, t)
