"""The run config's schema (names, types and ranges of every entry) and the size limits it shares with the
command line: a run config that passes ``check_run_config`` builds its model in bounded time and memory.

Every problem is a ``SchemaError`` naming the entry ("network.kwargs.num_layers: must be an integer in
[1, 256], got 100000000"); ``pyddpm.store`` reports it as a corrupted run config.
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import torch

from .config import TrainConfig
from .families import model_family
from .nets import NETWORKS, build_network
from .nets.fc import MAX_INPUT_FREQUENCIES
from .schedules import SCHEDULES, VARIANCES

MAX_T = 100_000  # diffusion steps
MAX_WIDTH = 8192  # hidden units of a layer, feature channels of a level, time-embedding size
MAX_DEPTH = 256  # hidden layers of the fc network
MAX_LEVELS = 8  # resolution levels of a U-Net
MAX_RES_BLOCKS = 16  # residual blocks per level (unet-ddpm)
MAX_SAMPLE_NUMEL = 2**20  # numbers in one sample (1024 x 1024 pixels)
MAX_PARAMETERS = 2**28  # network parameters: 1 GiB of float32 weights (4 GiB with EMA and AdamW state)
MAX_NUM_TRAIN = 10_000_000  # training examples
MAX_SAMPLES = 1_000_000  # samples drawn by one command
MAX_EPOCHS = 1000  # passes over a training set (the classifier, the course's exercise)
MAX_SEED = 2**63 - 1


class SchemaError(ValueError):
    """An entry of a run config (or of a checkpoint's training state) with the wrong name, type or range."""


def _int(where: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SchemaError(f"{where}: must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _float(where: str, value, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise SchemaError(f"{where}: must be a finite number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _choice(where: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SchemaError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _dict(where: str, value) -> dict:
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: must be an object, got {type(value).__name__}")
    return value


def _entry(where: str, obj: dict, key: str):
    if key not in obj:
        raise SchemaError(f"{where}.{key}: missing" if where else f"{key}: missing")
    return obj[key]


def _int_list(where: str, value, length: tuple[int, int], hi: int) -> list[int]:
    if not isinstance(value, list) or not length[0] <= len(value) <= length[1]:
        raise SchemaError(f"{where}: must be a list of {length[0]} to {length[1]} integers, got {value!r:.80}")
    for i, v in enumerate(value):
        _int(f"{where}[{i}]", v, 1, hi)
    return value


def _check_diffusion(diffusion) -> None:
    _dict("diffusion", diffusion)
    _int("diffusion.T", _entry("diffusion", diffusion, "T"), 1, MAX_T)
    _choice("diffusion.schedule", _entry("diffusion", diffusion, "schedule"), SCHEDULES)
    beta_1 = _float("diffusion.beta_1", _entry("diffusion", diffusion, "beta_1"), 0.0, 1.0)
    beta_T = _float("diffusion.beta_T", _entry("diffusion", diffusion, "beta_T"), 0.0, 1.0)
    if diffusion["schedule"] == "linear" and not 0.0 < beta_1 <= beta_T < 1.0:
        raise SchemaError(f"diffusion.beta_1, beta_T: need 0 < beta_1 <= beta_T < 1, got {beta_1}, {beta_T}")
    _choice("diffusion.variance", _entry("diffusion", diffusion, "variance"), VARIANCES)


def _check_data(data) -> int:
    """The number of values in one sample."""
    _dict("data", data)
    if not isinstance(_entry("data", data, "name"), str):
        raise SchemaError(f"data.name: must be a string, got {data['name']!r}")
    shape = _int_list("data.shape", _entry("data", data, "shape"), (1, 3), MAX_SAMPLE_NUMEL)
    numel = math.prod(shape)
    if numel > MAX_SAMPLE_NUMEL:
        raise SchemaError(f"data.shape: at most {MAX_SAMPLE_NUMEL} values per sample, got {shape}")
    _float("data.center", _entry("data", data, "center"))
    if not _float("data.scale", _entry("data", data, "scale")) > 0:
        raise SchemaError(f"data.scale: must be > 0, got {data['scale']!r}")
    if "image_shape" in data:
        image_shape = _int_list("data.image_shape", data["image_shape"], (3, 3), MAX_SAMPLE_NUMEL)
        if math.prod(image_shape) != numel:
            raise SchemaError(f"data.image_shape: {image_shape} does not hold the {numel} values of data.shape")
    if "value_range" in data:
        value_range = data["value_range"]
        if not isinstance(value_range, list) or len(value_range) != 2:
            raise SchemaError(f"data.value_range: must be [low, high], got {value_range!r:.80}")
        lo, hi = (_float(f"data.value_range[{i}]", v) for i, v in enumerate(value_range))
        if not lo < hi:
            raise SchemaError(f"data.value_range: need low < high, got {value_range}")
    return numel


# bounds of the networks' numeric settings (the constructors check the rest)
_KWARG_BOUNDS = {"input_dim": MAX_SAMPLE_NUMEL, "num_hidden": MAX_WIDTH, "num_layers": MAX_DEPTH,
                 "time_dim": MAX_WIDTH, "num_res_blocks": MAX_RES_BLOCKS, "input_frequencies": MAX_INPUT_FREQUENCIES}


def _check_network(network, data: dict, numel: int) -> None:
    _dict("network", network)
    name = _choice("network.name", _entry("network", network, "name"), tuple(NETWORKS))
    kwargs = _dict("network.kwargs", _entry("network", network, "kwargs"))
    params = inspect.signature(NETWORKS[name]).parameters
    for key in kwargs:
        if key not in params:
            raise SchemaError(f"network.kwargs.{key}: not a setting of the {name} network")
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in kwargs:
            raise SchemaError(f"network.kwargs.{key}: missing")
    for key, hi in _KWARG_BOUNDS.items():
        if key in kwargs:
            _int(f"network.kwargs.{key}", kwargs[key], 1, hi)
    if "channels" in kwargs:
        _int_list("network.kwargs.channels", kwargs["channels"], (1, MAX_LEVELS), MAX_WIDTH)
    if "image_shape" in kwargs:
        shape = _int_list("network.kwargs.image_shape", kwargs["image_shape"], (3, 3), MAX_SAMPLE_NUMEL)
        if shape != data.get("image_shape", shape) or math.prod(shape) != numel:
            raise SchemaError(f"network.kwargs.image_shape: {shape} does not match the data's shape {data['shape']}")
    if "input_dim" in kwargs and kwargs["input_dim"] != numel:
        raise SchemaError(f"network.kwargs.input_dim: {kwargs['input_dim']} does not match the data's "
                          f"{numel} values per sample")
    if "dropout" in kwargs:
        _float("network.kwargs.dropout", kwargs["dropout"], 0.0, 0.999)
    if "input_max_period" in kwargs:
        _float("network.kwargs.input_max_period", kwargs["input_max_period"], 1e-6)
    for key in ("activation", "time_embedding", "input_embedding"):
        if key in kwargs and not isinstance(kwargs[key], str):
            raise SchemaError(f"network.kwargs.{key}: must be a string, got {kwargs[key]!r}")
    if "attention" in kwargs and not isinstance(kwargs["attention"], bool):
        raise SchemaError(f"network.kwargs.attention: must be true or false, got {kwargs['attention']!r}")


_BASELINE_BOUNDS = {"dim": MAX_SAMPLE_NUMEL, "hidden": MAX_WIDTH, "latent_dim": MAX_WIDTH,
                    "num_hidden_layers": MAX_DEPTH, "num_couplings": MAX_DEPTH}


def _check_baseline(model) -> None:
    """The ``model`` entry of a baseline run (``pyddpm.baselines``): settings its class takes, sizes in bounds."""
    _dict("model", model)
    name = _entry("model", model, "name")
    try:
        cls = model_family(name)
    except ValueError as err:
        raise SchemaError(f"model.name: {err}") from None
    kwargs = _dict("model.kwargs", _entry("model", model, "kwargs"))
    params = inspect.signature(cls).parameters
    for key, value in kwargs.items():
        if key not in params:
            raise SchemaError(f"model.kwargs.{key}: not a setting of the {name} baseline")
        if key in _BASELINE_BOUNDS:
            _int(f"model.kwargs.{key}", value, 1, _BASELINE_BOUNDS[key])
        elif isinstance(value, float):
            _float(f"model.kwargs.{key}", value)
    hidden = kwargs.get("hidden", 1)
    networks = max(kwargs.get("num_couplings", 1), 2)  # a flow's coupling nets, or a VAE's encoder and decoder
    lower_bound = hidden * hidden * (kwargs.get("num_hidden_layers", 1) - 1) * networks
    if lower_bound > MAX_PARAMETERS:
        raise SchemaError(f"model.kwargs: at least {lower_bound} parameters, more than the limit of {MAX_PARAMETERS}")


def count_parameters(name: str, kwargs: dict) -> int:
    """The number of parameters of the network ``build_network(name, **kwargs)`` would build, counted on the meta
    device (no memory); ValueError for settings the network refuses."""
    with torch.device("meta"):
        network = build_network(name, **kwargs)
    return sum(p.numel() for p in network.parameters())


def _annotation_types(annotation: str) -> tuple[type, ...]:
    names = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
             "list[int]": (list,)}
    return tuple(t for part in annotation.split("|") for t in names[part.strip()])


def _check_train(train) -> None:
    """Types of the training settings present (older runs may lack newer ones: they get TrainConfig's default)."""
    _dict("train", train)
    for field in dataclasses.fields(TrainConfig):
        if field.name not in train:
            continue
        value, where = train[field.name], f"train.{field.name}"
        types = _annotation_types(field.type)
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise SchemaError(f"{where}: must be {field.type}, got {value!r:.80}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(f"{where}: must be finite, got {value!r}")
        if isinstance(value, list):
            _int_list(where, value, (1, MAX_LEVELS), MAX_WIDTH)


def check_run_config(config) -> dict:
    """``config`` after checking every entry that rebuilds the model and resumes training; SchemaError names the
    first bad entry. Includes the network's size (at most ``MAX_PARAMETERS`` parameters)."""
    _dict("config", config)
    data = _entry("", config, "data")
    numel = _check_data(data)
    if "train" in config:  # absent from imported runs (they cannot be resumed)
        _check_train(config["train"])
    if "model" in config:  # a baseline run
        _check_baseline(config["model"])
        return config
    _check_diffusion(_entry("", config, "diffusion"))
    network = _entry("", config, "network")
    _check_network(network, data, numel)
    try:
        n = count_parameters(network["name"], network["kwargs"])
    except (ValueError, TypeError) as err:
        raise SchemaError(f"network.kwargs: {err}") from None
    if n > MAX_PARAMETERS:
        raise SchemaError(f"network.kwargs: {n} parameters, more than the limit of {MAX_PARAMETERS}")
    return config


def check_train_state(state) -> dict:
    """The JSON training state of a checkpoint after checking the types and ranges of its entries (an imported
    run has only a step; resuming needs the rest, and ``pyddpm.train`` names what is missing)."""
    _dict("state", state)
    _int("state.step", state.get("step", 0), 0, 2**62)
    _int("state.world", state.get("world", 1), 1, 2**16)
    _int("state.ema_updates", state.get("ema_updates", 0), 0, 2**62)
    _float("state.train_seconds", state.get("train_seconds", 0.0), 0.0)
    if "optimizer" in state:
        optimizer = _dict("state.optimizer", state["optimizer"])
        groups = _entry("state.optimizer", optimizer, "param_groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise SchemaError("state.optimizer.param_groups: must be a list of objects")
        _dict("state.optimizer.scalars", _entry("state.optimizer", optimizer, "scalars"))
    return state
