"""The course's toy distributions, their true densities, and the toy sample-quality metrics."""
import math

import pytest
import torch

from pyddpm.data import Chequerboard, DataTransform, TwoGaussians, canonical_name
from pyddpm.evaluate import energy_distance, toy_metrics


def test_two_gaussians_matches_its_definition():
    dist = TwoGaussians()
    x = dist.sample(200_000, generator=torch.Generator().manual_seed(0)).double()
    upper = x.sum(1) > 1.0  # the components are 0.5 * sqrt(2) / 0.1 ~ 7 standard deviations apart
    assert upper.double().mean().item() == pytest.approx(0.2, abs=0.005)
    torch.testing.assert_close(x[upper].mean(0), torch.tensor([0.75, 0.75], dtype=torch.float64), atol=0.003, rtol=0)
    torch.testing.assert_close(x[~upper].std(0), torch.tensor([0.1, 0.1], dtype=torch.float64), atol=0.002, rtol=0)
    # log_prob is a normalised density: integrate exp(log_prob) on a grid
    g = torch.linspace(-0.5, 1.5, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    mass = dist.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().sum() * (g[1] - g[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=1e-4)


def test_chequerboard_matches_its_definition():
    dist = Chequerboard()
    x = dist.sample(100_000, generator=torch.Generator().manual_seed(0))
    index = dist.square_index(x)
    assert (index >= 0).all()
    mass = torch.bincount(index, minlength=5).double() / len(x)
    torch.testing.assert_close(mass, torch.full((5,), 0.2, dtype=torch.float64), atol=0.006, rtol=0)
    assert dist.log_prob(torch.tensor([[0.5, 0.5]])).item() == pytest.approx(math.log(9 / 5))
    assert dist.log_prob(torch.tensor([[0.5, 0.1], [1.2, 0.1]])).isinf().all()  # an empty square, outside


def test_data_names_accept_the_exercise_short_names():
    assert canonical_name("cb") == "chequerboard" and canonical_name("tg") == "two-gaussians"
    with pytest.raises(ValueError, match="unknown data set 'moons'"):
        canonical_name("moons")


def test_transform_round_trips():
    t = DataTransform(0.5, 4.0)
    x = torch.rand(10, 2)
    torch.testing.assert_close(t.from_model(t.to_model(x)), x)
    with pytest.raises(ValueError, match="scale"):
        DataTransform(0.5, 0.0)


def test_energy_distance_is_zero_for_equal_sets_and_grows_with_shift():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert abs(energy_distance(x, x)) < 1e-12
    shifts = [energy_distance(x, x + s) for s in (0.1, 0.5, 2.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]


def test_toy_metrics_of_true_samples_are_at_the_floor():
    g = torch.Generator().manual_seed(1)
    cb = toy_metrics(Chequerboard(), Chequerboard().sample(4000, generator=g))
    assert cb["support_fraction"] == 1.0 and all(abs(m - 0.2) < 0.03 for m in cb["square_mass"])
    assert cb["energy_distance"] < 5 * cb["energy_distance_floor"]
    assert cb["mean_log_prob"] == pytest.approx(math.log(9 / 5))
    tg = toy_metrics(TwoGaussians(), TwoGaussians().sample(4000, generator=g))
    assert tg["mixture_weights"][0] == pytest.approx(0.2, abs=0.02)
    # uniform noise on the square is far from the chequerboard: off-support mass and a larger distance
    noise = toy_metrics(Chequerboard(), torch.rand(4000, 2, generator=g))
    assert noise["support_fraction"] == pytest.approx(5 / 9, abs=0.03)
    assert noise["energy_distance"] > 3 * cb["energy_distance"]
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        toy_metrics(Chequerboard(), torch.rand(10, 3))
