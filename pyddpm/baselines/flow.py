"""A RealNVP-style normalizing flow (Dinh et al. 2017): exact log-likelihood by the change of variables.

    z = f(x) = (c_L o a_L o ... o c_1 o a_1 o g)(x),  z ~ N(0, I),
    log p(x) = log N(f(x); 0, I) + log |det df/dx|                        (eq. 3 of Dinh et al.),

g the optional logit pre-transform of pixel data (sec. 4.1), a_l an actnorm (Kingma & Dhariwal 2018,
initialised from the first training batch), c_l an affine coupling layer (eqs. 4-6, 9):

    y_a = x_a,  y_b = x_b * exp(s(x_a)) + t(x_a),  log |det| = sum s(x_a),

with s, t from one MLP on the conditioning part x_a, s soft-bounded to (-scale_bound, scale_bound) for
stability, and the parts a / b swapping from one layer to the next (masks: checkerboard or halves).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..nets.fc import ACTIVATIONS
from . import checks
from .layers import mlp, soft_bound, standard_normal
from .pixels import SUPPORT

MASKS = ("checkerboard", "half")
NORMS = ("actnorm", "none")
PRETRANSFORMS = ("none", "logit")
_LOG_2PI = math.log(2 * math.pi)
_RANGE_SLACK = 1e-4  # float32 dequantisation can land a few ulps past 1 + 2/255; the logit is finite there


def coupling_mask(dim: int, kind: str, image_shape=None) -> torch.Tensor:
    """The first layer's conditioning part as a bool mask of shape (dim,) (True: passed through unchanged).

    ``checkerboard``: (c + i + j) even on an image_shape (C, H, W) or (H, W) grid, else even flat indices
    (for 2-D data: x_1 conditions x_2, then the reverse); ``half``: the first dim // 2 values.
    """
    if kind == "half":
        return torch.arange(dim) < dim // 2
    if image_shape is None:
        return torch.arange(dim) % 2 == 0
    grids = torch.meshgrid(*(torch.arange(s) for s in image_shape), indexing="ij")
    return (sum(grids) % 2 == 0).flatten()


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale) per dimension, log |det| = sum log_scale (Kingma & Dhariwal 2018, sec. 3.1).

    Data-dependent initialisation: a forward in training mode while bias and log_scale still hold their starting
    zeros sets them so that batch's output has zero mean and unit variance. Keyed on the parameters, not a flag,
    so an EMA copy (which averages parameters only), a loaded model and eval mode never re-initialise. Under DDP,
    run one training forward before wrapping the model, so that every rank gets rank 0's initialisation.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self._checked = False  # needs_init() was False once: skip the (device-syncing) check from then on

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        if x.shape[0] < 2:
            raise ValueError(f"ActNorm initialises from its first batch, which needs >= 2 examples, got {x.shape[0]}")
        self.bias.copy_(-x.mean(0))
        self.log_scale.copy_(-x.std(0).clamp_min(1e-6).log())

    def needs_init(self) -> bool:
        """Whether the next forward in training mode initialises from its batch (the parameters are untouched)."""
        return not (self.bias.any() or self.log_scale.any())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self._checked:
            if self.needs_init():
                self._initialize(x)
            self._checked = True
        return (x + self.bias) * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y * (-self.log_scale).exp() - self.bias, (-self.log_scale.sum()).expand(y.shape[0])


class AffineCoupling(nn.Module):
    """y_a = x_a, y_b = x_b exp(s(x_a)) + t(x_a) (Dinh et al. eqs. 4-6), s = scale_bound tanh(s_raw / scale_bound).

    The MLP's last layer starts at zero, so the layer starts as the identity.
    """

    def __init__(self, mask: torch.Tensor, hidden: int, num_hidden_layers: int, activation: str, scale_bound: float):
        super().__init__()
        self.register_buffer("index_a", mask.nonzero().flatten(), persistent=False)
        self.register_buffer("index_b", (~mask).nonzero().flatten(), persistent=False)
        self.scale_bound = scale_bound
        self.net = mlp(len(self.index_a), hidden, num_hidden_layers, 2 * len(self.index_b), activation)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, t = self.net(x_a).to(x_a.dtype).chunk(2, dim=1)  # under autocast the MLP runs in low precision
        return soft_bound(s_raw, self.scale_bound), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(x[:, self.index_a])
        y_b = x[:, self.index_b] * s.exp() + t  # eq. 5
        return x.index_copy(1, self.index_b, y_b), s.sum(1)  # eq. 6

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(y[:, self.index_a])
        x_b = (y[:, self.index_b] - t) * (-s).exp()  # eq. 9
        return y.index_copy(1, self.index_b, x_b), -s.sum(1)


class LogitTransform(nn.Module):
    """w = logit(alpha + (1 - 2 alpha) (x - low) / (high - low)) on the dequantised pixel support
    [low, high) = [-1, 1 + 2/255) (Dinh et al. sec. 4.1, with x rescaled from model space to [0, 1)).

    log |dw/dx| = sum [log(1 - 2 alpha) - log(high - low) - log p - log(1 - p)], p = alpha + (1 - 2 alpha) s.
    """

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.low, self.high = SUPPORT

    def _const(self) -> float:
        return math.log(1 - 2 * self.alpha) - math.log(self.high - self.low)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.numel() and (x.min() < self.low - _RANGE_SLACK or x.max() > self.high + _RANGE_SLACK):
            raise ValueError(f"RealNVP with the logit pre-transform needs x in the dequantised pixel range "
                             f"[{self.low}, {self.high:.6f}], got [{float(x.min()):.6g}, {float(x.max()):.6g}]")
        p = self.alpha + (1 - 2 * self.alpha) * (x - self.low) / (self.high - self.low)
        log_det = (self._const() - p.log() - torch.log1p(-p)).sum(1)
        return p.log() - torch.log1p(-p), log_det

    def inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(w)
        x = self.low + (p - self.alpha) / (1 - 2 * self.alpha) * (self.high - self.low)
        log_det = (nn.functional.logsigmoid(w) + nn.functional.logsigmoid(-w) - self._const()).sum(1)
        return x, log_det


class RealNVP(nn.Module):
    """A RealNVP flow on flat model-space data with a standard normal base (module docstring).

    Args:
        dim: data dimension D (2 for the toy sets, 784 for MNIST).
        num_couplings: number of affine coupling layers (each preceded by an actnorm when norm="actnorm").
        hidden: units per hidden layer of each coupling MLP.
        num_hidden_layers: hidden layers per coupling MLP (0: s and t are affine in x_a).
        activation: one of ``pyddpm.nets.fc.ACTIVATIONS``.
        mask: ``"checkerboard"`` or ``"half"`` (``coupling_mask``); layers alternate the mask and its complement.
        image_shape: (C, H, W) or (H, W) of the flat data for the checkerboard, None for vectors.
        norm: ``"actnorm"`` or ``"none"``.
        pretransform: ``"none"`` or ``"logit"`` (pixel data in [-1, 1 + 2/255), ``LogitTransform``).
        alpha: the logit pre-transform's alpha (Dinh et al.: 0.05).
        scale_bound: bound on each coupling's log-scale s.
    """

    def __init__(self, dim: int = 2, num_couplings: int = 8, hidden: int = 128, num_hidden_layers: int = 2,
                 activation: str = "relu", mask: str = "checkerboard", image_shape=None, norm: str = "actnorm",
                 pretransform: str = "none", alpha: float = 0.05, scale_bound: float = 2.0):
        super().__init__()
        owner = "RealNVP"
        checks.positive_int(owner, "dim", dim, minimum=2)
        checks.positive_int(owner, "num_couplings", num_couplings)
        checks.mlp_settings(owner, hidden, num_hidden_layers, activation, ACTIVATIONS)
        checks.choice(owner, "mask", mask, MASKS)
        checks.choice(owner, "norm", norm, NORMS)
        checks.choice(owner, "pretransform", pretransform, PRETRANSFORMS)
        checks.positive_float(owner, "alpha", alpha, upper=0.5)
        checks.positive_float(owner, "scale_bound", scale_bound)
        if image_shape is not None:
            if not isinstance(image_shape, (list, tuple)) or len(image_shape) not in (2, 3) or any(
                    isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape) \
                    or math.prod(image_shape) != dim:
                raise ValueError(f"RealNVP: image_shape must be (C, H, W) or (H, W) of positive integers with "
                                 f"product dim = {dim}, got {image_shape!r}")
            image_shape = list(image_shape)
        self.config = {"dim": dim, "num_couplings": num_couplings, "hidden": hidden,
                       "num_hidden_layers": num_hidden_layers, "activation": activation, "mask": mask,
                       "image_shape": image_shape, "norm": norm, "pretransform": pretransform, "alpha": alpha,
                       "scale_bound": scale_bound}
        self.dim = dim
        self.pretransform = LogitTransform(alpha) if pretransform == "logit" else None
        first = coupling_mask(dim, mask, image_shape)
        layers: list[nn.Module] = []
        for index in range(num_couplings):
            if norm == "actnorm":
                layers.append(ActNorm(dim))
            part_a = first if index % 2 == 0 else ~first
            layers.append(AffineCoupling(part_a, hidden, num_hidden_layers, activation, scale_bound))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z = f(x), log |det df/dx|) for x of shape (batch, dim): data -> base."""
        log_det = x.new_zeros(x.shape[0])
        steps = ([self.pretransform] if self.pretransform is not None else []) + list(self.layers)
        for step in steps:
            x, term = step(x)
            log_det = log_det + term
        return x, log_det

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x = f^-1(z), log |det df^-1/dz|) for z of shape (batch, dim): base -> data."""
        log_det = z.new_zeros(z.shape[0])
        steps = ([self.pretransform] if self.pretransform is not None else []) + list(self.layers)
        for step in reversed(steps):
            z, term = step.inverse(z)
            log_det = log_det + term
        return z, log_det

    def negative_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) per example in nats of model space (eq. 3 of Dinh et al.), in the parameters' dtype."""
        z, log_det = self(checks.flat_batch("RealNVP", x, self.dim))
        return 0.5 * (z.pow(2).sum(1) + self.dim * _LOG_2PI) - log_det

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``negative_log_likelihood`` over the batch (maximum likelihood training)."""
        return self.negative_log_likelihood(x).mean()

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log p(x) per example in nats of model space, float64 (pixels: pass them dequantised and
        turn this into bits/dim with ``pyddpm.baselines.bits_per_dim``)."""
        return -self.negative_log_likelihood(x).double()

    @torch.no_grad()
    def sample(self, shape, seed: int | None = None, sample_offset: int = 0) -> torch.Tensor:
        """x = f^-1(z), z ~ N(0, I), of ``shape`` = (n, *sample_shape); with a seed z is pyddpm's Philox noise at
        step 0 for samples sample_offset .. sample_offset + n - 1, the DDPM's x_T for the same seed
        (``layers.standard_normal``)."""
        shape = checks.sample_shape("RealNVP", shape, self.dim)
        like = next(self.parameters())
        z = standard_normal((shape[0], self.dim), seed, 0, like, sample_offset)
        return self.inverse(z)[0].reshape(shape)
