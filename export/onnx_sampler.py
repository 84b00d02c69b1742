#!/usr/bin/env python3
"""Sample a pyddpm model exported to ONNX with numpy and onnxruntime only (no torch, no pyddpm).

    python onnx_sampler.py EXPORT_DIR --num 64 --seed 0 --out samples.npy [--sampler NAME] [--steps N]

EXPORT_DIR is what `pyddpm-export RUN --out EXPORT_DIR` wrote, or the path of step.onnx or denoiser.onnx (then
the update of Algorithm 2 is computed here from the coefficients in the manifest). --sampler/--steps are
pyddpm-sample's flags: a few-step plan the manifest carries, run by solver_step.onnx (--steps alone: the export's
default sampler; neither: the export's default plan; --sampler ddpm: Algorithm 2, step.onnx). The export's
manifest.json gives T, the sample shape, the plans, the map to data space and pixels, and the SHA-256 of each
file: a file that does not match is refused. x_T and every z are drawn with pyddpm's counter-based Philox rule
(a numpy port of pyddpm/philox.py, float32 operation by operation), so the same seed gives the samples
`pyddpm-sample RUN --seed S` (with the same --sampler/--steps) gives. Writes .npy (data space, as pyddpm-sample
writes it) or .png (images: the same grid as pyddpm-sample; 2-D points: a density histogram).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

EXPORT_FORMAT = "1"
MANIFEST = "manifest.json"
NOISE_SPEC = "pyddpm-philox4x32-10-boxmuller-1"
MAX_SAMPLES, MAX_T = 1_000_000, 100_000  # pyddpm's own limits (pyddpm/schema.py)
MAX_THREADS = 1024

# ---- pyddpm's noise rule (pyddpm/philox.py, csrc/philox.h), in numpy --------------------------------------
_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_M0, _M1 = _U64(0xD2511F53), _U64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_F32 = np.float32
_LN2_HI = _F32(float.fromhex("0x1.63p-1"))
_LN2_LO = _F32(float.fromhex("-0x1.bd0106p-13"))
_LOG_POLY = [_F32(float.fromhex(h)) for h in (
    "0x1.555554p-2", "-0x1.000226p-2", "0x1.99a008p-3", "-0x1.547244p-3",
    "0x1.22da1cp-3", "-0x1.0d8544p-3", "0x1.055b72p-3", "-0x1.38b582p-4")]
_SIN_POLY = [_F32(float.fromhex(h)) for h in ("0x1.921fb6p+0", "-0x1.4abbbap-1", "0x1.465ec6p-4", "-0x1.2d9bb6p-8")]
_COS_POLY = [_F32(float.fromhex(h)) for h in ("-0x1.3bd3ccp+0", "0x1.03c1dep-2", "-0x1.55c5ep-6", "0x1.d9d57ep-11")]


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of counters (uint64 arrays of u32 words) and key (k0, k1); the products are exact in uint64."""
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0, p1 = c0 * _M0, c2 * _M1
        c0, c1, c2, c3 = (p1 >> _U64(32)) ^ c1 ^ _U64(k0), p1 & _MASK32, (p0 >> _U64(32)) ^ c3 ^ _U64(k1), p0 & _MASK32
    return c0, c1, c2, c3


def _horner(coefficients, x):
    p = np.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p = p * x + c
    return p


def normal_pair(ra, rb):
    """(rho cos, rho sin) in float32 from two arrays of u32 words, one binary32 rounding per operation."""
    u1 = ((ra >> _U64(8)) + _U64(1)).astype(_F32) * _F32(2.0**-24)
    bits = u1.view(np.uint32)
    big = (bits & np.uint32(0x7FFFFF)) > np.uint32(0x3504F3)
    f = ((bits & np.uint32(0x7FFFFF)) | np.where(big, np.uint32(0x3F000000), np.uint32(0x3F800000))).view(_F32)
    e = ((bits >> np.uint32(23)).astype(np.int32) - np.where(big, 126, 127).astype(np.int32)).astype(_F32)
    x = f - _F32(1)
    z = x * x
    y = (x * z) * _horner(_LOG_POLY, x)
    y = y + e * _LN2_LO
    y = y - _F32(0.5) * z
    log_u1 = (x + y) + e * _LN2_HI
    rho = np.sqrt((_F32(-2) * log_u1).astype(np.float64)).astype(_F32)  # correctly rounded float32 sqrt
    k = (rb >> _U64(8)).astype(np.int64)
    q = (k + 0x200000) >> 22
    x = (k - (q << 22)).astype(_F32) * _F32(2.0**-22)
    z = x * x
    s = _horner(_SIN_POLY, z) * x
    c = _horner(_COS_POLY, z) * z + _F32(1)
    odd = (q & 1) == 1
    cos_mag, sin_mag = np.where(odd, s, c), np.where(odd, c, s)
    cos = np.where(((q ^ (q >> 1)) & 1) == 1, -cos_mag, cos_mag)
    sin = np.where((q & 2) != 0, -sin_mag, sin_mag)
    return rho * cos, rho * sin


def philox_normal(shape, seed: int, step: int, sample_offset: int = 0) -> np.ndarray:
    """z ~ N(0, I) of ``shape`` (dim 0 = batch, sample i = global index sample_offset + i), float32, as pyddpm."""
    batch, n = shape[0], math.prod(shape[1:])
    groups = (n + 3) // 4
    h = np.arange(batch * groups, dtype=np.uint64)
    i = _U64(sample_offset) + h // _U64(groups)
    r0, r1, r2, r3 = philox4x32_10(h % _U64(groups), i & _MASK32, i >> _U64(32), np.full_like(h, step),
                                   seed & 0xFFFFFFFF, seed >> 32)
    lanes = np.stack((*normal_pair(r0, r1), *normal_pair(r2, r3)), -1)
    return lanes.reshape(batch, 4 * groups)[:, :n].reshape(shape)


# ---- the exported model ------------------------------------------------------------------------------------
class SamplerError(RuntimeError):
    """A model that is not a usable pyddpm export, or bad arguments."""


def read_manifest(directory: Path) -> dict:
    """The export's manifest.json (pyddpm.export.manifest) after checking its format and noise rule."""
    path = directory / MANIFEST
    if not path.is_file():
        raise SamplerError(f"{directory} holds no {MANIFEST}, so it is not a pyddpm export (or predates the "
                           "manifest); export a trained run with `pyddpm-export RUN_DIR --out DIR`")
    try:
        manifest = json.loads(path.read_text())
        version, rule = manifest.get("pyddpm_export"), manifest.get("noise", {}).get("rule")
    except (ValueError, AttributeError) as err:
        raise SamplerError(f"{path} is not a pyddpm manifest ({err})") from None
    if version != EXPORT_FORMAT:
        raise SamplerError(f"{path} describes pyddpm export format {version}, this sampler reads format "
                           f"{EXPORT_FORMAT}; use the onnx_sampler.py of the pyddpm that exported it")
    if rule != NOISE_SPEC:
        raise SamplerError(f"{path} refers to noise rule {rule!r}; this sampler implements {NOISE_SPEC!r}")
    return manifest


def verified_bytes(path: Path, manifest: dict) -> bytes:
    """The bytes of ``path`` after checking them against the SHA-256 the manifest records for it."""
    entry = manifest.get("files", {}).get(path.name)
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise SamplerError(f"{path.name} is not listed in {path.parent / MANIFEST}; pass a file pyddpm-export wrote")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise SamplerError(f"{path.name} does not match its SHA-256 in {MANIFEST} (modified or corrupted since the "
                           f"export: {digest}, expected {entry['sha256']}); refusing to load it, export again")
    return data


ALGORITHM_2 = "ddpm"  # with all T steps: step.onnx, not a few-step plan
ROW = 11  # a plan's coefficients per call: a, b, sigma, c, p, q, lo, hi, h_0, h_1, h_2
HISTORY = 3  # the history buffers solver_step.onnx carries


def choose_plan(meta: dict, sampler: str | None, steps: int | None) -> dict | None:
    """The manifest's few-step plan for pyddpm-sample's flags --sampler/--steps (neither: the export's default;
    --steps alone: its default sampler; --sampler alone: its default steps), or None for Algorithm 2 (step.onnx);
    SamplerError naming the flag."""
    T, solvers = int(meta["T"]), meta.get("solvers")
    if steps is not None and not 1 <= steps <= T:
        raise SamplerError(f"--steps must be in [1, T = {T}], got {steps}")
    if solvers is None:  # an export that predates the few-step plans
        if sampler in (None, ALGORITHM_2) and steps in (None, T):
            return None
        raise SamplerError("this export carries no few-step plans (it predates them): re-export the run with "
                           "`pyddpm-export RUN --out DIR --sampler NAME --steps N`, or leave out --sampler/--steps")
    if sampler is None and steps is None:
        sampler, steps = solvers["default"]["sampler"], solvers["default"]["steps"]
    elif sampler is None:
        sampler = solvers["default_sampler"]
    if sampler == ALGORITHM_2 and steps in (None, T):
        return None
    if steps is None:  # a sampler alone: pyddpm-sample's default number of calls
        steps = solvers["default_steps"]
    plans = solvers["plans"]
    for plan in plans:
        if plan["sampler"] == sampler and plan["steps"] == steps:
            return plan
    carried = sorted({p["sampler"] for p in plans} | {ALGORITHM_2})
    if sampler not in carried:
        raise SamplerError(f"unknown --sampler {sampler!r}: this export carries {', '.join(carried)}")
    calls = sorted(p["steps"] for p in plans if p["sampler"] == sampler)
    raise SamplerError(f"this export carries --sampler {sampler} at --steps {', '.join(map(str, calls)) or T}, not "
                       f"{steps}: re-export the run with `pyddpm-export RUN --out DIR --sampler {sampler} --steps "
                       f"{steps}`")


class ExportedModel:
    """An export with its manifest.json: step.onnx or denoiser.onnx (Algorithm 2, ``step(x_t, t, z)`` is x_{t-1}),
    or solver_step.onnx with a few-step ``plan`` (``solver_step(x, t, z, h, row)`` is (x_next, h_next))."""

    def __init__(self, path: str | Path, threads: int = 0, sampler: str | None = None, steps: int | None = None):
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        if not path.exists():
            raise SamplerError(f"{path} does not exist; export a run with `pyddpm-export RUN_DIR --out DIR` and pass "
                               "DIR or DIR/step.onnx")
        meta = read_manifest(directory)
        try:
            self.T = int(meta["T"])
            # step.onnx or denoiser.onnx named without --sampler/--steps: Algorithm 2, as they always ran
            legacy = path.is_file() and path.name != "solver_step.onnx" and sampler is None and steps is None
            self.plan = None if legacy else choose_plan(meta, sampler, steps)
        except (KeyError, ValueError, TypeError) as err:
            raise SamplerError(f"{directory / MANIFEST}: incomplete or malformed pyddpm manifest ({err!r})") from None
        if path.is_dir():
            names = ("solver_step.onnx",) if self.plan else ("step.onnx", "denoiser.onnx")
            path = next((path / n for n in names if (path / n).is_file()), path / names[0])
        if not path.is_file():
            raise SamplerError(f"{path} does not exist; export a run with `pyddpm-export RUN_DIR --out DIR` and pass "
                               "DIR or DIR/step.onnx")
        model_bytes = verified_bytes(path, meta)
        try:
            import onnxruntime as ort
        except ImportError:
            raise SamplerError("onnxruntime is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises several types for unreadable files
            raise SamplerError(f"{path} is not a loadable ONNX model ({str(err).splitlines()[0]})") from None
        try:
            self.kind = meta["files"][path.name]["model"]
            self.shape = tuple(int(s) for s in meta["sample_shape"])
            to_data = meta["to_data"]
            self.center, self.scale = _F32(to_data["add"]), _F32(to_data["divide"])
            self.value_range = to_data["clamp"]
            self.pixels = meta["pixels"]
            self.image_shape = self.pixels["image_shape"] if self.pixels else None
            table = meta["step_coefficients"]
            self.a, self.b, self.sigma = (np.asarray(table[k], dtype=_F32) for k in ("a", "b", "sigma"))
            if self.plan:
                self.timesteps = [int(t) for t in self.plan["timesteps"]]
                self.rows = np.asarray(self.plan["rows"], dtype=_F32)
                self.clip = np.array(bool(self.plan["clip"]))
        except (KeyError, ValueError, TypeError) as err:
            raise SamplerError(f"{directory / MANIFEST}: incomplete or malformed pyddpm manifest ({err!r})") from None
        self._check_values(directory / MANIFEST)
        self._check_io(path)

    def _check_values(self, manifest: Path) -> None:
        """The manifest's numbers are usable: finite, in range, consistent (a checksum cannot vouch for them)."""
        problems = []
        if not 1 <= self.T <= MAX_T:
            problems.append(f"T = {self.T} is not in [1, {MAX_T}]")
        if not (np.isfinite(self.scale) and self.scale > 0 and np.isfinite(self.center)):
            problems.append(f"to_data must have a finite divide > 0 and a finite add, got {self.scale}, {self.center}")
        if self.value_range is not None and not (
                len(self.value_range) == 2 and all(np.isfinite(v) for v in self.value_range)
                and self.value_range[0] <= self.value_range[1]):
            problems.append(f"to_data.clamp must be null or [lo, hi] with finite lo <= hi, got {self.value_range}")
        if not all(np.isfinite(v).all() for v in (self.a, self.b, self.sigma)) or (self.sigma < 0).any():
            problems.append("step_coefficients must be finite, with sigma >= 0")
        if self.plan and not (self.rows.shape == (len(self.timesteps), ROW) and self.plan["steps"] == len(self.timesteps)
                              and all(1 <= t <= self.T for t in self.timesteps)
                              and np.isfinite(self.rows).all() and (self.rows[:, 2] >= 0).all()):
            problems.append(f"the plan {self.plan['sampler']} at {self.plan['steps']} steps needs that many time steps "
                            f"in [1, T] and rows of {ROW} finite coefficients with sigma >= 0")
        if problems:
            raise SamplerError(f"{manifest}: {problems[0]}")

    def _check_io(self, path: Path) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.plan and self.kind != "solver_step":
            raise SamplerError(f"{path} holds a pyddpm {self.kind!r} model; a few-step plan runs solver_step.onnx: "
                               "pass the export directory")
        names = {"step": ["x_t", "t", "z"], "denoiser": ["x_t", "t"],
                 "solver_step": ["x", "t", "z", "h", "row", "clip"]}.get(self.kind)
        if names is None or (self.kind == "solver_step" and not self.plan):
            raise SamplerError(f"{path} holds a pyddpm {self.kind!r} model; pass step.onnx or denoiser.onnx")
        if sorted(inputs) != sorted(names):
            raise SamplerError(f"{path} has inputs {sorted(inputs)}, a pyddpm {self.kind} has {names}")
        sample = ["batch", *self.shape]
        expected = {"t": ["batch"], "h": ["batch", HISTORY, *self.shape], "row": [ROW], "clip": []}
        for name in names:
            dims, want = inputs[name].shape, expected.get(name, sample)
            if len(dims) != len(want) or list(dims[1:]) != want[1:] or (name == "row" and dims != want):
                raise SamplerError(f"{path}: input {name} has shape {dims}, but the manifest's sample shape "
                                   f"{list(self.shape)} needs {want}")
        if len(self.a) != self.T or len(self.b) != self.T or len(self.sigma) != self.T:
            raise SamplerError(f"{path}: the manifest's step coefficients do not have T = {self.T} entries")

    def step(self, x: np.ndarray, t: int, z: np.ndarray) -> np.ndarray:
        """x_{t-1} for the 1-based step t: (a_t x_t + b_t eps_hat) + sigma_t z (Alg. 2 line 4)."""
        steps = np.full(x.shape[0], t, dtype=np.int64)
        if self.kind == "step":
            out = self.session.run(None, {"x_t": x, "t": steps, "z": z})[0]
        else:
            eps = self.session.run(None, {"x_t": x, "t": steps})[0]
            out = (self.a[t - 1] * x + self.b[t - 1] * eps) + self.sigma[t - 1] * z
        if out.shape != x.shape:
            raise SamplerError(f"the model returned shape {out.shape} for x_t of shape {x.shape}")
        return out

    def solver_step(self, x: np.ndarray, t: int, z: np.ndarray, h: np.ndarray, row: np.ndarray):
        """(x_next, h_next) of one call of the plan at the 1-based step t with its coefficient ``row``."""
        feeds = {"x": x, "t": np.full(x.shape[0], t, dtype=np.int64), "z": z, "h": h, "row": row, "clip": self.clip}
        out, h_next = self.session.run(None, feeds)
        if out.shape != x.shape or h_next.shape != h.shape:
            raise SamplerError(f"the model returned shapes {out.shape}, {h_next.shape} for x of shape {x.shape}")
        return out, h_next

    def to_data(self, x: np.ndarray) -> np.ndarray:
        """Model space -> data space (x / scale + center), clamped to the value range for images."""
        x = x / self.scale + self.center
        return np.clip(x, *self.value_range).astype(_F32) if self.value_range else x


def sample_batch(model: ExportedModel, shape: tuple, seed: int, start: int) -> np.ndarray:
    """x_0 (model space) of samples start .. start + shape[0] - 1: x_T at Philox step 0, then Algorithm 2 (z of
    step t at step t, zeros at t = 1) or the plan's calls (z of call i at step t_i, zeros where sigma = 0)."""
    x = philox_normal(shape, seed, 0, start)  # x_T (Alg. 2 line 1)
    if model.plan is None:
        for t in range(model.T, 0, -1):
            z = philox_normal(shape, seed, t, start) if t > 1 else np.zeros(shape, _F32)  # sigma_1 = 0
            x = model.step(x, t, z)
        return x
    h = np.zeros((shape[0], HISTORY, *shape[1:]), _F32)
    for t, row in zip(model.timesteps, model.rows):
        z = philox_normal(shape, seed, t, start) if row[2] != 0 else np.zeros(shape, _F32)
        x, h = model.solver_step(x, t, z, h, row)
    return x


def sample(model: ExportedModel, num: int, seed: int, batch_size: int = 10000) -> np.ndarray:
    """``num`` samples in data space by Algorithm 2 or the model's plan; sample i depends only on (seed, i)."""
    out = []
    for start in range(0, num, batch_size):
        shape = (min(batch_size, num - start), *model.shape)
        x = sample_batch(model, shape, seed, start)
        if not np.isfinite(x).all():
            raise SamplerError(f"samples {start}..{start + shape[0] - 1} came out NaN or infinite: the exported model "
                               "diverges; nothing was written")
        out.append(model.to_data(x))
    return np.concatenate(out)


# ---- output ------------------------------------------------------------------------------------------------
def write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 pixels (H, W) grayscale or (H, W, 3) RGB as a PNG, with the standard library only."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels, dtype=np.uint8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def image_grid(images: np.ndarray, pixels: dict) -> np.ndarray:
    """(n, C, H, W) data-space images as one uint8 grid with 2-pixel white borders (data value 1), as pyddpm-sample
    draws it, with the manifest's pixel mapping ``pixels``."""
    n, c, h, w = images.shape
    nrow = math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.ones((c, rows * (h + 2) + 2, nrow * (w + 2) + 2), dtype=_F32)
    for k in range(n):
        r, col = divmod(k, nrow)
        canvas[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = images[k]
    scaled = canvas.transpose(1, 2, 0) * _F32(pixels["multiply"])
    grid = np.clip(np.round(scaled) if pixels["round"] else scaled, *pixels["clamp"]).astype(pixels["dtype"])
    return grid[..., 0] if c == 1 else grid


def point_histogram(points: np.ndarray, size: int = 300) -> np.ndarray:
    """A grayscale 2-D histogram (log counts, white = dense, y up) of 2-D points over their range."""
    lo, hi = points.min(0), points.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cells = np.clip(((points - lo) / span * (size - 1)).astype(int), 0, size - 1)
    counts = np.zeros((size, size))
    np.add.at(counts, (size - 1 - cells[:, 1], cells[:, 0]), 1)
    return np.round(255 * np.log1p(counts) / max(np.log1p(counts).max(), 1e-12)).astype(np.uint8)


def save(samples: np.ndarray, model: ExportedModel, path: Path) -> None:
    """.npy (data space) or .png (image grid, or a histogram of 2-D points)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, samples)
    elif model.image_shape:
        write_png(path, image_grid(samples.reshape(-1, *model.image_shape), model.pixels))
    elif samples.ndim == 2 and samples.shape[1] == 2:
        write_png(path, point_histogram(samples))
    else:
        raise SamplerError(f"no picture for samples of shape {samples.shape[1:]}; write .npy instead")


def check_output_path(path: Path) -> None:
    """SamplerError naming --out unless a file can be written at ``path`` (checked before any sampling)."""
    if path.is_dir():
        raise SamplerError(f"--out {str(path)!r} is a directory; give a file name")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SamplerError(f"--out {str(path)!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK):
        raise SamplerError(f"--out {str(path)!r}: {str(ancestor)!r} is not writable")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnx_sampler.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="export directory (uses solver_step.onnx for a few-step plan, step.onnx for "
                                 "Algorithm 2) or the path of step.onnx or denoiser.onnx")
    p.add_argument("--num", type=int, default=1000, help=f"number of samples, at most {MAX_SAMPLES} (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; sample i depends only on (seed, i) (default 0)")
    p.add_argument("--out", default="samples.png", help="output file: .npy (data space) or .png (default samples.png)")
    p.add_argument("--sampler", default=None,
                   help="few-step sampler, as pyddpm-sample's --sampler: one the export carries (manifest.json's "
                        "solvers; ddpm is Algorithm 2) (default: the export's)")
    p.add_argument("--steps", type=int, default=None,
                   help="its number of network calls, as pyddpm-sample's --steps; alone: the export's default "
                        "sampler (default: the export's)")
    p.add_argument("--batch-size", type=int, default=10000, help="samples per batch (default 10000)")
    p.add_argument("--threads", type=int, default=0,
                   help=f"onnxruntime intra-op threads, 0..{MAX_THREADS} (default 0: its choice)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        if out.suffix.lower() not in (".npy", ".png"):
            raise SamplerError(f"--out must end in .npy or .png, got {str(out)!r}")
        check_output_path(out)
        if not 1 <= args.num <= MAX_SAMPLES:
            raise SamplerError(f"--num must be positive and at most {MAX_SAMPLES}, got {args.num}")
        if not 1 <= args.batch_size <= MAX_SAMPLES:
            raise SamplerError(f"--batch-size must be positive and at most {MAX_SAMPLES}, got {args.batch_size}")
        if not 0 <= args.seed < 2**63:
            raise SamplerError(f"--seed must be in [0, 2**63), got {args.seed}")
        if not 0 <= args.threads <= MAX_THREADS:
            raise SamplerError(f"--threads must be in [0, {MAX_THREADS}] (0: onnxruntime's choice), got {args.threads}")
        model = ExportedModel(args.model, args.threads, args.sampler, args.steps)
        save(sample(model, args.num, args.seed, args.batch_size), model, out)
    except SamplerError as err:
        print(f"onnx_sampler.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} samples to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
