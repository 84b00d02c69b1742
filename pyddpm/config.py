"""Every setting of a training run and its defaults, in one place (``TrainConfig``), and the run config that
rebuilds a trained model from them. The command line reads these defaults; it never restates them."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from . import __version__
from .data import IMAGE_DATASETS, canonical_name, data_config_entries, is_toy
from .nets import DEFAULT_CHANNELS, NETWORKS

TOY_DATA_SCALE = 64.0
# toy-data defaults of settings whose TrainConfig default is None (resolved per data set; images: the exercise's)
TOY_DEFAULTS = {"input_embedding": "fourier", "low_t_share": 0.5}
IMAGE_DEFAULTS = {"batch_size": 128, "epochs": 20}  # toy defaults are TrainConfig's
NET_DEFAULT_LR = {"unet-ddpm": 2e-4}  # Ho et al.'s rate for their U-Net; 1e-3 (TrainConfig's) otherwise
LR_SCHEDULES = ("cosine", "constant")
# settings added after runs were first written, with the value a run stored without them was trained with (their
# TrainConfig default may differ): resuming such a run rebuilds the network it has
LEGACY_SETTINGS = {"input_embedding": "none", "low_t_share": 0.0}
# settings of the DDPM and its networks, left out of a baseline run's config (``run_config(..., model=...)``)
DDPM_SETTINGS = ("net", "hidden", "depth", "activation", "time_embedding", "input_embedding", "input_frequencies",
                 "input_max_period", "low_t_share", "low_t_range", "channels", "num_res_blocks", "dropout",
                 "attention", "T", "schedule", "beta_1", "beta_T", "variance", "grid_steps", "tune_steps")


@dataclass
class TrainConfig:
    """Every setting of a training run; stored in the run's config so a run can be rebuilt and resumed."""

    data: str = "chequerboard"
    data_dir: str | None = None
    download: bool = False
    net: str = "fc"
    hidden: int = 256
    depth: int = 4
    activation: str = "silu"
    time_embedding: str = "sinusoidal"
    input_embedding: str | None = None  # fc: "fourier" adds sin/cos features of x; None: fourier for toy data
    input_frequencies: int = 8  # fc, fourier: octaves of the features
    input_max_period: float = 64.0  # fc, fourier: their longest period, in model-space units
    channels: list[int] | None = None
    num_res_blocks: int = 2
    dropout: float = 0.1
    attention: bool = True
    T: int = 1000
    schedule: str = "linear"
    beta_1: float = 1e-4
    beta_T: float = 2e-2
    variance: str = "beta"
    data_scale: float | None = None
    num_train: int = 1_000_000
    epochs: int = 16
    batch_size: int = 1000
    lr: float = 1e-3
    low_t_share: float | None = None  # share of t drawn from 1..low_t_range*T instead of 1..T; None: 0.5 toy, 0 images
    low_t_range: float = 0.2
    weight_decay: float = 0.0
    warmup: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    checkpoint_every: int = 1000
    max_steps: int | None = None
    num_samples: int = 5000
    grid_samples: int = 64
    grid_steps: int = 0  # network calls of the default sampler for the per-epoch grids (0: its default count)
    tune_steps: bool = False  # choose the default sampler's time steps for the trained weights (pyddpm.step_tuning)
    amp: bool | None = None
    compile: bool = False
    precision: str = "fp32"  # bf16: autocast training (unless amp says otherwise) and bf16 sampling
    fast: bool = True  # train and sample the network's fast copy (pyddpm.fast_network); False: as built

    def resolved_scale(self) -> float:
        """The data scale: as given, else 64 for the toy sets (measured: docs/course.md) and 2 for images."""
        if self.data_scale is not None:
            return self.data_scale
        return TOY_DATA_SCALE if is_toy(self.data) else 2.0

    def resolved_input_embedding(self) -> str:
        """FcNetwork's input embedding: as given, else fourier for the toy data (measured on the
        chequerboard's sharp edges) and none for images (the exercise's network)."""
        if self.input_embedding is not None:
            return self.input_embedding
        return TOY_DEFAULTS["input_embedding"] if is_toy(self.data) and self.net == "fc" else "none"

    def resolved_low_t_share(self) -> float:
        """The share of each batch trained at t <= low_t_range T: as given, else 0.5 for the toy data (measured
        on the chequerboard with the Fourier input embedding) and 0 for images (Algorithm 1's uniform t)."""
        if self.low_t_share is not None:
            return self.low_t_share
        return TOY_DEFAULTS["low_t_share"] if is_toy(self.data) else 0.0

    def resolve_defaults(self) -> "TrainConfig":
        """This config with the data-dependent defaults above written in (so a run's stored config states them)."""
        self.input_embedding = self.resolved_input_embedding()
        self.low_t_share = self.resolved_low_t_share()
        return self


def network_settings(cfg: TrainConfig, data: dict) -> dict:
    """The ``{"name", "kwargs"}`` entry of the run config that rebuilds the network for the ``data`` config."""
    if cfg.net == "fc":
        kwargs = dict(input_dim=math.prod(data["shape"]), num_hidden=cfg.hidden, num_layers=cfg.depth,
                      activation=cfg.activation, time_embedding=cfg.time_embedding)
        if cfg.resolved_input_embedding() != "none":  # left out otherwise: as configs written before the option
            kwargs.update(input_embedding=cfg.resolved_input_embedding(), input_frequencies=cfg.input_frequencies,
                          input_max_period=cfg.input_max_period)
    elif cfg.net in DEFAULT_CHANNELS:
        if "image_shape" not in data:
            raise ValueError(f"--net {cfg.net} needs image data (--data {' or '.join(IMAGE_DATASETS)}), "
                             f"not {data['name']}")
        kwargs = dict(channels=list(cfg.channels or DEFAULT_CHANNELS[cfg.net]), image_shape=data["image_shape"])
        if cfg.net == "unet-ddpm":
            kwargs.update(num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout, attention=cfg.attention)
    else:
        raise ValueError(f"unknown network {cfg.net!r}; choose one of {', '.join(NETWORKS)}")
    return {"name": cfg.net, "kwargs": kwargs}


def run_config(cfg: TrainConfig, train_data: torch.Tensor, model: dict | None = None) -> dict:
    """The JSON config of a run: enough to rebuild the model and map samples back to data space.

    ``model`` None: a DDPM run (``diffusion`` and ``network`` entries). Else a baseline's ``{"name", "kwargs"}``
    (``pyddpm.baselines.build_baseline``), stored as the ``model`` entry in their place, the DDPM's settings
    (``DDPM_SETTINGS``) left out of ``train``."""
    data = {"name": canonical_name(cfg.data), "shape": list(train_data.shape[1:]), "center": 0.5,
            "scale": cfg.resolved_scale(), **data_config_entries(cfg.data)}
    if model is not None:
        train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in DDPM_SETTINGS}
        return {"pyddpm_version": __version__, "model": model, "data": data, "train": train}
    return {
        "pyddpm_version": __version__,
        "diffusion": {"T": cfg.T, "schedule": cfg.schedule, "beta_1": cfg.beta_1, "beta_T": cfg.beta_T,
                      "variance": cfg.variance},
        "network": network_settings(cfg, data),
        "data": data,
        "train": dataclasses.asdict(cfg),
    }
