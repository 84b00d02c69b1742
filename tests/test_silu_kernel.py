"""pyddpm._C's SiLU and SiLU-then-small-Linear kernels (the fast sampling copies' Linear + SiLU layers and the
toy networks' last layer), against x * sigmoid(x) and the Linear computed in float64 on the same inputs.

Tolerances. silu, float32: within 3 ulps, 3 x 2^-23 x |reference| (exp(-|x|) to ~1 ulp, a division, the product),
plus 1e-37 + 1.7e-38 |x| absolute (below x = -87 the kernel's exp(-|x|) stays at e^-87 = 1.6e-38, so silu(x) is
x e^-87 there, against the true value nearer 0). bfloat16: within one bfloat16 spacing, 2^-8 x |reference|
(computed to 1e-4 relative, then rounded once), plus 1e-30 absolute (AVX512-BF16's rounding flushes float32's
subnormals to zero). silu_linear: the dot products of K terms in float32 differ from float64's by up to about
K x 2^-24 of the sum of |terms|: allowed 1e-5 x that sum (K <= 300 here); in bfloat16 each SiLU output is rounded
to bfloat16 first, and may round to the neighbouring value of torch's rounding: allowed one spacing, 2^-8, of the
sum of |terms| on top."""
import pytest
import torch
from torch.nn import functional as F

from pyddpm import _C

FLOAT32_ULPS = 3 * 2.0 ** -23


def inputs(seed: int, n: int) -> torch.Tensor:
    """A wide sweep (every pre-activation a trained network shows, and beyond) and fresh random values, mixed."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.cat([torch.linspace(-120, 120, n // 2), torch.randn(n - n // 2, generator=generator) * 8])
    return values[torch.randperm(n, generator=generator)]


def silu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.empty_like(x) if out is None else out
    _C.silu(dtype=0 if x.dtype == torch.float32 else 2, x=x.data_ptr(), y=out.data_ptr(), n=x.numel(),
            num_threads=2)
    return out


def silu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = torch.empty(x.shape[0], weight.shape[0])
    _C.silu_linear(dtype=0 if x.dtype == torch.float32 else 2, x=x.data_ptr(), weight=weight.data_ptr(),
                   bias=0 if bias is None else bias.data_ptr(), y=y.data_ptr(), rows=x.shape[0], features=x.shape[1],
                   outs=weight.shape[0], num_threads=2)
    return y


def assert_within(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
    err = (out.double() - ref).abs()
    assert bool((err <= bound).all()), f"max error {float((err - bound).max()):+.3g} over the bound"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_is_x_sigmoid_x(dtype):
    x = inputs(0, 100_003).to(dtype)  # not a multiple of the kernels' blocks or lanes
    ref = F.silu(x.double())
    out = silu(x)
    assert out.dtype == dtype
    if dtype == torch.float32:
        assert_within(out, ref, FLOAT32_ULPS * ref.abs() + 1e-37 + 1.7e-38 * x.double().abs())
    else:
        assert_within(out, ref, 2.0 ** -8 * ref.abs() + 1e-30)
        # and it is torch's own bfloat16 SiLU but for ties of the rounding (measured: 0.5% of values, one spacing
        # with AVX512-BF16, none on AVX2), above -87: below it the portable kernel's exp(-|x|) stays at e^-87
        # (x e^-87, within the absolute bound above) where torch's AVX2 SiLU gives -0 (all 6.8% of the values there)
        accurate = x.float() >= -87
        assert float((out[accurate] != F.silu(x)[accurate]).double().mean()) < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_special_values_and_in_place(dtype):
    x = torch.tensor([float("nan"), float("inf"), 0.0, -0.0, 88.0, -88.0, 1000.0, -1000.0, 1e-30]).to(dtype)
    out = silu(x.clone())
    assert torch.isnan(out[0]) and out[1] == float("inf")
    assert_within(out[2:], F.silu(x[2:].double()), 2.0 ** -8 * F.silu(x[2:].double()).abs() + 1e-30)
    y = inputs(1, 4099).to(dtype)
    expected = silu(y)
    silu(y, out=y)  # in place, as the header allows
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("outs", range(1, 9))
def test_silu_linear_is_the_linear_of_the_silu(dtype, outs):
    """Every output count the kernel has a copy for; rows and features not multiples of its blocks and lanes."""
    generator = torch.Generator().manual_seed(outs)
    rows, features = 1003, 37 * outs
    x = (torch.randn(rows, features, generator=generator) * 6).to(dtype)
    weight = torch.randn(outs, features, generator=generator) * 0.2
    bias = torch.randn(outs, generator=generator) if outs % 2 else None
    activations = F.silu(x.double())
    if dtype == torch.bfloat16:
        activations = F.silu(x.float()).bfloat16().double()  # the bfloat16 SiLU output a Linear would be fed
    ref = F.linear(activations, weight.double(), None if bias is None else bias.double())
    terms = F.linear(activations.abs(), weight.double().abs()) + (0 if bias is None else bias.double().abs())
    out = silu_linear(x, weight, bias)
    assert out.dtype == torch.float32 and out.shape == (rows, outs)
    assert_within(out, ref, (1e-5 + (2.0 ** -8 if dtype == torch.bfloat16 else 0.0)) * terms)


def test_the_bindings_refuse_what_the_integers_show():
    x, w = torch.zeros(4, 4), torch.zeros(9, 4)
    with pytest.raises(ValueError, match="dtype"):
        _C.silu(dtype=1, x=x.data_ptr(), y=x.data_ptr(), n=4, num_threads=1)
    with pytest.raises(ValueError, match="n must be"):
        _C.silu(dtype=0, x=x.data_ptr(), y=x.data_ptr(), n=-1, num_threads=1)
    with pytest.raises(ValueError, match="outs <= 8"):
        _C.silu_linear(dtype=0, x=x.data_ptr(), weight=w.data_ptr(), bias=0, y=x.data_ptr(), rows=4, features=4,
                       outs=9, num_threads=1)
    with pytest.raises(ValueError, match="null"):
        _C.silu_linear(dtype=0, x=0, weight=w.data_ptr(), bias=0, y=x.data_ptr(), rows=4, features=4, outs=1,
                       num_threads=1)
