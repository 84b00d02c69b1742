"""Every entry of the fused op checks its input before a launch: the registered torch.ops.pyddpm.* ops called
directly (as a traced or exported graph calls them), their fake kernels, and the scheduled step. A spy in place of
pyddpm._C proves that no bad call reaches the kernel."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pyddpm import step_schedule
from pyddpm import ops

CUDA = torch.cuda.is_available()
COEF = [0.9, -0.1, 0.3, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0]  # a, b, sigma, c, p, q, lo, hi, h_0..h_2
X_SHAPE = (4, 6)


class KernelSpy:
    """Stands in for pyddpm._C: records the launches that get through."""

    def __init__(self):
        self.launches = 0

    def cuda_built(self):
        return False

    def reverse_step(self, **kwargs):
        self.launches += 1

    reverse_step_scheduled = normal = reverse_step


@pytest.fixture
def spy(monkeypatch):
    spy = KernelSpy()
    monkeypatch.setattr(ops, "_C", spy)
    return spy


def tensors(g=0):
    gen = torch.Generator().manual_seed(g)
    return torch.randn(X_SHAPE, generator=gen), torch.randn(X_SHAPE, generator=gen), torch.randn(X_SHAPE, generator=gen)


x, e, z = tensors()
BAD_CALLS = {  # (x_t, eps_hat, noise, coef, clip, seed, step, sample_offset) -> what the error names
    "smaller eps_hat": ((x, e[:3], z, COEF, False, -1, 1, 0), "eps_hat must have the shape"),
    "flat eps_hat": ((x, e.reshape(-1), z, COEF, False, -1, 1, 0), "eps_hat must have the shape"),
    "float64 eps_hat": ((x, e.double(), z, COEF, False, -1, 1, 0), "eps_hat must have the dtype"),
    "float64 everywhere": ((x.double(), e.double(), z.double(), COEF, False, -1, 1, 0), "x_t must be float32"),
    "int x_t": ((x.int(), e.int(), z.int(), COEF, False, -1, 1, 0), "x_t must be float32"),
    "non-contiguous": ((x.t(), e.t(), z.t(), COEF, False, -1, 1, 0), "contiguous"),
    "smaller noise": ((x, e, z[:, :5], COEF, False, -1, 1, 0), "noise must have the shape"),
    "0-dim x_t": ((x[0, 0], e[0, 0], None, COEF, False, 3, 1, 0), "batch dimension"),
    "10 coefficients": ((x, e, z, COEF[:10], False, -1, 1, 0), "11 numbers"),
    "NaN coefficient": ((x, e, z, [float("nan")] + COEF[1:], False, -1, 1, 0), "coef.a must be finite"),
    "huge coefficient": ((x, e, z, COEF[:2] + [1e39] + COEF[3:], False, -1, 1, 0), "coef.sigma must be finite"),
    "lo > hi": ((x, e, z, COEF[:6] + [1.0, -1.0] + COEF[8:], True, -1, 1, 0), "coef.lo must be <= coef.hi"),
    "h_0 without history": ((x, e, z, COEF[:8] + [0.5, 0.0, 0.0], False, -1, 1, 0), "needs history buffer 0"),
    "noise and seed": ((x, e, z, COEF, False, 5, 1, 0), "either noise or seed"),
    "no noise": ((x, e, None, COEF, False, -1, 1, 0), "needs noise"),
    "seed -5": ((x, e, None, COEF, False, -5, 1, 0), "seed must be in"),
    "seed 2**63": ((x, e, None, COEF, False, 2**63, 1, 0), "'seed'"),  # the op's int64 schema refuses it
    "step -1": ((x, e, None, COEF, False, 3, -1, 0), "step must be in"),
    "step 2**40": ((x, e, None, COEF, False, 3, 2**40, 0), "step must be in"),
    "negative offset": ((x, e, None, COEF, False, 3, 1, -4), "sample_offset must be"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
@pytest.mark.parametrize("op", ["reverse_step", "reverse_step_", "reverse_step_out"])
def test_registered_ops_refuse_bad_input_without_launching(spy, op, case):
    args, message = BAD_CALLS[case]
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    if op == "reverse_step_out":
        args = (*args[:3], [], torch.empty_like(args[0]), *args[3:])
    elif op == "reverse_step_":
        args = (*args[:3], [], *args[3:])
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        getattr(torch.ops.pyddpm, op)(*args)
    assert spy.launches == 0


@pytest.mark.parametrize("out", [torch.empty(3, 6), torch.empty(X_SHAPE, dtype=torch.float64), torch.empty(6, 4).t()])
def test_reverse_step_out_refuses_a_bad_out(spy, out):
    with pytest.raises(ValueError, match="out must"):
        torch.ops.pyddpm.reverse_step_out(x, e, z, [], out, COEF, False, -1, 1, 0)
    assert spy.launches == 0


SOLVER = [0.9, 0.0, 0.0, 0.3, 1.2, -0.4, -1.0, 1.0, 0.2, -0.1, 0.0]
BAD_HISTORY = {  # history buffers for a step with h_0, h_1 != 0 -> what the error names
    "one buffer": ([torch.randn(X_SHAPE)], "needs history buffer 1"),
    "float64 buffer": ([torch.randn(X_SHAPE), torch.randn(X_SHAPE).double()], "history\\[1\\] must be a float32"),
    "smaller buffer": ([torch.randn(X_SHAPE), torch.randn(3, 6)], "history\\[1\\] must be a float32"),
    "four buffers": ([torch.randn(X_SHAPE) for _ in range(4)], "at most 3"),
    "non-contiguous": ([torch.randn(X_SHAPE), torch.randn(6, 4).t()], "contiguous"),
}


@pytest.mark.parametrize("case", list(BAD_HISTORY))
def test_history_is_checked_before_a_launch(spy, case):
    history, message = BAD_HISTORY[case]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        torch.ops.pyddpm.reverse_step_(x.clone(), e, None, history, SOLVER, False, 1, 1, 0)
    assert spy.launches == 0


def test_history_buffers_must_not_overlap(spy):
    buffer = torch.randn(X_SHAPE)
    for history, x_t in (([buffer, buffer], x.clone()), ([buffer, torch.randn(X_SHAPE)], buffer)):
        with pytest.raises(ValueError, match="overlaps"):
            torch.ops.pyddpm.reverse_step_(x_t, e, None, history, SOLVER, False, 1, 1, 0)
    assert spy.launches == 0


def test_the_checks_let_a_good_call_through():
    """The same op on good input equals the reference (the checks refuse only what they should)."""
    coef = ops.StepCoefficients(*COEF[:3])
    want = ops.reverse_step_reference(x, e, coef, noise=z)
    assert torch.equal(torch.ops.pyddpm.reverse_step(x, e, z, COEF, False, -1, 1, 0), want)
    got = x.clone()
    torch.ops.pyddpm.reverse_step_(got, e, z, [], COEF, False, -1, 1, 0)
    assert torch.equal(got, want)


@pytest.mark.parametrize("case", ["smaller eps_hat", "float64 eps_hat", "10 coefficients", "step 2**40", "seed -5"])
def test_fake_kernels_check_too(case):
    """Tracing (fake tensors, as torch.compile and export see the op) fails on the same input."""
    args, _ = BAD_CALLS[case]
    with FakeTensorMode() as mode:
        fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        with pytest.raises((RuntimeError, ValueError)):
            torch.ops.pyddpm.reverse_step(*fake)


def test_fake_kernel_accepts_good_input():
    with FakeTensorMode() as mode:
        out = torch.ops.pyddpm.reverse_step(mode.from_tensor(x), mode.from_tensor(e), mode.from_tensor(z),
                                            COEF, False, -1, 1, 0)
    assert out.shape == x.shape and out.dtype == x.dtype


def schedule(steps, device="cpu"):
    coefs = [ops.StepCoefficients(*COEF[:3])] * len(steps)
    table = torch.tensor([COEF] * len(steps), dtype=torch.float32, device=device)
    return step_schedule.StepSchedule(table, torch.tensor(steps, dtype=torch.int64, device=device),
                            torch.zeros((), dtype=torch.int64, device=device), coefs[0].clip)


@pytest.mark.parametrize("steps", [[-5], [2**40], [3, 2**32]])
def test_scheduled_step_refuses_philox_steps_out_of_range(spy, steps):
    s = schedule(steps)
    with pytest.raises(ValueError, match=r"Philox steps in \[0, 2\*\*32\)"):
        step_schedule.reverse_step_scheduled(x.clone(), e, s, seed=1)
    with pytest.raises(ValueError, match=r"Philox steps in \[0, 2\*\*32\)"):
        torch.ops.pyddpm.reverse_step_scheduled(x.clone(), e, [], s.table, s.steps, s.index, False, 1, 0)
    assert spy.launches == 0


@pytest.mark.parametrize("bad", ["table shape", "table dtype", "steps length", "index shape", "smaller eps_hat",
                                 "nan table"])
def test_scheduled_op_refuses_a_bad_schedule(spy, bad):
    s = schedule([3, 2])
    table, steps, index, eps = s.table, s.steps, s.index, e
    if bad == "table shape":
        table = table[:, :8].contiguous()
    elif bad == "table dtype":
        table = table.double()
    elif bad == "steps length":
        steps = steps[:1]
    elif bad == "index shape":
        index = index.reshape(1)
    elif bad == "smaller eps_hat":
        eps = e[:2]
    else:
        table = table.clone()
        table[1, 0] = float("nan")
    with pytest.raises(ValueError, match="schedule|eps_hat"):
        torch.ops.pyddpm.reverse_step_scheduled(x.clone(), eps, [], table, steps, index, False, 1, 0)
    assert spy.launches == 0


def test_scheduled_op_equals_the_public_call():
    s = schedule([3, 2])
    want = ops.reverse_step(x, e, ops.StepCoefficients(*COEF[:3]), seed=9, step=3)
    got = x.clone()
    torch.ops.pyddpm.reverse_step_scheduled(got, e, [], s.table, s.steps, s.index, False, 9, 0)
    assert torch.equal(got, want)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (a CPU tensor beside a CUDA one)")
@pytest.mark.parametrize("which", ["eps_hat", "noise"])
def test_a_cpu_tensor_beside_a_cuda_one_is_refused(spy, which):
    xc, ec, zc = (t.cuda() for t in tensors())
    args = {"eps_hat": (xc, e, zc), "noise": (xc, ec, z)}[which]
    with pytest.raises(ValueError, match=f"{which} must be on the device of x_t"):
        torch.ops.pyddpm.reverse_step(*args, COEF, False, -1, 1, 0)
    s = schedule([3])
    with pytest.raises(ValueError, match="schedule.table must be"):
        step_schedule.reverse_step_scheduled(xc, ec, s, seed=1)
    assert spy.launches == 0
