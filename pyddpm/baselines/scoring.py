"""Test-set likelihoods of a trained baseline, on the same footing as the DDPM's: bits/dim of 8-bit test images
(``pixels.bits_per_dim``) and the negative log-likelihood of toy test points in nats of data space.

The flow's figures are exact log-densities (the images dequantised once with seeded uniform noise); the VAE's are
the importance-weighted bound IWAE_K (Burda et al. eq. 8), reported for K = 1 (the ELBO) and a larger K.
"""
from __future__ import annotations

import math
import time

import torch

from ..data import DataTransform
from ..evaluate.likelihood import bits_per_dim, dequantize_once
from .vae import VAE


def estimators(model, K: int) -> list[tuple[str, int | None]]:
    """(name, K) of each log-likelihood figure a baseline reports: the flow's exact one, the VAE's IWAE_1, IWAE_K."""
    if isinstance(model, VAE):
        return [("IWAE K = 1 (the ELBO)", 1), (f"IWAE K = {K}", K)] if K > 1 else [("IWAE K = 1 (the ELBO)", 1)]
    return [("exact (change of variables)", None)]


@torch.no_grad()
def log_likelihood(model, x: torch.Tensor, K: int | None, *, seed: int, batch_size: int) -> torch.Tensor:
    """log p(x) per example in nats of model space (float64, on the CPU), ``batch_size`` examples at a time: the
    flow's exact value (K None) or the VAE's IWAE_K with its noise from a generator seeded by ``seed``."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    parts = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size].to(device)
        value = model.log_likelihood(batch) if K is None else model.log_likelihood(batch, K, generator)
        parts.append(value.double().cpu())
    return torch.cat(parts)


def _mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else math.nan


def image_bits_per_dim(model, pixels: torch.Tensor, *, K: int, seed: int, batch_size: int) -> dict:
    """Bits/dim of uint8 test images (n, ...) +- the standard error over images, per estimator (``estimators``).

    The images are dequantised once, x = 2 (k + u) / 255 - 1 with u ~ U[0, 1) from ``seed``, and each figure is
    (-log p(x) / D + log(255/2)) / log 2 (``pixels.bits_per_dim``): for the flow an upper bound on -log2 P(k) / D
    (the dequantisation gap), for the VAE's discretised decoder its IWAE bound on -log2 P(k) / D itself.
    """
    start = time.perf_counter()
    n, dims = pixels.shape[0], pixels[0].numel()
    x = dequantize_once(pixels, seed).float().reshape(n, -1)
    rows = []
    for name, k in estimators(model, K):
        bpd, error = _mean_and_error(bits_per_dim(log_likelihood(model, x, k, seed=seed, batch_size=batch_size),
                                                  dims))
        rows.append({"estimator": name, "K": k, "bits_per_dim": bpd, "standard_error": error})
    return {**{k: rows[-1][k] for k in ("bits_per_dim", "standard_error")}, "estimates": rows, "test_images": n,
            "seed": seed, "seconds": round(time.perf_counter() - start, 2),
            "convention": "pixels dequantised once, x = 2(k + u)/255 - 1; bits/dim = (-log p(x)/D + log(255/2)) / "
                          "log 2, the DDPM bound's pixels and bin width 2/255"}


def toy_negative_log_likelihood(model, points: torch.Tensor, data_config: dict, *, K: int, seed: int,
                                batch_size: int) -> dict:
    """-log p(x) in nats of data space (mean +- standard error) of toy test points x (data space, (n, 2)), per
    estimator: the model-space figure minus D log(scale), the change of variables of the run's DataTransform."""
    start = time.perf_counter()
    transform = DataTransform(data_config["center"], data_config["scale"])
    dims = points[0].numel()
    x = transform.to_model(points.float())
    rows = []
    for name, k in estimators(model, K):
        nll = -log_likelihood(model, x, k, seed=seed, batch_size=batch_size) - dims * math.log(transform.scale)
        mean, error = _mean_and_error(nll)
        rows.append({"estimator": name, "K": k, "nats": mean, "standard_error": error})
    return {**{k: rows[-1][k] for k in ("nats", "standard_error")}, "estimates": rows, "test_points": len(points),
            "seed": seed, "seconds": round(time.perf_counter() - start, 2)}
