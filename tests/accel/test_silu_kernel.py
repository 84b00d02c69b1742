"""pyddpm._C's SiLU kernel and its op pyddpm::silu_ (the fast sampling copies' Linear + SiLU layers), against
x * sigmoid(x) computed in float64 on the same inputs.

Tolerances. silu, float32: within 3 ulps, 3 x 2^-23 x |reference| (exp(-|x|) to ~1 ulp, a division, the product),
plus 1e-37 + 1.7e-38 |x| absolute (below x = -87 the kernel's exp(-|x|) stays at e^-87 = 1.6e-38, so silu(x) is
x e^-87 there, against the true value nearer 0). bfloat16: within one bfloat16 spacing, 2^-8 x |reference|
(computed to 1e-4 relative, then rounded once), plus 1e-30 absolute (AVX512-BF16's rounding flushes float32's
subnormals to zero)."""
import pytest
import torch
from torch.nn import functional as F

from pyddpm import _C
from pyddpm.accel import kernels

FLOAT32_ULPS = 3 * 2.0 ** -23


def inputs(seed: int, n: int) -> torch.Tensor:
    """A wide sweep (every pre-activation a trained network shows, and beyond) and fresh random values, mixed."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.cat([torch.linspace(-120, 120, n // 2), torch.randn(n - n // 2, generator=generator) * 8])
    return values[torch.randperm(n, generator=generator)]


def silu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """pyddpm._C's SiLU of x into ``out`` (a new tensor, or x itself: in place)."""
    if out is None:
        out = torch.empty_like(x)
        _C.silu(dtype=0 if x.dtype == torch.float32 else 2, x=x.data_ptr(), y=out.data_ptr(), n=x.numel(),
                num_threads=2)
        return out
    assert out is x
    kernels.silu_(x)  # the op: in place
    return x


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


def test_the_op_refuses_what_the_kernel_cannot_take_in_one_line():
    with pytest.raises(ValueError, match="silu_: x must be float32 or bfloat16"):
        kernels.silu_(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="silu_: x must be contiguous"):
        kernels.silu_(torch.zeros(4, 4)[:, ::2])


def test_opcheck():
    """The registered in-place op's schema and fake kernel agree with its real kernel."""
    for x in (inputs(2, 301).reshape(7, 43), inputs(3, 64).bfloat16()):
        torch.library.opcheck(torch.ops.pyddpm.silu_.default, (x,))
