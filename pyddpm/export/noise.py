"""pyddpm's counter-based N(0, 1) noise in TorchScript-compatible torch ops, for the exported sampler.

The same rule as ``pyddpm.philox`` (spec there and in ``csrc/philox.h``), operation by operation, written so
``torch.jit.script`` compiles it: a scripted sampler then draws, for a seed, the x_T and z that ``pyddpm-sample``
draws, in any program that loads it (Python or C++) without pyddpm. u32 words live in int64 tensors; the
32 x 32-bit products are split into 16-bit halves so nothing overflows.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

from ..philox import COS_POLY, LN2_HI, LN2_LO, LOG_POLY, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, SIN_POLY


class PhiloxNormal(nn.Module):
    """``forward(shape, seed, step, sample_offset, device)``: z ~ N(0, I) of ``shape`` (dim 0 = batch; sample i
    has global index sample_offset + i), float32, exactly as ``pyddpm.philox.philox_normal``; step 0 is x_T,
    step t the z of the reverse step at t. The constants come from ``pyddpm.philox`` as TorchScript constants."""

    __constants__ = ["mask32", "chunk_groups", "m0", "m1", "w0", "w1", "ln2_hi", "ln2_lo", "sqrt2_bits", "log_desc", "sin_desc",
                     "cos_desc"]

    def __init__(self):
        super().__init__()
        self.mask32 = 0xFFFFFFFF
        self.chunk_groups = 1 << 19  # Philox calls evaluated at once
        self.m0, self.m1, self.w0, self.w1 = PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
        self.ln2_hi, self.ln2_lo = LN2_HI, LN2_LO
        self.sqrt2_bits = float.fromhex("0x1.6a09e6p+0")  # binary32 0x3fb504f3
        # Horner order: highest coefficient first
        self.log_desc = tuple(reversed(LOG_POLY))
        self.sin_desc = tuple(reversed(SIN_POLY))
        self.cos_desc = tuple(reversed(COS_POLY))

    def _mulhilo(self, m: int, c: Tensor) -> Tuple[Tensor, Tensor]:
        """High and low 32 bits of m * c for a u32 constant m and u32 words c."""
        m_hi, m_lo = m >> 16, m & 0xFFFF
        c_hi, c_lo = c >> 16, c & 0xFFFF
        mid = c_hi * m_lo + c_lo * m_hi
        low = c_lo * m_lo + ((mid & 0xFFFF) << 16)
        return c_hi * m_hi + (mid >> 16) + (low >> 32), low & self.mask32

    def _philox4x32_10(self, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int,
                       k1: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        for r in range(10):
            if r > 0:
                k0 = (k0 + self.w0) & self.mask32
                k1 = (k1 + self.w1) & self.mask32
            hi0, lo0 = self._mulhilo(self.m0, c0)
            hi1, lo1 = self._mulhilo(self.m1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        return c0, c1, c2, c3

    def _log_uniform(self, ra: Tensor) -> Tensor:
        """ln u1 for u1 = ((ra >> 8) + 1) 2**-24 by the exact reduction u1 = f 2**e and the spec's polynomial."""
        u1 = ((ra >> 8) + 1).to(torch.float32) * 2.0**-24
        # The spec's bit manipulation without reinterpreting bits (TorchScript cannot): u1 = m 2**(k - 1) with
        # m in [1, 2) (frexp is exact); big <=> m's mantissa field > 0x3504f3 <=> m > SQRT2_BITS (0x3fb504f3).
        mantissa, exponent = torch.frexp(u1)
        m = mantissa * 2.0
        big = m > self.sqrt2_bits
        f = torch.where(big, mantissa, m)
        e = (exponent - 1 + big.to(torch.int32)).to(torch.float32)
        x = f - 1.0
        z = x * x
        p = torch.full_like(x, self.log_desc[0])
        for c in self.log_desc[1:]:
            p = p * x + c
        y = (x * z) * p
        y = y + e * self.ln2_lo
        y = y - 0.5 * z
        return (x + y) + e * self.ln2_hi

    def _normal_pair(self, ra: Tensor, rb: Tensor) -> Tuple[Tensor, Tensor]:
        rho = torch.sqrt((-2.0 * self._log_uniform(ra)).to(torch.float64)).to(torch.float32)  # correctly rounded
        k = rb >> 8  # angle 2 pi k 2**-24 = pi/2 (q + x), reduced exactly to quarter turns
        q = (k + 0x200000) >> 22
        x = (k - (q << 22)).to(torch.float32) * 2.0**-22
        z = x * x
        s = torch.full_like(z, self.sin_desc[0])
        for c in self.sin_desc[1:]:
            s = s * z + c
        s = s * x
        c = torch.full_like(z, self.cos_desc[0])
        for k_ in self.cos_desc[1:]:
            c = c * z + k_
        c = c * z + 1.0
        odd = (q & 1).to(torch.bool)
        cos_mag, sin_mag = torch.where(odd, s, c), torch.where(odd, c, s)
        cos = torch.where(((q ^ (q >> 1)) & 1).to(torch.bool), -cos_mag, cos_mag)
        sin = torch.where((q & 2).to(torch.bool), -sin_mag, sin_mag)
        return rho * cos, rho * sin

    def forward(self, shape: List[int], seed: int, step: int, sample_offset: int, device: torch.device) -> Tensor:
        batch = shape[0]
        n = 1
        for s in shape[1:]:
            n *= s
        groups = (n + 3) // 4
        total = batch * groups  # Philox calls, flat: h = i * groups + g
        out = torch.empty([total, 4], dtype=torch.float32, device=device)
        for h0 in range(0, total, self.chunk_groups):
            h = torch.arange(h0, min(total, h0 + self.chunk_groups), dtype=torch.int64, device=device)
            i = sample_offset + torch.div(h, groups, rounding_mode="floor")
            r0, r1, r2, r3 = self._philox4x32_10(h % groups, i & self.mask32, i >> 32, torch.full_like(h, step),
                                                 seed & self.mask32, seed >> 32)
            n0, n1 = self._normal_pair(r0, r1)
            n2, n3 = self._normal_pair(r2, r3)
            out[h0:h0 + h.numel()] = torch.stack([n0, n1, n2, n3], -1)
        return out.view(batch, 4 * groups)[:, :n].reshape(shape)
