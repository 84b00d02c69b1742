"""Bad input at every door of the console scripts is one clear line, before any work: exit code != 0, a message
naming the flag or config entry, no traceback, and nothing written (the run directory as it was).

One parametrised test per failure class: output paths, devices, sizes, late validation, nonsense values, NaN,
corrupt files, leftovers of killed writes and file modes. The scripts run in-process through their main(argv).
"""
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from pyddpm.cli.eval import main as eval_main
from pyddpm.cli.export import main as export_main
from pyddpm.cli.sample import main as sample_main
from pyddpm.cli.train import main as train_main
from pyddpm.diffusion import DDPM
from pyddpm.ema import EMA
from pyddpm.store import (CHECKPOINT_FILE, CONFIG_FILE, load_model, read_checkpoint, read_safetensors_metadata,
                          save_checkpoint)

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--T", "10", "--hidden", "16", "--depth", "1", "--num-train", "256", "--batch-size", "64",
        "--num-samples", "8", "--device", "cpu"]
MAINS = {"train": train_main, "sample": sample_main, "eval": eval_main, "export": export_main}
BIG = str(10**12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "R"
    assert train_main(TINY + ["--max-steps", "2", "--out", str(run)]) == 0
    return run


@pytest.fixture
def ws(trained, tmp_path, monkeypatch):
    """A workspace (the cwd): a copy of the run in R, a file ``afile`` and a directory ``adir``."""
    shutil.copytree(trained, tmp_path / "R")
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tree(root: Path) -> dict:
    """Every path under root with its content's SHA-256 (None for directories)."""
    return {str(p.relative_to(root)): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def refused(capsys, script: str, argv: list[str], *names: str) -> str:
    """Run the script; assert it fails with exactly one error line naming each of ``names`` and no traceback."""
    rc = MAINS[script](argv)
    err = capsys.readouterr().err
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in re.split(r"[\r\n]", err) if f"{script}: error: " in line]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def refused_with_nothing_written(ws, capsys, script, argv, *names) -> str:
    before = tree(ws)
    line = refused(capsys, script, argv, *names)
    assert tree(ws) == before
    return line


OUTPUT_PATHS = {
    "sample into a file's child": ("sample", ["R", "--out", "afile/s.npy"], "--out", "is a file"),
    "sample onto a directory": ("sample", ["R", "--out", "adir.npy"], "--out", "is a directory"),
    "train into a file's child": ("train", TINY + ["--out", "afile/run"], "--out", "is a file"),
    "train onto a file": ("train", TINY + ["--out", "afile"], "--out", "is a file"),
    "train where config.json is a directory": ("train", TINY + ["--out", "cfgdir"], "config.json", "directory"),
    "export onto a file": ("export", ["R", "--out", "afile"], "--out", "is a file"),
    "export into a file's child": ("export", ["R", "--out", "afile/x"], "--out", "is a file"),
    "eval into a file's child": ("eval", ["R", "--out", "afile/e.json"], "--out", "is a file"),
    "eval onto a directory": ("eval", ["R", "--out", "adir"], "--out", "is a directory"),
    "eval samples into a file's child": ("eval", ["R", "--save-samples", "afile/x.npy"], "--save-samples", "is a file"),
    # /proc refuses new files even to root, for whom os.access says every directory is writable
    "train into /proc": ("train", TINY + ["--out", "/proc/x"], "--out", "not writable"),
    "sample into /proc": ("sample", ["R", "--out", "/proc/x.npy"], "--out", "not writable"),
    "eval into /proc": ("eval", ["R", "--out", "/proc/x.json"], "--out", "not writable"),
    "export into /proc": ("export", ["R", "--out", "/proc/x"], "--out", "not writable"),
    "export onto /proc": ("export", ["R", "--out", "/proc"], "--out", "not writable"),
}


@pytest.mark.parametrize("case", list(OUTPUT_PATHS))
def test_output_paths_are_checked_before_any_work(ws, capsys, case):
    script, argv, *names = OUTPUT_PATHS[case]
    if case == "sample onto a directory":
        (ws / "adir.npy").mkdir()
    if case == "train where config.json is a directory":
        (ws / "cfgdir" / CONFIG_FILE).mkdir(parents=True)
    refused_with_nothing_written(ws, capsys, script, argv, *names)


@pytest.mark.parametrize("device", ["bogus", "", "meta", "cuda:99"])
@pytest.mark.parametrize("script", ["train", "sample", "eval"])
def test_bad_devices_are_one_line(ws, capsys, script, device):
    argv = {"train": TINY + ["--out", "new"], "sample": ["R", "--out", "s.npy"], "eval": ["R"]}[script]
    refused_with_nothing_written(ws, capsys, script, argv + ["--device", device], "--device")


SIZES = {  # flag, script, argv: refused naming the flag and its limit
    "--T": ("train", TINY + ["--T", BIG], "100000"),
    "--num-train": ("train", TINY + ["--num-train", BIG], "10000000"),
    "--hidden": ("train", TINY + ["--hidden", BIG], "8192"),
    "--depth": ("train", TINY + ["--depth", BIG], "256"),
    "--num-samples": ("train", TINY + ["--num-samples", BIG], "1000000"),
    "--hidden/--depth": ("train", TINY + ["--hidden", "8192", "--depth", "200"], "268,435,456"),
    "--channels": ("train", TINY + ["--data", "mnist", "--net", "unet", "--channels", "4," + BIG], "8192"),
    "--num": ("sample", ["R", "--num", BIG, "--out", "s.npy"], "1000000"),
    "--batch": ("export", ["R", "--out", "exported", "--batch", BIG], "4096"),
    "--num ": ("eval", ["R", "--num", BIG], "1000000"),
    "--steps": ("sample", ["R", "--steps", BIG, "--out", "s.npy"], "100000"),
}


@pytest.mark.parametrize("flag", list(SIZES))
def test_sizes_beyond_the_limits_are_refused_up_front(ws, capsys, flag):
    script, argv, limit = SIZES[flag]
    argv = argv if script != "train" else argv + ["--out", "new"]
    refused_with_nothing_written(ws, capsys, script, argv, flag.strip(), limit)


@pytest.mark.parametrize("argv, flag", [(["--seed", "-1"], "--seed"), (["--num-samples", "0"], "--num-samples"),
                                        (["--grid-samples", "-1"], "--grid-samples")])
def test_train_validates_every_argument_before_training(ws, capsys, argv, flag):
    line = refused_with_nothing_written(ws, capsys, "train", TINY + argv + ["--out", "new"], flag)
    assert "--num " not in line  # names no flag pyddpm-train lacks
    assert not (ws / "new").exists()


NONSENSE = {
    "--warmup -5": ("train", ["--warmup", "-5"], ">= 0"),
    "--grad-clip -1": ("train", ["--grad-clip", "-1"], ">= 0"),
    "--grad-clip nan": ("train", ["--grad-clip", "nan"], ">= 0"),
    "--ema -0.5": ("train", ["--ema", "-0.5"], "[0, 1)"),
    "--ema nan": ("train", ["--ema", "nan"], "[0, 1)"),
    "--ema 1": ("train", ["--ema", "1"], "[0, 1)"),
    "--lr 0": ("train", ["--lr", "0"], "positive"),
    "--weight-decay inf": ("train", ["--weight-decay", "inf"], ">= 0"),
    "--dropout 1": ("train", ["--dropout", "1"], "[0, 1)"),
    "--data-scale -2": ("train", ["--data-scale", "-2"], "positive"),
    "--beta-1 0.5": ("train", ["--beta-1", "0.5", "--beta-T", "0.1"], "--beta-T"),
    "--eta 1e30": ("sample", ["--steps", "5", "--eta", "1e30"], "[0, 1]"),
    "--eta nan": ("sample", ["--steps", "5", "--eta", "nan"], "[0, 1]"),
    "--eta 0.5": ("sample", ["--eta", "0.5"], "--eta applies to --sampler ddim"),
    "--sampler ddpm --steps 5": ("sample", ["--sampler", "ddpm", "--steps", "5"], "Algorithm 2"),
    "--order 2 ddim": ("sample", ["--sampler", "ddim", "--order", "2"], "--order applies to --sampler unipc"),
    "--sampler dpm++3m --steps 2": ("sample", ["--sampler", "dpm++3m", "--steps", "2"], "order 3"),
    "--steps 11": ("sample", ["--steps", "11"], "at most 10"),  # T of the run
    "--seed -3": ("sample", ["--seed", "-3"], ">= 0"),
    "--batch-size 0": ("sample", ["--batch-size", "0"], "positive"),
    "--precision bf16 --eager": ("sample", ["--precision", "bf16", "--eager"], "--eager"),
}


@pytest.mark.parametrize("case", list(NONSENSE))
def test_nonsense_values_name_the_flag_and_its_range(ws, capsys, case):
    script, argv, range_text = NONSENSE[case]
    full = TINY + argv + ["--out", "new"] if script == "train" else ["R", *argv, "--out", "s.npy"]
    refused_with_nothing_written(ws, capsys, script, full, case.split()[0], range_text)


@pytest.mark.parametrize("script", ["train", "sample", "eval"])
def test_an_unknown_precision_is_refused_by_argparse_before_any_work(ws, capsys, script):
    before = tree(ws)
    argv = TINY + ["--out", "new"] if script == "train" else ["R", "--out", "s.npy" if script == "sample" else "e.json"]
    with pytest.raises(SystemExit) as exit_info:
        MAINS[script]([*argv, "--precision", "fp16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        f"pyddpm-{script}: error: argument --precision: invalid choice: 'fp16' (choose from 'fp32', 'bf16')"]
    assert tree(ws) == before


@pytest.mark.parametrize("script,flag", [("train", "--precision bf16"), ("train", "--amp"),
                                         ("sample", "--precision bf16"), ("eval", "--precision bf16")])
def test_bf16_on_a_cpu_without_bf16_arithmetic_is_refused_before_any_work(ws, capsys, monkeypatch, script, flag):
    monkeypatch.setattr("pyddpm.accel.fast_network.native_bf16", lambda device: False)
    argv = TINY + ["--out", "new"] if script == "train" else ["R", "--out", "s.npy" if script == "sample" else "e.json"]
    line = refused_with_nothing_written(ws, capsys, script, [*argv, *flag.split()], flag)
    assert "no bfloat16 arithmetic" in line and "AVX512-BF16 or AMX" in line


def poison_weights(run: Path, value: float, names=("model.",)) -> None:
    """Rewrite the run's checkpoint with every weight under ``names`` set to ``value`` (checksum recomputed)."""
    checkpoint = read_checkpoint(run)
    tensors = {k: torch.full_like(v, value) if k.startswith(names) and v.is_floating_point() else v
               for k, v in checkpoint.tensors.items()}
    save_checkpoint(run, checkpoint.config, tensors, checkpoint.state)


NAN_CASES = ["loss NaN before the first checkpoint", "EMA weights NaN at the checkpoint", "NaN EMA weights: sample",
             "NaN EMA weights: resume", "infinite samples from finite weights"]


@pytest.mark.parametrize("case", NAN_CASES)
def test_nan_is_an_error_that_says_what_is_on_disk(ws, capsys, monkeypatch, case):
    if case == "loss NaN before the first checkpoint":
        original = DDPM.negative_elbo  # what the Trainer's objective calls (through DDPM.loss, or with low t)
        monkeypatch.setattr(DDPM, "negative_elbo", lambda self, x, t=None: original(self, x, t) * math.nan)
        line = refused(capsys, "train", TINY + ["--max-steps", "8", "--out", "new"], "nan", "No checkpoint was written")
        assert "is kept" not in line and not (ws / "new" / CHECKPOINT_FILE).exists()
    elif case == "EMA weights NaN at the checkpoint":
        original = EMA.update

        def nan_update(self, model):
            original(self, model)
            next(self.shadow.parameters()).data.fill_(math.nan)

        monkeypatch.setattr(EMA, "update", nan_update)
        refused(capsys, "train", TINY + ["--max-steps", "2", "--out", "new"], "NaN or infinite",
                "No checkpoint was written")
        assert not (ws / "new" / CHECKPOINT_FILE).exists()  # never written with non-finite weights
    elif case.startswith("NaN EMA weights"):
        poison_weights(ws / "R", math.nan)
        before = tree(ws)
        if case.endswith("sample"):
            refused(capsys, "sample", ["R", "--out", "s.npy"], "NaN or infinite weights")
        else:
            refused(capsys, "train", ["--resume", "R", "--max-steps", "4"], "NaN or infinite weights")
        assert tree(ws) == before
    else:
        checkpoint = read_checkpoint(ws / "R")
        last = max(k for k in checkpoint.tensors if k.startswith("model.network") and k.endswith("weight"))
        tensors = dict(checkpoint.tensors, **{last: checkpoint.tensors[last] * 1e38})  # eps_hat overflows
        save_checkpoint(ws / "R", checkpoint.config, tensors, checkpoint.state)
        before = tree(ws)
        refused(capsys, "sample", ["R", "--num", "8", "--out", "s.npy"], "NaN or infinite", "nothing was written")
        assert tree(ws) == before


def test_a_diverged_run_without_a_good_checkpoint_says_there_is_none(ws, capsys):
    # lr 100 blows the weights up within the first steps while they stay finite (the loss ~1e24 at step 5)
    line = refused(capsys, "train", TINY + ["--lr", "100", "--checkpoint-every", "5", "--max-steps", "40",
                                            "--out", "new"], "rose to", "No checkpoint was written", "--lr")
    assert "is kept" not in line and not (ws / "new" / CHECKPOINT_FILE).exists()


def test_a_diverged_run_offers_the_checkpoint_from_before_the_loss_rose(ws, capsys, monkeypatch):
    calls = []
    original = DDPM.negative_elbo

    def rising(self, x, t=None):  # finite weights that have diverged from step 8 on
        calls.append(None)
        return original(self, x, t) * (1e4 if len(calls) > 7 else 1.0)

    monkeypatch.setattr(DDPM, "negative_elbo", rising)
    line = refused(capsys, "train", TINY + ["--checkpoint-every", "5", "--max-steps", "40", "--out", "new"],
                   "rose to", "by step 8", "(step 5)", "--resume")
    assert "nothing to resume" not in line
    assert read_checkpoint(ws / "new").state["step"] == 5
    model, _ = load_model(ws / "new")
    assert torch.isfinite(model.sample((64, 2), backend="torch")).all()


def test_a_loss_that_spikes_and_recovers_trains_on(ws, monkeypatch):
    """The RealNVP flow on MNIST at its default lr rises 28 |first loss| above its first loss by step 25, then learns:
    a spike of about 60 |first loss| over steps 3-8 is not a divergence."""
    calls = []
    original = DDPM.negative_elbo

    def spiking(self, x, t=None):
        calls.append(None)
        return original(self, x, t) * (100.0 if 2 < len(calls) < 9 else 1.0)

    monkeypatch.setattr(DDPM, "negative_elbo", spiking)
    assert train_main(TINY + ["--checkpoint-every", "5", "--max-steps", "20", "--out", "new"]) == 0
    assert read_checkpoint(ws / "new").state["step"] == 20


def test_resume_applies_lr_clip_and_steps_and_refuses_other_changes(ws, capsys):
    run = ws / "R"
    before = tree(ws)
    for argv, flag in ((["--hidden", "32"], "--hidden"), (["--T", "20"], "--T"), (["--ema", "0.5"], "--ema"),
                       (["--out", "elsewhere"], "--out"), (["--data", "tg"], "--data")):
        refused(capsys, "train", ["--resume", str(run), *argv], flag, "--resume")
    assert tree(ws) == before
    assert train_main(["--resume", str(run), "--lr", "0.5", "--grad-clip", "0.25", "--max-steps", "3",
                       "--hidden", "16"]) == 0  # an unchanged setting may be repeated
    checkpoint = read_checkpoint(run)
    assert checkpoint.state["step"] == 3
    assert checkpoint.config["train"]["lr"] == 0.5 and checkpoint.config["train"]["grad_clip"] == 0.25
    warmup = checkpoint.config["train"]["warmup"]  # step index 2 is inside the warm-up: lr * 3 / warmup
    assert checkpoint.state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5 * 3 / warmup)


def rewrite_metadata(run: Path, mutate) -> None:
    """Rewrite the checkpoint with ``mutate(config, state)`` applied to its JSON metadata (tensors unchanged)."""
    path = run / CHECKPOINT_FILE
    data = path.read_bytes()
    metadata = read_safetensors_metadata(data)
    config, state = json.loads(metadata["config"]), json.loads(metadata["state"])
    config, state = mutate(config, state)
    metadata = dict(metadata, config=json.dumps(config), state=json.dumps(state))
    path.write_bytes(save_safetensors(read_checkpoint(run).tensors, metadata=metadata))


def _set(path: str, value):
    def mutate(config, state):
        root = {"config": config, "state": state}
        *parents, last = path.split(".")
        node = root
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return root["config"], root["state"]
    return mutate


CORRUPT = {  # how the checkpoint is damaged -> what the message names
    "config a list": (lambda c, s: ([c], s), "corrupted run config: config"),
    "network.kwargs a list": (_set("config.network.kwargs", [16, 1]), "network.kwargs"),
    "T a string": (_set("config.diffusion.T", "10"), "diffusion.T"),
    "beta_1 a string": (_set("config.diffusion.beta_1", "1e-4"), "diffusion.beta_1"),
    "no data entry": (_set("config.data", KeyError), "data: missing"),
    "epochs null": (_set("config.train.epochs", None), "train.epochs"),
    "T 10^12": (_set("config.diffusion.T", 10**12), "diffusion.T"),
    "num_layers 10^8": (_set("config.network.kwargs.num_layers", 10**8), "network.kwargs.num_layers"),
    "num_hidden 10^5 x 200 layers": (lambda c, s: _set("config.network.kwargs.num_layers", 200)(
        *_set("config.network.kwargs.num_hidden", 8192)(c, s)), "parameters"),
    "unknown network setting": (_set("config.network.kwargs.width", 3), "network.kwargs.width"),
    "scale 0": (_set("config.data.scale", 0), "data.scale"),
    "scale NaN": (_set("config.data.scale", math.nan), "data.scale"),
    "input_dim beside the data": (_set("config.data.shape", [3]), "input_dim"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_run_configs_name_the_entry(ws, capsys, case):
    mutate, field = CORRUPT[case]
    rewrite_metadata(ws / "R", mutate)
    before = tree(ws)
    if case == "epochs null":
        refused(capsys, "train", ["--resume", "R"], field)
    refused(capsys, "sample", ["R", "--out", "s.npy"], field)
    refused(capsys, "eval", ["R"], field)
    assert tree(ws) == before


@pytest.mark.parametrize("entry, message", [("config.train", "no train entry"), ("state.world", "'world'"),
                                            ("state.optimizer", "'optimizer'")])
def test_a_run_without_its_training_state_samples_but_does_not_resume(ws, capsys, entry, message):
    """As an imported run: it samples, and --resume names what is missing."""
    rewrite_metadata(ws / "R", _set(entry, KeyError))
    before = tree(ws)
    refused(capsys, "train", ["--resume", "R"], "cannot resume", message)
    assert tree(ws) == before
    assert sample_main(["R", "--num", "4", "--out", "s.npy"]) == 0


TENSOR_DAMAGE = ["int weights", "bool weights", "wrong shape", "a flipped bit", "missing rng state"]


@pytest.mark.parametrize("case", TENSOR_DAMAGE)
def test_damaged_tensors_are_refused(ws, capsys, case):
    run = ws / "R"
    checkpoint = read_checkpoint(run)
    name = next(k for k in checkpoint.tensors if k.startswith("model.network") and k.endswith("weight"))
    tensors = dict(checkpoint.tensors)
    if case == "a flipped bit":
        data = bytearray((run / CHECKPOINT_FILE).read_bytes())
        data[-3] ^= 0x40  # in the last tensor's data
        (run / CHECKPOINT_FILE).write_bytes(bytes(data))
        message = "SHA-256"
    elif case == "missing rng state":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("train.rng")}
        save_checkpoint(run, checkpoint.config, tensors, checkpoint.state)
        before = tree(ws)
        refused(capsys, "train", ["--resume", "R"], "cannot resume", "train.rng.0.0")
        assert tree(ws) == before
        return
    else:
        dtype = {"int weights": torch.int32, "bool weights": torch.bool, "wrong shape": torch.float32}[case]
        value = tensors[name].to(dtype) if case != "wrong shape" else tensors[name][:, :1].contiguous()
        tensors[name] = value
        save_checkpoint(run, checkpoint.config, tensors, checkpoint.state)
        message = name.removeprefix("model.")
    before = tree(ws)
    refused(capsys, "sample", ["R", "--out", "s.npy"], message)
    refused(capsys, "train", ["--resume", "R"], message)
    assert tree(ws) == before


def test_a_checkpoint_without_a_checksum_still_loads(ws):
    """Checkpoints written before the checksum existed load as before."""
    path = ws / "R" / CHECKPOINT_FILE
    metadata = read_safetensors_metadata(path.read_bytes())
    checkpoint = read_checkpoint(ws / "R")
    path.write_bytes(save_safetensors(checkpoint.tensors, metadata={k: v for k, v in metadata.items()
                                                                    if k != "tensors_sha256"}))
    weights = load_model(ws / "R")[0].state_dict()
    assert all(torch.equal(weights[k], v) for k, v in checkpoint.prefixed("model").items())


KILLER = """
import os, signal, sys
from pyddpm import store
checkpoint = store.read_checkpoint(sys.argv[1])
store.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die with the temporary written, not renamed
store.save_checkpoint(sys.argv[1], checkpoint.config, checkpoint.tensors, checkpoint.state)
"""


@pytest.mark.parametrize("start", ["resume", "fresh"])
def test_temporaries_of_a_killed_write_are_removed_on_the_next_start(ws, start):
    run = ws / "R"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILLER, str(run)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))
    assert left and left[0].startswith(f".{CHECKPOINT_FILE}.")  # the kill left a checkpoint-sized temporary
    if start == "fresh":
        fresh = ws / "fresh"
        fresh.mkdir()
        for name in left:
            shutil.move(run / name, fresh / name)
        (fresh / f".{CONFIG_FILE}.abc123.tmp").write_text("{")
        assert train_main(TINY + ["--max-steps", "1", "--out", str(fresh)]) == 0
        run = fresh
    else:
        step = read_checkpoint(run).state["step"]
        assert train_main(["--resume", str(run), "--max-steps", str(step + 1)]) == 0
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    load_model(run)


def test_files_get_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        assert train_main(TINY + ["--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes[CHECKPOINT_FILE] == modes[CONFIG_FILE] == modes["metrics.csv"] == modes["samples.png"] == 0o640
