"""pyddpm.baselines: the flow's change of variables, the VAE's bounds, short toy training runs, settings."""
import itertools
import json
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyddpm.baselines import (
    BASELINES,
    VAE,
    RealNVP,
    bits_per_dim,
    build_baseline,
    default_kwargs,
    gaussian_kl,
    pixel_grid,
)
from pyddpm.baselines.flow import ActNorm
from pyddpm.baselines.pixels import BIN_WIDTH, SUPPORT
from pyddpm.data import DataTransform, toy_distribution
from pyddpm.ema import EMA
from pyddpm.evaluate.likelihood import (
    discretized_gaussian_log_likelihood,
    pixels_to_model,
)
from pyddpm.philox import philox_normal

# float64 round trips through ~20 layers lose a few ulps per layer: 1e-10 is loose by orders of magnitude and
# still far below the 1e-5; the Jacobian check compares two float64 computations of the same number.
FLOAT64_ATOL = 1e-10


def _randomise(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Every parameter drawn N(0, scale^2): the zero-initialised couplings would otherwise be the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def _pixel_batch(n: int, dim: int, seed: int) -> torch.Tensor:
    """Dequantised random pixels in model space, float64: 2 (k + u) / 255 - 1."""
    generator = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, dim), generator=generator)
    return (k + torch.rand(n, dim, generator=generator, dtype=torch.float64)) * BIN_WIDTH - 1


FLOWS = {
    "2-d": ({"dim": 2, "num_couplings": 6, "hidden": 16}, lambda n: torch.randn(n, 2, dtype=torch.float64)),
    "16-d image, logit": ({"dim": 16, "num_couplings": 4, "hidden": 16, "image_shape": [4, 4], "pretransform": "logit"},
                          lambda n: _pixel_batch(n, 16, 3)),
    "8-d halves": ({"dim": 8, "num_couplings": 3, "hidden": 8, "mask": "half", "activation": "tanh"},
                   lambda n: torch.randn(n, 8, dtype=torch.float64)),
}


def _random_flow(kwargs: dict, data) -> tuple[RealNVP, torch.Tensor]:
    torch.manual_seed(0)
    flow = RealNVP(**kwargs).double()
    _randomise(flow, 0.3, seed=1)
    for layer in flow.layers:
        if isinstance(layer, ActNorm):
            layer.bias.data.zero_()
            layer.log_scale.data.zero_()
    x = data(32)
    flow(x)  # actnorm's data initialisation from this batch
    return flow, x


@pytest.mark.parametrize("case", FLOWS)
def test_flow_inverts(case):
    flow, x = _random_flow(*FLOWS[case])
    z, log_det = flow(x)
    x_back, log_det_inverse = flow.inverse(z)
    assert (z - x).abs().max() > 0.1  # a real transformation, not the identity
    torch.testing.assert_close(x_back, x, atol=FLOAT64_ATOL, rtol=0)
    torch.testing.assert_close(log_det_inverse, -log_det, atol=FLOAT64_ATOL, rtol=0)


@pytest.mark.parametrize("case", FLOWS)
def test_flow_log_det_matches_autograd_jacobian(case):
    flow, x = _random_flow(*FLOWS[case])
    _, log_det = flow(x[:6])
    for i in range(6):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0][0], x[i])
        sign, expected = torch.linalg.slogdet(jacobian)
        assert sign != 0
        torch.testing.assert_close(log_det[i], expected, atol=FLOAT64_ATOL, rtol=0)


def test_one_layer_affine_flow_is_the_closed_form_gaussian():
    """One actnorm + one coupling whose s is constant and t affine: z = A x + m, so x ~ N(-A^-1 m, A^-1 A^-T)."""
    flow = RealNVP(dim=3, num_couplings=1, num_hidden_layers=0, scale_bound=2.0).double()
    generator = torch.Generator().manual_seed(0)
    coupling = flow.layers[1]
    actnorm = flow.layers[0]
    with torch.no_grad():
        actnorm.bias.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
        actnorm.log_scale.copy_(torch.randn(3, generator=generator, dtype=torch.float64) * 0.5)
        linear = coupling.net[0]  # x_a (2) -> (s_raw, t) for x_b (1 + 1)
        linear.weight.copy_(torch.randn(2, 2, generator=generator, dtype=torch.float64))
        linear.weight[0] = 0  # s does not depend on x_a
        linear.bias.copy_(torch.randn(2, generator=generator, dtype=torch.float64))
    a, b = coupling.index_a.tolist(), coupling.index_b.tolist()
    assert (a, b) == ([0, 2], [1])
    weight, bias = linear.weight.detach(), linear.bias.detach()
    coupling_matrix = torch.eye(3, dtype=torch.float64)  # z = C u + (0, t_0, 0) for u = D (x + actnorm bias)
    coupling_matrix[1, 1] = math.exp(2.0 * math.tanh(bias[0].item() / 2.0))  # exp(s), s soft-bounded by 2
    coupling_matrix[1, a] = weight[1]
    D = torch.diag(actnorm.log_scale.detach().exp())
    A = coupling_matrix @ D
    m = A @ actnorm.bias.detach() + torch.tensor([0.0, bias[1].item(), 0.0], dtype=torch.float64)
    A_inv = torch.linalg.inv(A)
    gaussian = MultivariateNormal(-A_inv @ m, A_inv @ A_inv.T)

    x = torch.randn(50, 3, generator=generator, dtype=torch.float64) * 2
    torch.testing.assert_close(flow.log_likelihood(x), gaussian.log_prob(x), atol=FLOAT64_ATOL, rtol=0)
    # sampling: 20000 draws; their mean lies within 4 standard errors of the Gaussian's mean in every coordinate
    samples = flow.sample((20000, 3), seed=5)
    se = gaussian.covariance_matrix.diagonal().sqrt() / math.sqrt(20000)
    assert ((samples.mean(0) - gaussian.mean).abs() < 4 * se).all()


def test_flow_sample_is_seeded_and_batch_independent():
    flow, _ = _random_flow(*FLOWS["2-d"])
    five = flow.sample((5, 2), seed=11)
    # the same noise per sample; the network's float64 matmuls may round differently per batch size
    torch.testing.assert_close(flow.sample((3, 2), seed=11), five[:3], atol=1e-12, rtol=0)
    assert not torch.equal(flow.sample((5, 2), seed=12), five)
    torch.testing.assert_close(five, flow.inverse(philox_normal((5, 2), 11, 0, dtype=torch.float64))[0])
    assert flow.sample((4, 1, 2), seed=0).shape == (4, 1, 2)


def test_actnorm_initialises_once_from_the_first_training_batch():
    """The first training batch comes out standardised; later batches, eval mode and an EMA copy never re-initialise."""
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randn(64, 3, generator=generator) * 5 + 2 for _ in range(2))
    fresh = ActNorm(3).eval()
    torch.testing.assert_close(fresh(first)[0], first)  # eval mode: no initialisation, the identity
    actnorm = ActNorm(3)
    ema = EMA(actnorm, decay=0.9)
    y, log_det = actnorm(first)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det, -first.std(0).log().sum().expand(64))
    ema.update(actnorm)  # the copy averages the parameters, which moves them off their starting zeros
    for module in (actnorm, ema.shadow.train()):
        before = {k: v.clone() for k, v in module.state_dict().items()}
        module(second)
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, before[key], atol=0, rtol=0)


def test_flow_rejects_pixels_outside_the_logit_range():
    flow = RealNVP(dim=4, num_couplings=1, pretransform="logit")
    with pytest.raises(ValueError, match="dequantised pixel range"):
        flow.log_likelihood(torch.full((2, 4), 1.5))


def test_gaussian_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(20, 5, generator=generator, dtype=torch.float64) * 2
    log_var = torch.randn(20, 5, generator=generator, dtype=torch.float64) * 2
    expected = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mean, log_var), expected, atol=1e-12, rtol=1e-12)


def _linear_gaussian_vae(exact_posterior: bool) -> tuple[VAE, MultivariateNormal]:
    """A linear decoder x = W z + b + 0.5 e: p(x) = N(b, W W^T + 0.25 I) in closed form. W = Q diag(d) has
    orthogonal columns, so p(z | x) = N(S W^T (x - b) / 0.25, S), S = (I + W^T W / 0.25)^-1, is diagonal and
    the linear encoder can hold it exactly (``exact_posterior``); otherwise the encoder stays random."""
    vae = VAE(dim=2, latent_dim=2, num_hidden_layers=0, decoder_variance="fixed", decoder_std=0.5).double()
    _randomise(vae, 0.7, seed=2)
    angle, d = 0.6, torch.tensor([1.5, 0.7], dtype=torch.float64)
    Q = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    W, b = Q * d, torch.tensor([0.3, -0.2], dtype=torch.float64)
    S = 1 / (1 + d**2 / 0.25)
    with torch.no_grad():
        vae.decoder[0].weight.copy_(W)
        vae.decoder[0].bias.copy_(b)
        if exact_posterior:
            A = torch.diag(S) @ W.T / 0.25
            vae.encoder[0].weight.copy_(torch.cat([A, torch.zeros(2, 2, dtype=torch.float64)]))
            raw_log_var = 12 * torch.atanh(S.log() / 12)  # inverse of the encoder's soft bound
            vae.encoder[0].bias.copy_(torch.cat([-A @ b, raw_log_var]))
    return vae, MultivariateNormal(b, W @ W.T + 0.25 * torch.eye(2, dtype=torch.float64))


def test_iwae_is_exact_with_the_true_posterior():
    """With q(z | x) = p(z | x) every importance weight is p(x): IWAE_K = log p(x) for every K and draw."""
    vae, marginal = _linear_gaussian_vae(exact_posterior=True)
    x = marginal.sample((40,))
    generator = torch.Generator().manual_seed(0)
    for K in (1, 7, 100):
        torch.testing.assert_close(vae.log_likelihood(x, K=K, generator=generator), marginal.log_prob(x),
                                   atol=1e-10, rtol=0)


def test_elbo_below_iwae_k_below_iwae_larger_k():
    """ELBO <= IWAE_10 <= IWAE_100 <= log p(x) in expectation (Burda et al. thm. 1), on a fixed batch.

    Each estimate is averaged over the batch and R independent repeats. The random encoder is far from the
    posterior, so the bounds are strictly ordered here, and each gap must exceed 3 standard errors of the
    difference of the two means (the repeats' spread / sqrt(R), combined): a one-sided test that a tie or a
    reversed order passes with probability < 0.2%. Over data seeds 0-2 the gaps (about 25, 2 and 0.2-0.9 nats)
    were at least 6 times their thresholds, so the test is not marginal.
    """
    vae, marginal = _linear_gaussian_vae(exact_posterior=False)
    torch.manual_seed(0)
    x = marginal.sample((64,))
    exact = float(marginal.log_prob(x).mean())
    generator = torch.Generator().manual_seed(1)
    repeats = {"elbo": 200, 10: 100, 100: 40}
    estimates = {}
    for key, R in repeats.items():
        if key == "elbo":
            runs = torch.stack([vae.elbo(x).detach().double().mean() for _ in range(R)])
        else:
            runs = torch.stack([vae.log_likelihood(x, K=key, generator=generator).mean() for _ in range(R)])
        estimates[key] = (float(runs.mean()), float(runs.std() / math.sqrt(R)))
    ordered = [estimates["elbo"], estimates[10], estimates[100], (exact, 0.0)]
    for (low, se_low), (high, se_high) in itertools.pairwise(ordered):
        assert high - low > 3 * math.hypot(se_low, se_high), estimates


def test_discretized_vae_is_the_ddpm_decoder_on_pixels():
    """The discretised decoder's log p(x | z) is Ho et al.'s eq. 13 at the pixels' grid values plus D log(255/2),
    the same for dequantised pixels and for the grid values; bits_per_dim undoes the offset."""
    torch.manual_seed(0)
    vae = VAE(dim=6, latent_dim=3, hidden=8, likelihood="discretized")
    _randomise(vae, 0.5, seed=3)
    pixels = torch.randint(0, 256, (10, 6))
    pixels[0] = torch.tensor([0, 255, 0, 255, 1, 254])
    grid = pixels_to_model(pixels)
    dequantised = grid + torch.rand(10, 6, dtype=torch.float64) * BIN_WIDTH * 0.9999
    torch.testing.assert_close(pixel_grid(dequantised.float()), grid, atol=1e-12, rtol=0)
    torch.testing.assert_close(pixel_grid(grid.float()), grid, atol=1e-12, rtol=0)
    z = torch.randn(10, 3)
    mean, log_std = vae.decode(z)
    reference = discretized_gaussian_log_likelihood(grid, mean, (2 * log_std).exp()).sum(1)
    for x in (grid.float(), dequantised.float()):
        got = vae.decoder_log_prob(vae._inputs(x), z).double()
        # ``got`` is rounded to float32 (the model's dtype): relative 1e-6 covers that rounding
        torch.testing.assert_close(got, reference + 6 * math.log(255 / 2), atol=0, rtol=1e-6)
        torch.testing.assert_close(bits_per_dim(got, 6), -reference / (6 * math.log(2)), atol=0, rtol=1e-6)


def test_bits_per_dim_of_the_uniform_density_is_8_bits():
    """The uniform density on the support [-1, 1 + 2/255) gives each of the 256 levels probability 1/256."""
    log_density = torch.full((3,), -784 * math.log(SUPPORT[1] - SUPPORT[0]))
    torch.testing.assert_close(bits_per_dim(log_density, 784), torch.full((3,), 8.0, dtype=torch.float64))


def test_vae_sample_is_seeded_and_uses_the_decoder():
    vae = VAE(dim=2, latent_dim=2, hidden=8)
    _randomise(vae, 0.5, seed=4)
    torch.testing.assert_close(vae.sample((3, 2), seed=7), vae.sample((6, 2), seed=7)[:3], atol=1e-6, rtol=0)
    mean = vae.sample((4, 2), seed=7, decoder_noise=False)
    torch.testing.assert_close(mean, vae.decode(philox_normal((4, 2), 7, 0))[0])  # z: the DDPM's x_T noise
    noisy = vae.sample((4, 2), seed=7)
    decoder_std = vae.decode(philox_normal((4, 2), 7, 0))[1].exp()
    torch.testing.assert_close(noisy, mean + decoder_std * philox_normal((4, 2), 7, 1))  # step 1: decoder noise


TOY_TRAINING = {
    "flow": ({"dim": 2, "num_couplings": 6, "hidden": 32}, 300, 3e-3),
    "vae": ({"dim": 2, "latent_dim": 2, "hidden": 32}, 300, 3e-3),
}


@pytest.mark.parametrize("dataset", ["two-gaussians", "chequerboard"])
@pytest.mark.parametrize("name", ["flow", "vae"])
def test_short_training_improves_held_out_log_likelihood(name, dataset):
    """300 Adam steps on the exercise's model space (scale 2) raise the held-out log-likelihood (flow: exact;
    VAE: IWAE_20) well above the untrained model's (the flow's after actnorm's data initialisation), closing at
    least half the gap to the true mean log-density, and never above it beyond 3 standard errors (Gibbs)."""
    kwargs, steps, lr = TOY_TRAINING[name]
    torch.manual_seed(0)
    distribution, transform = toy_distribution(dataset), DataTransform()
    generator = torch.Generator().manual_seed(1)
    train = transform.to_model(distribution.sample(2000, generator))
    test_data = distribution.sample(2000, generator)
    test = transform.to_model(test_data)
    true_log_density = distribution.log_prob(test_data) - 2 * math.log(transform.scale)  # p_model = p_data / 2^2
    model = build_baseline(name, **kwargs)

    def held_out() -> torch.Tensor:
        if name == "flow":
            return model.log_likelihood(test)
        return model.log_likelihood(test, K=20, generator=torch.Generator().manual_seed(0))

    model.loss(train[:256])  # the flow's actnorm initialises here, as on the first training batch
    before = float(held_out().mean())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(train[torch.randint(0, len(train), (256,))])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out()
    gap = after - true_log_density
    truth = float(true_log_density.mean())
    assert float(after.mean()) - before > 0.5 * (truth - before) > 0, (before, float(after.mean()), truth)
    assert float(gap.mean()) < 3 * float(gap.std()) / math.sqrt(len(gap))


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("dataset", ["chequerboard", "mnist"])
def test_config_rebuilds_the_model(name, dataset):
    torch.manual_seed(0)
    kwargs = default_kwargs(name, dataset)
    model = build_baseline(name, **kwargs)
    assert model.config == {**model.config, **kwargs}
    x = _pixel_batch(8, model.dim, 0).float() if dataset == "mnist" else torch.randn(8, model.dim)
    model.loss(x)  # initialises the flow's actnorm, which the state dict must carry
    rebuilt = build_baseline(name, **json.loads(json.dumps(model.config)))  # as a run's JSON config stores it
    rebuilt.load_state_dict(model.state_dict())
    generator = (lambda: torch.Generator().manual_seed(0)) if name == "vae" else None
    extra = (lambda: {"K": 3, "generator": generator()}) if name == "vae" else dict
    torch.testing.assert_close(rebuilt.log_likelihood(x, **extra()), model.log_likelihood(x, **extra()))
    torch.testing.assert_close(rebuilt.sample((2, model.dim), seed=3), model.sample((2, model.dim), seed=3))


@pytest.mark.parametrize("name, kwargs, match", [
    ("glow", {}, "unknown baseline 'glow'"),
    ("flow", {"depth": 3}, "depth"),
    ("flow", {"dim": 1}, "dim must be an integer >= 2"),
    ("flow", {"num_couplings": 0}, "num_couplings"),
    ("flow", {"hidden": 2.5}, "hidden"),
    ("flow", {"mask": "stripes"}, "unknown mask 'stripes'"),
    ("flow", {"norm": "batchnorm"}, "unknown norm"),
    ("flow", {"pretransform": "sigmoid"}, "unknown pretransform"),
    ("flow", {"alpha": 0.5}, "alpha"),
    ("flow", {"scale_bound": -1.0}, "scale_bound"),
    ("flow", {"dim": 16, "image_shape": [3, 3]}, "image_shape"),
    ("flow", {"activation": "swish"}, "unknown activation"),
    ("vae", {"latent_dim": 0}, "latent_dim"),
    ("vae", {"num_hidden_layers": -1}, "num_hidden_layers"),
    ("vae", {"likelihood": "bernoulli"}, "unknown likelihood"),
    ("vae", {"decoder_variance": "free"}, "unknown decoder_variance"),
    ("vae", {"decoder_std": 0.0}, "decoder_std"),
    ("vae", {"decoder_std": 100.0}, "decoder_std"),
])
def test_bad_settings_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_baseline(name, **kwargs)


def test_bad_inputs_raise():
    flow, vae = RealNVP(dim=2, num_couplings=1), VAE(dim=2)
    for model in (flow, vae):
        with pytest.raises(ValueError, match="2 values per example"):
            model.loss(torch.zeros(4, 3))
        with pytest.raises(ValueError, match="shape must be"):
            model.sample((4, 3))
    with pytest.raises(ValueError, match="K must be"):
        vae.log_likelihood(torch.zeros(4, 2), K=0)
    with pytest.raises(ValueError, match="at least 2|>= 2 examples"):
        RealNVP(dim=2, num_couplings=1).loss(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="unknown data set"):
        default_kwargs("flow", "cifar")
