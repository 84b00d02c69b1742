"""Sample quality of images in a classifier's feature space: Frechet distance, label histogram, confidence.

The Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, as FID but with
pyddpm's own classifier, see ``classifier``):

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2}),

where tr((S_1 S_2)^{1/2}) is computed as the trace of the square root of the symmetric PSD matrix
S_1^{1/2} S_2 S_1^{1/2} (same eigenvalues), from symmetric eigendecompositions in float64.
"""
from __future__ import annotations

import torch


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of features of shape (n, d), float64."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (n >= 2, d), got {tuple(features.shape)}")
    features = features.double()
    return features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues set to 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """The squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, sigma1, mu2, sigma2 = (v.double() for v in (mu1, sigma1, mu2, sigma2))
    root1 = _psd_sqrt(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * cross
    return float(value.clamp(min=0))


def label_histogram(probabilities: torch.Tensor) -> list[float]:
    """Fraction of images the classifier assigns to each class (argmax), the samples' mode coverage."""
    counts = torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1])
    return (counts.double() / probabilities.shape[0]).tolist()


def quality_metrics(features: torch.Tensor, probabilities: torch.Tensor,
                    reference: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Frechet distance to the ``reference`` statistics, label histogram, its total-variation distance to
    uniform, and the mean confidence (max class probability) of one image set's classifier outputs."""
    histogram = label_histogram(probabilities)
    uniform = 1.0 / len(histogram)
    return {
        "frechet_distance": frechet_distance(*gaussian_statistics(features), *reference),
        "label_histogram": histogram,
        "label_tv_from_uniform": 0.5 * sum(abs(h - uniform) for h in histogram),
        "mean_confidence": float(probabilities.max(1).values.mean()),
    }
