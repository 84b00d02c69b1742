"""The fused reverse step (pyddpm.ops.reverse_step, CPU) against its plain-torch reference.

Tolerances: the contract is float32 relative error <= 1e-6, measured against the size of the terms
(|a x| + |b eps| + |c w| + |sigma z|) because the result itself can cancel to ~0. On CPU both sides
perform the same binary32 operations in the same order without FMA contraction, so the results are
also checked to be bit-identical; that is what makes seeded sampling reproducible across backends.
"""
import math

import pytest
import scipy.stats
import torch

from pyddpm import step_schedule
from pyddpm import ops, philox
from pyddpm.ops import StepCoefficients


def _ddpm_coef(t=500, T=1000):
    beta = [1e-4 + (0.02 - 1e-4) * s / (T - 1) for s in range(T)]
    abar = math.prod(1 - b for b in beta[:t])
    b_t = beta[t - 1]
    return StepCoefficients(a=1 / math.sqrt(1 - b_t), b=-b_t / (math.sqrt(1 - abar) * math.sqrt(1 - b_t)),
                            sigma=math.sqrt(b_t))


COEFS = {
    "ddpm": _ddpm_coef(),
    "ddim": StepCoefficients(a=0.98, b=0.15, sigma=0.0),
    "clip": StepCoefficients(a=0.9, b=0.05, sigma=0.1, clip=True, c=0.3, p=1.5, q=-0.8, lo=-1.0, hi=1.0),
}
SHAPES = [(1,), (3,), (1023,), (4097,), (3, 1, 7, 5), (5000, 2), (2, 4097), (300, 9)]


def rand(shape, seed, dtype=torch.float32):
    """Fresh N(0, 1.5^2) values (never zeros; large enough that the clip bounds are hit)."""
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(shape, generator=g)).to(dtype)


def bits(t):
    return t.contiguous().view(torch.int32)


def assert_step_close(got, want, x, e, coef, z=None):
    """|got - want| <= 1e-6 * (|a x| + |b e| + |c| + |sigma z|) elementwise (see the module docstring)."""
    scale = (coef.a * x).abs() + (coef.b * e).abs() + abs(coef.c)
    if z is not None:
        scale = scale + (coef.sigma * z).abs()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert ((got - want).abs() <= 1e-6 * scale + 1e-30).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(COEFS))
def test_given_noise_matches_reference(shape, name):
    coef = COEFS[name]
    x, e, z = rand(shape, 1), rand(shape, 2), rand(shape, 3)
    want = ops.reverse_step_reference(x, e, coef, noise=z)
    got = ops.reverse_step(x, e, coef, noise=z)
    assert_step_close(got, want, x, e, coef, z)
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(COEFS))
def test_seeded_matches_reference(shape, name):
    coef = COEFS[name]
    x, e = rand(shape, 4), rand(shape, 5)
    want = ops.reverse_step_reference(x, e, coef, seed=1234, step=77, sample_offset=9)
    got = ops.reverse_step(x, e, coef, seed=1234, step=77, sample_offset=9)
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("shape", [(2**20 + 5,), (1, 2**20 + 5)])
def test_large_matches_reference(shape):
    coef = COEFS["ddpm"]
    x, e, z = rand(shape, 6), rand(shape, 7), rand(shape, 8)
    got = ops.reverse_step(x, e, coef, noise=z)
    assert_step_close(got, ops.reverse_step_reference(x, e, coef, noise=z), x, e, coef, z)
    if shape[0] == 1:  # one 2**20 + 5 element sample: many kernel blocks of one sample
        got = ops.reverse_step(x, e, coef, seed=99, step=1000)
        assert torch.equal(bits(got), bits(ops.reverse_step_reference(x, e, coef, seed=99, step=1000)))


@pytest.mark.parametrize("name", sorted(COEFS))
def test_in_place_and_out(name):
    coef = COEFS[name]
    x, e = rand((6, 33), 9), rand((6, 33), 10)
    want = ops.reverse_step_reference(x, e, coef, seed=5, step=3)
    y = x.clone()
    assert ops.reverse_step(y, e, coef, seed=5, step=3, out=y) is y
    assert torch.equal(y, want)
    out = torch.full_like(x, float("nan"))
    assert ops.reverse_step(x, e, coef, seed=5, step=3, out=out) is out
    assert torch.equal(out, want)


def test_views_with_storage_offset():
    # odd element offsets make the data pointers unaligned for any vector width
    base_x, base_e, base_o = rand(3 * 1029 + 11, 11), rand(3 * 1029 + 13, 12), torch.zeros(3 * 1029 + 5)
    x, e, out = base_x[11:].view(3, 1029), base_e[13:].view(3, 1029), base_o[5:].view(3, 1029)
    for kwargs in (dict(noise=rand((3, 1029), 13)), dict(seed=3, step=2)):
        want = ops.reverse_step_reference(x, e, COEFS["clip"], **kwargs)
        assert torch.equal(ops.reverse_step(x, e, COEFS["clip"], out=out, **kwargs), want)
        assert torch.equal(base_o[:5], torch.zeros(5))  # nothing written before the view
    y = x.clone()
    ops.reverse_step(x, e, COEFS["ddpm"], seed=1, step=1, out=x)
    assert torch.equal(x, ops.reverse_step_reference(y, e, COEFS["ddpm"], seed=1, step=1))
    assert torch.equal(base_x[:11], rand(3 * 1029 + 11, 11)[:11])


@pytest.mark.parametrize("which", ["x_t", "eps_hat", "noise", "out"])
def test_non_contiguous_is_refused(which):
    args = {k: rand((8, 6), i) for i, k in enumerate(("x_t", "eps_hat", "noise", "out"))}
    args[which] = rand((6, 8), 20).t()
    with pytest.raises(ValueError, match=f"{which} must be contiguous"):
        ops.reverse_step(args["x_t"], args["eps_hat"], COEFS["ddpm"], noise=args["noise"], out=args["out"])
    # the reference takes any layout
    ops.reverse_step_reference(args["x_t"], args["eps_hat"], COEFS["ddpm"], noise=args["noise"])


def test_partial_overlap_is_refused():
    base = rand(40, 14)
    x, e = base[:20].view(4, 5), rand((4, 5), 15)
    with pytest.raises(ValueError, match="overlaps x_t"):
        ops.reverse_step(x, e, COEFS["ddpm"], seed=1, out=base[1:21].view(4, 5))


@pytest.mark.parametrize("call,error,match", [
    (lambda x, e: ops.reverse_step(x.double(), e.double(), COEFS["ddpm"], seed=1), ValueError, "x_t must be float32"),
    (lambda x, e: ops.reverse_step(x.half(), e.half(), COEFS["ddpm"], seed=1), ValueError, "x_t must be float32"),
    (lambda x, e: ops.reverse_step(x, e.double(), COEFS["ddpm"], seed=1), ValueError, "eps_hat must have the dtype"),
    (lambda x, e: ops.reverse_step(x, e[:2], COEFS["ddpm"], seed=1), ValueError, "eps_hat must have the shape"),
    (lambda x, e: ops.reverse_step(x, e.to("meta"), COEFS["ddpm"], seed=1), ValueError, "eps_hat must be on the device"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], noise=e[:, :2]), ValueError, "noise must have the shape"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], seed=1, out=e[:1]), ValueError, "out must have the shape"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], seed=1, out=e.long()), ValueError, "out must have the dtype"),
    (lambda x, e: ops.reverse_step(x, "e", COEFS["ddpm"], seed=1), TypeError, "eps_hat must be a torch.Tensor"),
    (lambda x, e: ops.reverse_step(x[0, 0], e[0, 0], COEFS["ddpm"], seed=1), ValueError, "batch dimension"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"]), ValueError, "sigma != 0 needs noise"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], noise=e, seed=1), ValueError, "either noise or seed"),
    (lambda x, e: ops.reverse_step(x, e, (1.0, 0.0, 0.0), seed=1), TypeError, "StepCoefficients"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"]._replace(a=math.nan), seed=1), ValueError, "coef.a"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"]._replace(sigma=math.inf), seed=1), ValueError, "coef.sigma"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"]._replace(b=1e39), seed=1), ValueError, "coef.b"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"]._replace(b="1"), seed=1), TypeError, "coef.b"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["clip"]._replace(lo=1.0, hi=-1.0), seed=1), ValueError, "coef.lo"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], seed=-1), ValueError, "seed"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], seed=2**63), ValueError, "seed"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], seed=1, step=2**32), ValueError, "step"),
    (lambda x, e: ops.reverse_step(x, e, COEFS["ddpm"], seed=1, sample_offset=-1), ValueError, "sample_offset"),
])
def test_invalid_arguments_name_the_problem(call, error, match):
    x, e = rand((4, 6), 16), rand((4, 6), 17)
    with pytest.raises(error, match=match):
        call(x, e)


def test_sigma_zero_needs_no_noise_and_ignores_it():
    coef = COEFS["ddim"]
    x, e = rand((5, 7), 18), rand((5, 7), 19)
    want = coef.a * x + coef.b * e  # exact float32 ops, as the spec orders them
    for kwargs in ({}, dict(seed=3), dict(noise=rand((5, 7), 20))):
        assert torch.equal(ops.reverse_step(x, e, coef, **kwargs), want)
        assert torch.equal(ops.reverse_step_reference(x, e, coef, **kwargs), want)


def test_empty_batch():
    x = torch.empty(0, 3)
    assert ops.reverse_step(x, x.clone(), COEFS["ddpm"], seed=1).shape == (0, 3)
    assert ops.normal_noise((0, 3), seed=1).shape == (0, 3)


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(ops, "_C", None)
    x = rand((2, 2), 21)
    with pytest.raises(RuntimeError, match="pip install"):
        ops.reverse_step(x, x, COEFS["ddpm"], seed=1)
    with pytest.raises(RuntimeError, match="pip install"):
        ops.normal_noise((2, 2), seed=1)
    ops.normal_noise((2, 2), seed=1, backend="torch")  # the reference path needs no extension


def test_opcheck():
    x, e, z = rand((3, 10), 22), rand((3, 10), 23), rand((3, 10), 24)
    clip = ops._coefficient_list(COEFS["clip"])
    ddpm = ops._coefficient_list(COEFS["ddpm"])
    for args in ((x, e, z, ddpm, False, -1, 0, 0), (x, e, None, clip, True, 7, 3, 2)):
        torch.library.opcheck(torch.ops.pyddpm.reverse_step.default, args)
        torch.library.opcheck(torch.ops.pyddpm.reverse_step_.default, (x.clone(), *args[1:3], [], *args[3:]))
        torch.library.opcheck(torch.ops.pyddpm.reverse_step_out.default,
                              (*args[:3], [], torch.empty_like(x), *args[3:]))
    # a solver step with two history buffers, drawn noise, in place and into out
    solver = ops._coefficient_list(ops.StepCoefficients(0.9, 0.0, 0.1, c=0.3, p=1.2, q=-0.4, h=(0.2, -0.1)))
    history = [rand((3, 10), 27), rand((3, 10), 28)]
    torch.library.opcheck(torch.ops.pyddpm.reverse_step_.default,
                          (x.clone(), e, None, [h.clone() for h in history], solver, False, 5, 4, 0))
    torch.library.opcheck(torch.ops.pyddpm.reverse_step_out.default,
                          (x, e, None, [h.clone() for h in history], torch.empty_like(x), solver, False, 5, 4, 0))
    schedule = step_schedule.step_schedule([ops.StepCoefficients(0.9, 0.0, 0.1, c=0.3, p=1.2, q=-0.4, h=(0.2, -0.1))], [4])
    torch.library.opcheck(torch.ops.pyddpm.reverse_step_scheduled.default,
                          (x.clone(), e, [h.clone() for h in history], *schedule[:3], False, 5, 0))
    torch.library.opcheck(torch.ops.pyddpm.normal_noise.default, ([4, 5], 3, 1, 0, torch.device("cpu"), torch.float32))


def test_torch_compile_fullgraph():
    coef = COEFS["clip"]
    x, e = rand((4, 50), 25), rand((4, 50), 26)
    want = ops.reverse_step_reference(x, e, coef, seed=8, step=9)

    def step(x, e):
        return ops.reverse_step(x, e, coef, seed=8, step=9)

    def step_in_place(x, e):
        return ops.reverse_step(x, e, coef, seed=8, step=9, out=x)

    assert torch.equal(torch.compile(step, fullgraph=True)(x, e), want)
    y = x.clone()
    torch.compile(step_in_place, fullgraph=True)(y, e)
    assert torch.equal(y, want)


def test_autograd_inputs_take_the_op_path():
    # eager calls on plain tensors launch the kernel directly; these go through pyddpm::reverse_step
    coef = COEFS["ddpm"]
    x, e = rand((3, 8), 30).requires_grad_(), rand((3, 8), 31)
    y = ops.reverse_step(x, e, coef, seed=2, step=3)
    assert torch.equal(y.detach(), ops.reverse_step_reference(x.detach(), e, coef, seed=2, step=3))
    with pytest.raises(RuntimeError, match="autograd"):
        y.sum().backward()


def test_in_place_bumps_the_version_counter():
    x, e = rand((3, 8), 32), rand((3, 8), 33)
    before = x._version
    ops.reverse_step(x, e, COEFS["ddpm"], seed=2, step=3, out=x)
    assert x._version > before


def test_normal_noise_backends_dtypes_and_errors():
    fused = ops.normal_noise((3, 2, 5), seed=4, step=2, sample_offset=1)
    assert fused.dtype == torch.float32 and fused.shape == (3, 2, 5)
    assert torch.equal(fused, ops.normal_noise((3, 2, 5), seed=4, step=2, sample_offset=1, backend="torch"))
    assert torch.equal(ops.normal_noise((3, 2, 5), seed=4, step=2, sample_offset=1, dtype=torch.float16),
                       fused.half())
    with pytest.raises(ValueError, match="backend"):
        ops.normal_noise((2,), seed=1, backend="numpy")
    with pytest.raises(ValueError, match="dtype"):
        ops.normal_noise((2,), seed=1, dtype=torch.int32)
    with pytest.raises(ValueError, match="shape"):
        ops.normal_noise((), seed=1)
    with pytest.raises(TypeError, match="shape"):
        ops.normal_noise((2, 1.5), seed=1)


# ---- the in-kernel noise ------------------------------------------------------------------------

def kernel_noise(shape, seed, step=1, offset=0):
    """z exactly as reverse_step draws it: a = b = 0, sigma = 1 gives 0 + 0 + 1 * z."""
    coef = StepCoefficients(a=0.0, b=0.0, sigma=1.0)
    x = rand(shape, 27)
    return ops.reverse_step(x, x, coef, seed=seed, step=step, sample_offset=offset)


@pytest.mark.parametrize("seed,step", [(0, 1), (12345, 1000), (2**63 - 1, 500)])
def test_noise_is_standard_normal(seed, step):
    z = kernel_noise((64, 2**14), seed, step).flatten().double()
    n = z.numel()
    # mean and variance within 5 standard errors; KS against N(0, 1) (a fixed draw: deterministic)
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert scipy.stats.kstest(z.numpy(), "norm").pvalue > 1e-4
    # every lane of the Box-Muller output is N(0, 1) on its own
    for lane in range(4):
        assert scipy.stats.kstest(z.view(-1, 4)[:, lane].numpy(), "norm").pvalue > 1e-4


def test_noise_streams_are_independent():
    n = 2**18
    base = kernel_noise((4, n), seed=7, step=10)
    others = {
        "next step": kernel_noise((4, n), seed=7, step=11),
        "next seed": kernel_noise((4, n), seed=8, step=10),
        "high seed word": kernel_noise((4, n), seed=7 + 2**32, step=10),
        "next sample": kernel_noise((4, n), seed=7, step=10, offset=1),
    }
    limit = 5 / math.sqrt(4 * n)  # |correlation| of independent streams: 5 standard errors
    for name, other in others.items():
        corr = torch.corrcoef(torch.stack([base.flatten(), other.flatten()]).double())[0, 1].item()
        assert abs(corr) < limit, name
        assert (base == other).double().mean().item() < 1e-4, name
    flat = base[0].double()
    for lag in range(1, 9):  # neighbouring elements, within and across Philox groups
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(n), lag


def test_noise_deterministic_and_batch_invariant():
    coef = COEFS["ddpm"]
    x, e = rand((10, 37), 28), rand((10, 37), 29)
    full = ops.reverse_step(x, e, coef, seed=31, step=400)
    assert torch.equal(full, ops.reverse_step(x, e, coef, seed=31, step=400))
    # samples 3..9 computed as their own batch with sample_offset 3, and one at a time
    assert torch.equal(full[3:], ops.reverse_step(x[3:].clone(), e[3:].clone(), coef, seed=31, step=400,
                                                  sample_offset=3))
    for i in range(10):
        assert torch.equal(full[i:i + 1], ops.reverse_step(x[i:i + 1], e[i:i + 1], coef, seed=31, step=400,
                                                           sample_offset=i))
    z = ops.normal_noise((10, 37), seed=31, step=0)
    assert torch.equal(z[4:6], ops.normal_noise((2, 37), seed=31, step=0, sample_offset=4))


def test_noise_independent_of_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.normal_noise((64, 4099), seed=2, step=3)
        torch.set_num_threads(max(2, threads))
        many = ops.normal_noise((64, 4099), seed=2, step=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    assert torch.equal(one, philox.philox_normal((64, 4099), 2, 3))


# ---- the step with history buffers (the multistep solvers' step; pyddpm.solvers) ---------------------------------
SOLVER_COEFS = {  # c d + sum h_k H_k with d = p x + q eps; 1-3 history buffers, with and without noise and clip
    "2m": StepCoefficients(0.82, 0.0, 0.0, c=1.37, p=1.05, q=-0.31, h=(-0.44,)),
    "3m-sde": StepCoefficients(0.61, 0.0, 0.27, c=1.9, p=1.2, q=-0.66, h=(-1.1, 0.35)),
    "unipc3-clip": StepCoefficients(0.7, 0.05, 0.0, clip=True, c=0.9, p=2.0, q=-1.7, lo=-1.0, hi=1.0,
                                    h=(0.4, -0.25, 0.08)),
}


def solver_inputs(name, shape, seed):
    k = len(SOLVER_COEFS[name].h)
    return rand(shape, seed), rand(shape, seed + 1), [rand(shape, seed + 2 + j) for j in range(k)]


@pytest.mark.parametrize("shape", [(7, 2), (5, 3, 28, 28), (3, 1001)])
@pytest.mark.parametrize("name", list(SOLVER_COEFS))
def test_history_step_matches_reference_to_the_bit(shape, name):
    """The kernel and the float32 reference do the same operations in the same order (csrc/reverse_step.h): equal
    bits, for x_next and for every history buffer after the shift."""
    coef = SOLVER_COEFS[name]
    x, e, history = solver_inputs(name, shape, 40)
    ref_history = [h.clone() for h in history]
    want = ops.reverse_step_reference(x, e, coef, seed=11, step=7, history=ref_history)
    got = ops.reverse_step(x.clone(), e, coef, seed=11, step=7, history=history)
    assert torch.equal(got, want)
    for h, r in zip(history, ref_history):
        assert torch.equal(h, r)


@pytest.mark.parametrize("name", list(SOLVER_COEFS))
def test_history_step_against_float64(name):
    """The float32 step against the same formula in float64 on fresh inputs of unit scale: within 8 float32 ulps of
    the largest term (each of the <= 7 additions rounds once; coefficients are exact float32 inputs)."""
    coef = SOLVER_COEFS[name]
    x, e, history = solver_inputs(name, (64, 33), 50)
    noise = rand((64, 33), 59)
    old = [h.double() for h in history]
    got = ops.reverse_step(x.clone(), e, coef, noise=noise if coef.sigma else None, history=history)
    d = ops._f32(coef.p) * x.double() + ops._f32(coef.q) * e.double()
    if coef.clip:
        d = d.clamp(coef.lo, coef.hi)
    want = ops._f32(coef.a) * x.double() + ops._f32(coef.b) * e.double() + ops._f32(coef.c) * d
    for h_k, buffer in zip(coef.h, old):
        want = want + ops._f32(h_k) * buffer
    if coef.sigma:
        want = want + ops._f32(coef.sigma) * noise.double()
    scale = 8 * 2.0**-23 * float(max(want.abs().max(), d.abs().max()))
    torch.testing.assert_close(got.double(), want, rtol=0, atol=scale * 4)
    torch.testing.assert_close(history[0].double(), d, rtol=0, atol=scale)
    for new, previous in zip(history[1:], old):
        assert torch.equal(new.double(), previous)  # the shift copies bits


def test_history_step_noise_is_batch_invariant():
    """Sample i's step (its noise and its history) depends only on (seed, sample_offset + i), not the batch split."""
    coef = SOLVER_COEFS["3m-sde"]
    x, e, history = solver_inputs("3m-sde", (12, 40), 60)
    whole = [h.clone() for h in history]
    want = ops.reverse_step(x.clone(), e, coef, seed=5, step=99, history=whole)
    for lo, hi in ((0, 5), (5, 12)):
        part = [h[lo:hi].clone() for h in history]
        got = ops.reverse_step(x[lo:hi].clone(), e[lo:hi].contiguous(), coef, seed=5, step=99, sample_offset=lo,
                               history=part)
        assert torch.equal(got, want[lo:hi])
        for h, w in zip(part, whole):
            assert torch.equal(h, w[lo:hi])


def test_history_step_in_place_updates_the_buffers_it_was_given():
    coef = SOLVER_COEFS["2m"]
    x, e, history = solver_inputs("2m", (4, 6), 70)
    buffer, pointer = history[0], history[0].data_ptr()
    version = buffer._version
    out = ops.reverse_step(x, e, coef, out=x, history=history)
    assert out is x and buffer.data_ptr() == pointer and buffer._version > version
    torch.testing.assert_close(buffer, ops._f32(coef.p) * rand((4, 6), 70) + ops._f32(coef.q) * e)  # d of the old x
