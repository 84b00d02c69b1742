"""Sample-quality metrics of the 2-D toy data sets against their true distributions."""
from __future__ import annotations

import math

import torch

from ..data.toy import Chequerboard, TwoGaussians

LOG_DENSITY_FLOOR = math.log(1e-4)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """The energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between two samples (V-statistic)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def toy_metrics(distribution, samples: torch.Tensor, *, seed: int = 0, energy_samples: int = 4000) -> dict:
    """Metrics of ``samples`` (data space, shape (n, 2)) against the true ``distribution``.

    Always: ``mean_log_prob`` (the mean true log-density of the samples, each floored at log 1e-4 so points
    off the support count as a fixed penalty), ``energy_distance`` to fresh true samples and its floor
    ``energy_distance_floor`` (the same statistic between two true samples of the same size).
    Chequerboard: ``support_fraction`` and ``square_mass`` (fraction of samples in each of the 5 squares).
    TwoGaussians: ``mixture_weights`` (mean posterior responsibility of each component, true 0.2 / 0.8).
    """
    samples = samples.detach().double().cpu()
    if samples.dim() != 2 or samples.shape[1] != 2:
        raise ValueError(f"toy samples must have shape (n, 2), got {tuple(samples.shape)}")
    generator = torch.Generator().manual_seed(seed)
    n = min(energy_samples, samples.shape[0])
    truth_a = distribution.sample(n, generator=generator).double()
    truth_b = distribution.sample(n, generator=generator).double()
    finite = torch.isfinite(samples).all(1)
    log_prob = torch.full((samples.shape[0],), LOG_DENSITY_FLOOR, dtype=torch.float64)
    log_prob[finite] = distribution.log_prob(samples[finite]).clamp(min=LOG_DENSITY_FLOOR)
    metrics = {
        "num_samples": samples.shape[0],
        "mean_log_prob": float(log_prob.mean()),
        "true_mean_log_prob": float(distribution.log_prob(truth_a).clamp(min=LOG_DENSITY_FLOOR).mean()),
        "energy_distance": energy_distance(samples[:n][finite[:n]], truth_a),
        "energy_distance_floor": energy_distance(truth_b, truth_a),
        "non_finite_samples": int((~finite).sum()),
    }
    if isinstance(distribution, Chequerboard):
        index = distribution.square_index(samples[finite])
        metrics["support_fraction"] = float((index >= 0).sum()) / samples.shape[0]
        metrics["square_mass"] = [float((index == k).sum()) / samples.shape[0] for k in range(len(distribution.squares))]
    if isinstance(distribution, TwoGaussians):
        responsibilities = torch.softmax(distribution.component_log_probs(samples[finite]), dim=1)
        metrics["mixture_weights"] = responsibilities.mean(0).tolist()
    return metrics
