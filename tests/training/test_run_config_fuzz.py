"""Fuzz of the run-config reader: random mutations of a valid checkpoint's config and training state (wrong types,
missing or unknown keys, huge, negative and non-finite values) each end in a clear CheckpointError or in a
correct load, never in another exception, and each within a bounded time."""
import copy
import json
import math
import random
import time

import pytest
import torch
from safetensors.torch import save as save_safetensors

from pyddpm.baselines import default_kwargs
from pyddpm.cli.train import main as train_main
from pyddpm.schema import SchemaError, check_run_config
from pyddpm.samplers import NonFiniteSamples, generate_samples
from pyddpm.store import CHECKPOINT_FILE, CheckpointError, load_model, read_checkpoint, read_safetensors_metadata

CASES = 300
SECONDS_PER_CASE = 10.0  # a load of this tiny run takes milliseconds; a hang or a huge allocation takes far longer
VALUES = [None, True, False, 0, 1, -1, 2, 3, 10**8, 10**12, 2**63, 2**70, -10**12, 0.5, -0.5, 1e308, -1e308,
          math.nan, math.inf, -math.inf, "", "1", "10", "x", "linear", "beta", [], [1], [2, 2], [1, 28, 28],
          ["a"], {}, {"a": 1}, [[1]]]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "R"
    assert train_main(["--T", "10", "--hidden", "16", "--depth", "1", "--num-train", "256", "--batch-size", "64",
                       "--num-samples", "8", "--max-steps", "1", "--device", "cpu", "--out", str(run)]) == 0
    return run


def paths(node, prefix=()):
    """Every (path, value) in a nested JSON value."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from paths(value, prefix + (key,))


def mutate(root: dict, rng: random.Random) -> str:
    """Apply one random mutation in place; returns what it did."""
    path, _ = rng.choice([p for p in paths(root) if p[0]])
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    kind = rng.choice(["replace", "replace", "replace", "delete", "add"])
    if kind == "delete":
        del parent[last]
    elif kind == "add" and isinstance(parent, dict):
        parent[rng.choice(["extra", "width", "T", "kwargs"]) + "_" * rng.randint(0, 1)] = rng.choice(VALUES)
    else:
        parent[last] = copy.deepcopy(rng.choice(VALUES))
    return f"{kind} {'.'.join(map(str, path))}"


def test_random_mutations_fail_clearly_or_load_correctly(run, tmp_path):
    data = (run / CHECKPOINT_FILE).read_bytes()
    metadata = read_safetensors_metadata(data)
    tensors = read_checkpoint(run).tensors
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    original = {"config": json.loads(metadata["config"]), "state": json.loads(metadata["state"])}
    rng = random.Random(12)
    target = tmp_path / "R"
    target.mkdir()
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(CASES):
        root = copy.deepcopy(original)
        what = "; ".join(mutate(root, rng) for _ in range(rng.randint(1, 3)))
        fields = {k: v for k, v in metadata.items() if k not in original}
        fields.update({k: json.dumps(v) for k, v in root.items()})  # a deleted "config" or "state" stays missing
        (target / CHECKPOINT_FILE).write_bytes(save_safetensors(tensors, metadata=fields))
        start = time.perf_counter()
        try:
            model, config = load_model(target)
        except CheckpointError as err:
            assert "\n" not in str(err), (what, err)
            outcomes["refused"] += 1
        else:  # a correct load: the stored weights, and samples of the config's shape
            loaded = model.state_dict()
            assert all(torch.equal(loaded[k], v) for k, v in weights.items()), what
            try:
                samples = generate_samples(model, config["data"], 3, seed=0)
            except NonFiniteSamples:
                pass  # e.g. a data scale of 1e-300: said clearly
            else:
                assert samples.shape == (3, *config["data"]["shape"]), what
            outcomes["loaded"] += 1
        assert time.perf_counter() - start < SECONDS_PER_CASE, what
    assert outcomes["refused"] > CASES // 3 and outcomes["loaded"] > 0, outcomes  # both kinds were exercised


@pytest.mark.parametrize("name", ["flow", "vae"])
def test_baseline_model_entries_are_checked(run, name):
    """A baseline run's ``model`` entry: its default settings pass; unknown or oversized ones are named."""
    config = {k: v for k, v in read_checkpoint(run).config.items() if k not in ("network", "diffusion")}
    good = dict(config, model={"name": name, "kwargs": default_kwargs(name, "chequerboard")})
    assert check_run_config(good) is good
    for kwargs, field in (({"width": 3}, "model.kwargs.width"), ({"hidden": 10**8}, "model.kwargs.hidden"),
                          ({"hidden": 8192, "num_hidden_layers": 200}, "parameters"),
                          ({"num_hidden_layers": "2"}, "model.kwargs.num_hidden_layers")):
        bad = dict(config, model={"name": name, "kwargs": {**good["model"]["kwargs"], **kwargs}})
        with pytest.raises(SchemaError, match=field):
            check_run_config(bad)
