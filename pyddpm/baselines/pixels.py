"""The 8-bit pixel grid in model space, and bits/dim on the same footing as the DDPM's bound.

Model space (``pyddpm.data``): pixel k = 0..255 is dequantised to x = 2 (k + u) / 255 - 1, u ~ U[0, 1), so
pixel k owns the bin [x_k, x_k + 2/255) with x_k = 2 k / 255 - 1, and the bins tile the support
[-1, 1 + 2/255). The DDPM's bound (``pyddpm.evaluate.likelihood``) evaluates its discretised decoder at x_k
with bins of the same width 2/255 centred there, and reports -log2 P(pixels) / D.

A baseline reports a log-density log p(x) of model space. For a density p, the probability of pixels k is
P(k) = int_bin(k) p(x) dx >= (2/255)^D exp(E_u log p(x)) (Jensen; Theis et al. 2016), so

    bits/dim = (-log p(x) / D + log(255 / 2)) / log 2,  x = the dequantised pixels,

averaged over images (and u), bounds -log2 P(k) / D from above, exactly like the DDPM's bound: the same pixels,
the same bin width, the same units. The flow's log p is exact (its bits/dim is exact up to the dequantisation
gap); the VAE's discretised decoder gives P(k) itself, and ``VAE.log_likelihood`` reports it as the histogram
density P(k) (255/2)^D on bin k, so the same formula returns the VAE's -log2 P(k) / D bound with no gap.
"""
from __future__ import annotations

import torch

from ..evaluate.likelihood import BIN_WIDTH, BINS, bits_per_dim

__all__ = ["BIN_WIDTH", "SUPPORT", "bits_per_dim", "pixel_grid"]

SUPPORT = (-1.0, 1.0 + BIN_WIDTH)  # the union of the dequantisation bins [x_k, x_k + 2/255)
_SNAP = 1e-4  # in pixel levels: grid values x_k rounded to float32 (error < 1e-5 levels) stay in bin k


def pixel_grid(x: torch.Tensor) -> torch.Tensor:
    """The grid value x_k = 2 k / 255 - 1 of the bin [x_k, x_k + 2/255) holding each value of x, float64.

    Dequantised pixels and grid values themselves both map to their pixel's x_k (values within 1e-4 of a level
    below a grid point count as that grid point); values outside the support fall in the outermost bins.
    """
    k = torch.floor((x.double() + 1) / BIN_WIDTH + _SNAP).clamp(0, BINS - 1)
    return k * BIN_WIDTH - 1

