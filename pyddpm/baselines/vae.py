"""A variational autoencoder (Kingma & Welling 2014) with a Gaussian latent and the IWAE bound (Burda et al. 2016).

    q(z | x) = N(mu(x), diag sigma^2(x)),  p(z) = N(0, I),  p(x | z) = decoder,
    ELBO(x)   = E_q[log p(x | z)] - KL(q(z | x) || p(z))                   (Kingma & Welling eq. 3, KL of app. B),
    IWAE_K(x) = E[log 1/K sum_k p(x, z_k) / q(z_k | x)], z_k ~ q(z | x)   (Burda et al. eq. 8),

with ELBO = IWAE_1 <= IWAE_K <= IWAE_K' <= log p(x) for K <= K' (Burda et al. thm. 1). Decoders:

- ``"gaussian"`` (toy data): p(x | z) = N(x; m(z), diag s^2(z)), a density of model space.
- ``"discretized"`` (pixels): P(k | z) = prod_d int_bin(k_d) N(x; m_d(z), s_d^2(z)) dx, the DDPM's 8-bit decoder
  (``pyddpm.evaluate.likelihood.discretized_gaussian_log_likelihood``, Ho et al. eq. 13): bins of width 2/255
  centred on the grid values x_k = 2 k / 255 - 1, the outermost ones open to -inf / +inf. The encoder and the
  decoder see the pixels k of x (``pixel_grid``: dequantised data and grid values give the same k), so the
  VAE is a model of 8-bit images; ``log_likelihood`` reports the bound on log P(k) as the histogram density
  log P(k) + D log(255/2) of model space, and ``pyddpm.baselines.bits_per_dim`` turns it back into the bound on
  -log2 P(k) / D: the DDPM's bits/dim convention exactly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..evaluate.likelihood import discretized_gaussian_log_likelihood
from ..nets.fc import ACTIVATIONS
from . import checks
from .layers import mlp, soft_bound, standard_normal
from .pixels import BIN_WIDTH, pixel_grid

LIKELIHOODS = ("gaussian", "discretized")
DECODER_VARIANCES = ("network", "learned", "fixed")
LOG_STD_RANGE = (math.log(1e-3), math.log(10.0))  # decoder standard deviations stay in [1e-3, 10]
ENCODER_LOG_VAR_BOUND = 12.0  # |log sigma^2| of q(z | x) soft-bounded, so exp() cannot overflow
_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) per example, summed over the last dimension (Kingma & Welling
    app. B): 1/2 sum (mean^2 + exp(log_var) - 1 - log_var)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1)


def _bounded_log_std(raw: torch.Tensor) -> torch.Tensor:
    low, high = LOG_STD_RANGE
    return low + (high - low) * torch.sigmoid(raw)


def _raw_for_log_std(log_std: float) -> float:
    low, high = LOG_STD_RANGE
    u = (log_std - low) / (high - low)
    return math.log(u / (1 - u))


class VAE(nn.Module):
    """A Gaussian-latent VAE on flat model-space data with MLP encoder and decoder (module docstring).

    Args:
        dim: data dimension D (2 for the toy sets, 784 for MNIST).
        latent_dim: dimension of z.
        hidden: units per hidden layer of the encoder and the decoder.
        num_hidden_layers: hidden layers of each (0: both affine, a linear-Gaussian model).
        activation: one of ``pyddpm.nets.fc.ACTIVATIONS``.
        likelihood: ``"gaussian"`` (continuous data) or ``"discretized"`` (8-bit pixels in [-1, 1]).
        decoder_variance: ``"network"`` (s(z) is a decoder output), ``"learned"`` (one parameter per dimension)
            or ``"fixed"`` (s = decoder_std).
        decoder_std: the decoder's standard deviation s in model space: its value ("fixed") or its starting
            value ("learned", "network"); in [1e-3, 10].
    """

    def __init__(self, dim: int = 2, latent_dim: int = 2, hidden: int = 64, num_hidden_layers: int = 2,
                 activation: str = "relu", likelihood: str = "gaussian", decoder_variance: str = "network",
                 decoder_std: float = 0.1):
        super().__init__()
        owner = "VAE"
        checks.positive_int(owner, "dim", dim)
        checks.positive_int(owner, "latent_dim", latent_dim)
        checks.mlp_settings(owner, hidden, num_hidden_layers, activation, ACTIVATIONS)
        checks.choice(owner, "likelihood", likelihood, LIKELIHOODS)
        checks.choice(owner, "decoder_variance", decoder_variance, DECODER_VARIANCES)
        checks.positive_float(owner, "decoder_std", decoder_std)
        if not LOG_STD_RANGE[0] < math.log(decoder_std) < LOG_STD_RANGE[1]:
            raise ValueError(f"VAE: decoder_std must lie in (1e-3, 10), got {decoder_std!r}")
        self.config = {"dim": dim, "latent_dim": latent_dim, "hidden": hidden,
                       "num_hidden_layers": num_hidden_layers, "activation": activation, "likelihood": likelihood,
                       "decoder_variance": decoder_variance, "decoder_std": decoder_std}
        self.dim, self.latent_dim = dim, latent_dim
        self.likelihood, self.decoder_variance = likelihood, decoder_variance
        self.encoder = mlp(dim, hidden, num_hidden_layers, 2 * latent_dim, activation)
        per_dim = 2 if decoder_variance == "network" else 1
        self.decoder = mlp(latent_dim, hidden, num_hidden_layers, per_dim * dim, activation)
        raw = _raw_for_log_std(math.log(decoder_std))
        if decoder_variance == "network":
            with torch.no_grad():
                self.decoder[-1].bias[dim:] = raw
        elif decoder_variance == "learned":
            self.decoder_raw_std = nn.Parameter(torch.full((dim,), raw))
        else:
            self.fixed_log_std = math.log(decoder_std)

    # ----- the two networks --------------------------------------------------------------------
    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = checks.flat_batch("VAE", x, self.dim)
        return pixel_grid(x).to(x.dtype) if self.likelihood == "discretized" else x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu(x), log sigma^2(x)) of q(z | x), each (batch, latent_dim), for x of shape (batch, dim)."""
        mean, raw = self.encoder(x).to(x.dtype).chunk(2, dim=1)  # float32 out of an autocast MLP
        return mean, soft_bound(raw, ENCODER_LOG_VAR_BOUND)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(z), log s(z)) of p(x | z), each (..., dim), for z of shape (..., latent_dim)."""
        out = self.decoder(z).to(z.dtype)
        if self.decoder_variance == "network":
            mean, raw = out.split(self.dim, dim=-1)
            return mean, _bounded_log_std(raw)
        if self.decoder_variance == "learned":
            return out, _bounded_log_std(self.decoder_raw_std).expand_as(out)
        return out, out.new_full(out.shape, self.fixed_log_std)

    def decoder_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over dimensions, for x (batch, dim) and z (..., batch, latent_dim); for the
        discretised decoder the histogram density log P(k | z) + D log(255/2) (module docstring)."""
        mean, log_std = self.decode(z)
        if self.likelihood == "gaussian":
            return -(0.5 * ((x - mean) * (-log_std).exp()).pow(2) + log_std + 0.5 * _LOG_2PI).sum(-1)
        log_p = discretized_gaussian_log_likelihood(x.expand_as(mean), mean, (2 * log_std).exp()).sum(-1)
        return (log_p - self.dim * math.log(BIN_WIDTH)).to(x.dtype)

    # ----- objectives --------------------------------------------------------------------------
    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The ELBO per example, one reparameterised z ~ q(z | x) and the analytic KL (Kingma & Welling eq. 10)."""
        x = self._inputs(x)
        mean, log_var = self.encode(x)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)  # reparameterisation, eq. 10's g(eps, x)
        return self.decoder_log_prob(x, z) - gaussian_kl(mean, log_var)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean negative ELBO over the batch (nats of model space per example)."""
        return -self.elbo(x).mean()

    def iwae(self, x: torch.Tensor, K: int, generator: torch.Generator | None = None,
             chunk: int = 64) -> torch.Tensor:
        """IWAE_K(x) per example: log 1/K sum_k p(x | z_k) p(z_k) / q(z_k | x), z_k ~ q(z | x) (Burda et al. eq. 8),
        float64; the K samples are drawn ``chunk`` at a time from ``generator`` (on the model's device; torch's
        global one if None)."""
        checks.positive_int("VAE.iwae", "K", K)
        checks.positive_int("VAE.iwae", "chunk", chunk)
        x = self._inputs(x)
        mean, log_var = self.encode(x)
        std = (0.5 * log_var).exp()
        log_w = []
        for start in range(0, K, chunk):
            eps = torch.randn((min(chunk, K - start), *mean.shape), generator=generator, device=mean.device,
                              dtype=mean.dtype)
            z = mean + std * eps
            log_q = -(0.5 * eps.pow(2) + 0.5 * log_var + 0.5 * _LOG_2PI).sum(-1)
            log_prior = -(0.5 * z.pow(2) + 0.5 * _LOG_2PI).sum(-1)
            log_w.append((self.decoder_log_prob(x, z) + log_prior - log_q).double())
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(K)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, K: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """The IWAE_K lower bound on log p(x) per example, nats of model space, float64 (K = 1: the ELBO's
        single-sample estimate); for pixels a bound on the histogram density, see ``pyddpm.baselines.bits_per_dim``."""
        return self.iwae(x, K, generator)

    @torch.no_grad()
    def sample(self, shape, seed: int | None = None, decoder_noise: bool | None = None,
               sample_offset: int = 0) -> torch.Tensor:
        """x ~ p(x | z), z ~ N(0, I), of ``shape`` = (n, *sample_shape). With ``decoder_noise`` False the decoder
        mean m(z) is returned (the default for the discretised decoder, as the DDPM's last step adds no noise;
        True for the Gaussian one; the discretised decoder's mean may lie outside [-1, 1], the outer bins being
        open: clamp it before mapping to pixels). With a seed, z and the decoder noise are pyddpm's Philox noise
        at steps 0 and 1 for samples sample_offset .. sample_offset + n - 1."""
        shape = checks.sample_shape("VAE", shape, self.dim)
        if decoder_noise is None:
            decoder_noise = self.likelihood == "gaussian"
        like = next(self.parameters())
        z = standard_normal((shape[0], self.latent_dim), seed, 0, like, sample_offset)
        mean, log_std = self.decode(z)
        x = mean + log_std.exp() * standard_normal(mean.shape, seed, 1, like, sample_offset) if decoder_noise else mean
        return x.reshape(shape)
