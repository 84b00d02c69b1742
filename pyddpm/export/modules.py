"""The modules that are exported: the denoiser, the reverse step and the few-step solver step (to ONNX and
TorchScript) and the TorchScript sampler around them.

Time convention of every exported artefact: ``t`` is the 1-based step of Algorithm 2, an int64 tensor of shape
(batch,) with values in 1..T. The network sees (t - 1) / T with shape (batch, 1) (``diffusion.network_time``, as
``DDPM.time_input`` feeds it). The step maps x_t to x_{t-1}; sampling starts from x_T ~ N(0, I) and applies it for t = T, ..., 1;
z is ignored at t = 1 (sigma_1 = 0).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..diffusion import network_time
from ..nets.rewrite import replace_modules
from ..schedules import StepCoefficients
from .noise import PhiloxNormal


class StableLogSigmoid(nn.Module):
    """log sigmoid(x) as -softplus(-x). The exporters write nn.LogSigmoid as Log(Sigmoid(x)), which is -inf once
    Sigmoid underflows (x < -88 in float32; a trained exercise U-Net reaches -145), and then NaN downstream;
    ONNX Softplus and torch's softplus stay finite and exact there."""

    def forward(self, x: Tensor) -> Tensor:
        return -F.softplus(-x)


def stable_for_export(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with every activation the exporters translate unstably replaced by a stable
    equivalent (the same function); ``network`` itself when it has none, and is left as it is either way."""
    return replace_modules(network, lambda m: StableLogSigmoid() if type(m) is nn.LogSigmoid else None)


class Denoiser(nn.Module):
    """eps_theta(x_t, t) for 1-based integer steps t of shape (batch,); any network pyddpm trains, with its
    activations in the stable form of ``stable_for_export``."""

    def __init__(self, network: nn.Module, T: int):
        super().__init__()
        self.network = stable_for_export(network)
        self.T = T

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.network(x_t, network_time(t, self.T))


class ReverseStep(nn.Module):
    """x_{t-1} = a_t x_t + b_t eps_theta(x_t, t) + sigma_t z (Alg. 2 line 4 with a_t = 1 / sqrt(alpha_t),
    b_t = -beta_t / (sqrt(1 - abar_t) sqrt(alpha_t))), the per-step scalars baked in as float32 tables indexed
    by t - 1, evaluated in the fused kernel's order: (a x_t + b eps_hat) + sigma z."""

    def __init__(self, denoiser: Denoiser, coefs: list[StepCoefficients]):
        super().__init__()
        if any(c.clip for c in coefs):
            raise ValueError("the exported step is Algorithm 2 without clipping; got clipped coefficients")
        self.denoiser = denoiser
        for name in ("a", "b", "sigma"):
            self.register_buffer(name, torch.tensor([getattr(c, name) for c in coefs], dtype=torch.float32))

    def forward(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        eps_hat = self.denoiser(x_t, t)
        shape = [-1] + [1] * (x_t.dim() - 1)
        i = t - 1
        return (self.a[i].reshape(shape) * x_t + self.b[i].reshape(shape) * eps_hat) + self.sigma[i].reshape(shape) * z


def solver_update(x: Tensor, eps: Tensor, z: Tensor, h: Tensor, row: Tensor, clip: Tensor) -> Tuple[Tensor, Tensor]:
    """One call of a few-step plan after the network (docs/export.md), in the fused kernel's float32
    order: d = p x + q eps (clamped to [lo, hi] where ``clip``); x_next = a x + b eps, + c d, + h_k H_k for
    k = 0, 1, 2, + sigma z; the history shifts to [d, H_0, H_1]. ``row`` holds [a, b, sigma, c, p, q, lo, hi,
    h_0, h_1, h_2]; ``h`` (batch, 3, *x.shape[1:]) the buffers H_k (zero at the start; unused ones meet h_k = 0)."""
    d = row[4] * x + row[5] * eps
    d = torch.where(clip, torch.clamp(d, row[6], row[7]), d)
    v = row[0] * x + row[1] * eps
    v = v + row[3] * d
    v = v + row[8] * h[:, 0]
    v = v + row[9] * h[:, 1]
    v = v + row[10] * h[:, 2]
    v = v + row[2] * z
    return v, torch.cat([d.unsqueeze(1), h[:, :2]], 1)


class SolverStep(nn.Module):
    """``solver_step.onnx``: (x, t, z, h, row, clip) -> (x_next, h_next), one network call of any few-step plan,
    eps_hat = eps_theta(x, t) at the 1-based step t (batch,) and then ``solver_update``."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, t: Tensor, z: Tensor, h: Tensor, row: Tensor, clip: Tensor) -> Tuple[Tensor, Tensor]:
        return solver_update(x, self.denoiser(x, t), z, h, row, clip)


class ScriptDenoiser(nn.Module):
    """``denoiser.pt``: forward(x_t, t) = eps_theta(x_t, t). Carries what a host needs to run Algorithm 2 itself:
    attributes T, sample_shape, center, scale, clamp_output, value_lo, value_hi, the step tables ``step.a``,
    ``step.b``, ``step.sigma`` and the methods ``denoise`` (= forward) and ``to_data``; and the export's few-step
    plans (``pyddpm.export.plans``): ``plan_names`` ("SAMPLER:STEPS"), ``plan_timesteps`` (int64), ``plan_rows``
    (float32, steps x 11), ``plan_clip``, ``plan_history`` (K), ``default_sampler`` (what --steps alone runs), ``default_steps`` (what --sampler alone runs), ``default_plan`` (what a
    host runs without flags, "SAMPLER:STEPS") and the method ``solver_step`` (= solver_step.onnx)."""

    def __init__(self, step: ReverseStep, sample_shape: list[int], center: float, scale: float,
                 value_range: list[float] | None, plans: list[dict], default: dict, default_sampler: str, default_steps: int):
        super().__init__()
        self.step = step
        self.solver = SolverStep(step.denoiser)
        self.plan_names = torch.jit.Attribute([plan_name(p["sampler"], p["steps"]) for p in plans], List[str])
        self.plan_timesteps = torch.jit.Attribute([torch.tensor(p["timesteps"], dtype=torch.int64) for p in plans],
                                                  List[Tensor])
        self.plan_rows = torch.jit.Attribute([torch.tensor(p["rows"], dtype=torch.float32) for p in plans],
                                             List[Tensor])
        self.plan_clip = torch.jit.Attribute([bool(p["clip"]) for p in plans], List[bool])
        self.plan_history = torch.jit.Attribute([int(p["history"]) for p in plans], List[int])
        self.default_sampler = default_sampler
        self.default_steps = int(default_steps)
        self.default_plan = plan_name(default["sampler"], default["steps"])
        self.T = step.denoiser.T
        self.sample_shape = [int(s) for s in sample_shape]
        self.center, self.scale = float(center), float(scale)
        self.clamp_output = value_range is not None
        self.value_lo, self.value_hi = (float(v) for v in (value_range or (0.0, 0.0)))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.step.denoiser(x_t, t)

    @torch.jit.export
    def denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """eps_theta(x_t, t), the same in denoiser.pt and sampler.pt."""
        return self.step.denoiser(x_t, t)

    @torch.jit.export
    def solver_step(self, x: Tensor, t: Tensor, z: Tensor, h: Tensor, row: Tensor,
                    clip: Tensor) -> Tuple[Tensor, Tensor]:
        """(x_next, h_next) of one call of a few-step plan, as solver_step.onnx computes it."""
        return self.solver(x, t, z, h, row, clip)

    @torch.jit.export
    def to_data(self, x: Tensor) -> Tensor:
        """Model space -> data space (x / scale + center), clamped to the value range for images, as
        ``pyddpm-sample`` writes samples."""
        x = x / self.scale + self.center
        if self.clamp_output:
            x = x.clamp(self.value_lo, self.value_hi)
        return x


class ScriptSampler(ScriptDenoiser):
    """``sampler.pt``: Algorithm 2 as one TorchScript module. forward(x_T, noise) -> x_0 (model space) with noise
    of shape (T, batch, *sample_shape), noise[t - 1] the z of step t; ``sample(num, seed, sample_offset)``
    draws x_T and every z by pyddpm's Philox rule, so it returns what ``pyddpm-sample --seed`` returns (before
    ``to_data``); ``reverse_step(x_t, t, z)`` is one step."""

    def __init__(self, step: ReverseStep, sample_shape: list[int], center: float, scale: float,
                 value_range: list[float] | None, plans: list[dict], default: dict, default_sampler: str,
                 default_steps: int):
        super().__init__(step, sample_shape, center, scale, value_range, plans, default, default_sampler,
                         default_steps)
        self.noise = PhiloxNormal()

    def forward(self, x_T: Tensor, noise: Tensor) -> Tensor:
        if noise.dim() != x_T.dim() + 1 or noise.shape[0] != self.T or noise.shape[1:] != x_T.shape:
            raise ValueError("noise must have shape (T, *x_T.shape) with noise[t - 1] the z of step t")
        x = x_T
        for t in range(self.T, 0, -1):
            x = self.step(x, torch.full([x.shape[0]], t, dtype=torch.int64, device=x.device), noise[t - 1])
        return x

    @torch.jit.export
    def reverse_step(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """x_{t-1} from x_t, the 1-based steps t (batch,) and z, as step.onnx computes it."""
        return self.step(x_t, t, z)

    @torch.jit.export
    def sample(self, num: int, seed: int, sample_offset: int = 0) -> Tensor:
        """x_0 (model space) of samples sample_offset .. sample_offset + num - 1 with pyddpm's Philox noise."""
        if num < 1 or seed < 0 or sample_offset < 0:
            raise ValueError("need num >= 1, seed >= 0 and sample_offset >= 0")
        device = self.step.a.device
        shape: List[int] = [num] + self.sample_shape
        x = self.noise(shape, seed, 0, sample_offset, device)  # x_T: step 0
        for t in range(self.T, 0, -1):
            z = self.noise(shape, seed, t, sample_offset, device) if t > 1 else torch.zeros_like(x)
            x = self.step(x, torch.full([num], t, dtype=torch.int64, device=device), z)
        return x

    @torch.jit.export
    def sample_plan(self, num: int, seed: int, sample_offset: int, name: str) -> Tensor:
        """x_0 (model space) of samples sample_offset .. sample_offset + num - 1 by the few-step plan ``name``
        ("SAMPLER:STEPS", one of ``plan_names``) with pyddpm's Philox noise: x_T at step 0, the z of call i at
        Philox step t_i, drawn only where sigma != 0."""
        if num < 1 or seed < 0 or sample_offset < 0:
            raise ValueError("need num >= 1, seed >= 0 and sample_offset >= 0")
        if name not in self.plan_names:
            raise ValueError("this export carries no plan " + name + "; export one with pyddpm-export RUN "
                             "--sampler NAME --steps N")
        k = self.plan_names.index(name)
        timesteps, rows = self.plan_timesteps[k], self.plan_rows[k]
        device = self.step.a.device
        shape: List[int] = [num] + self.sample_shape
        x = self.noise(shape, seed, 0, sample_offset, device)
        h = torch.zeros([num, 3] + self.sample_shape, device=device)
        clip = torch.tensor(self.plan_clip[k], device=device)
        for i in range(timesteps.shape[0]):
            t = int(timesteps[i])
            row = rows[i].to(device)
            z = self.noise(shape, seed, t, sample_offset, device) if float(row[2]) != 0.0 else torch.zeros_like(x)
            x, h = self.solver(x, torch.full([num], t, dtype=torch.int64, device=device), z, h, row, clip)
        return x


def plan_name(sampler: str, steps: int) -> str:
    """The key of a plan in the scripted modules: "SAMPLER:STEPS"."""
    return f"{sampler}:{int(steps)}"
