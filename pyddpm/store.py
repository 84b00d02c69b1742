"""The run directory format: ``config.json`` (rebuilds the model) and ``checkpoint.safetensors`` (weights + state),
written atomically and read back safely; the optimizer's state as safetensors-friendly tensors and JSON.

The checkpoint holds the sampling weights under ``model.`` (EMA weights when training used EMA), everything
needed to resume under ``train.``, and the config and training state as JSON in its metadata, so the one file
is self-contained: ``config.json`` is a copy for people and other tools, never read back (the checkpoint's
embedded config is the only source). Files are written to a temporary name and renamed (with the user's umask),
so a crash never leaves a half-written checkpoint, and loading never unpickles anything. On read, the config and
training state are checked against ``pyddpm.schema``, the tensor data against the SHA-256 in the metadata
(checkpoints written before it existed load without), and every weight's dtype, shape and finiteness against
the architecture.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .diffusion import DDPM
from .nets import build_network
from .families import model_family
from .schema import SchemaError, check_run_config, check_train_state

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = 1
CHECKSUM_KEY = "tensors_sha256"


class CheckpointError(RuntimeError):
    """A run directory that is missing, incomplete, corrupted or does not match its config."""


@dataclass
class Checkpoint:
    config: dict
    state: dict
    tensors: dict[str, torch.Tensor]

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix.`` with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; the file gets the mode open() would give it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_temporaries(run_dir: str | os.PathLike, names=(CHECKPOINT_FILE, CONFIG_FILE)) -> list[Path]:
    """Delete the temporaries ``.NAME.*.tmp`` that ``write_atomic`` leaves when a process is killed mid-write
    (for each file name in ``names``); returns the paths removed. Only for a run no other process writes."""
    removed = []
    for name in names:
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON, written atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_checkpoint(run_dir: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Atomically write ``checkpoint.safetensors`` (and ``config.json``) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {"pyddpm_format": str(FORMAT_VERSION), "config": json.dumps(config), "state": json.dumps(state),
                CHECKSUM_KEY: tensors_checksum(flat)}
    write_atomic(run_dir / CHECKPOINT_FILE, save_safetensors(flat, metadata=metadata))
    write_json(run_dir / CONFIG_FILE, config)
    return run_dir / CHECKPOINT_FILE


def read_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """The checkpoint of a run directory, with clear errors for a missing or corrupted one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist; train one with `pyddpm-train --out DIR`")
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a pyddpm run directory: it has no {CHECKPOINT_FILE}")
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
        metadata = read_safetensors_metadata(data)
        config = json.loads(metadata["config"])
        state = json.loads(metadata["state"])
        version = int(metadata.get("pyddpm_format", "0"))
    except (SafetensorError, KeyError, TypeError, ValueError, RecursionError) as err:
        raise CheckpointError(
            f"{path} is corrupted or truncated ({err}); it cannot be loaded. "
            "Re-run training, or restore the file from a backup"
        ) from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer pyddpm (format {metadata['pyddpm_format']}); upgrade pyddpm")
    if CHECKSUM_KEY in metadata and metadata[CHECKSUM_KEY] != tensors_checksum(tensors):
        raise CheckpointError(f"{path} is corrupted: its tensor data does not match the SHA-256 stored when it was "
                              "written (bit flips or tampering); restore the file from a backup or re-run training")
    try:
        check_run_config(config)
        check_train_state(state)
    except SchemaError as err:
        raise CheckpointError(f"corrupted run config: {err} (in {path})") from None
    return Checkpoint(config=config, state=state, tensors=tensors)


def read_safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` string table of a safetensors file's header (``ValueError`` if unreadable)."""
    if len(data) < 8:
        raise ValueError("file too short")
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("the header's __metadata__ is not a table of strings")
    return metadata


def build_model(config: dict) -> torch.nn.Module:
    """A fresh model as a run's config describes it: a ``DDPM`` (network and schedule), or the baseline of its
    ``model`` entry (a family of ``pyddpm.families``: the flow and VAE of ``pyddpm.baselines``)."""
    if "model" in config:
        return _build_baseline(config["model"])
    try:
        net, diff = config["network"], config["diffusion"]
        network = build_network(net["name"], **net["kwargs"])
        return DDPM(network, beta_1=diff["beta_1"], beta_T=diff["beta_T"], T=diff["T"],
                    schedule=diff["schedule"], variance=diff["variance"])
    except KeyError as err:
        raise CheckpointError(f"run config lacks the entry {err}; it was not written by pyddpm-train") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"corrupted run config: network or diffusion settings: {err}") from None


def _build_baseline(entry: dict) -> torch.nn.Module:
    try:
        return model_family(entry["name"])(**entry["kwargs"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"run config has a bad model entry {entry!r}: {err}") from None


def architecture(config: dict) -> dict:
    """The entry of a run config that fixes the weights' shapes: ``model`` (baselines) or ``network`` (DDPM)."""
    return config["model"] if "model" in config else config["network"]


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str,
                 mismatch: str = "does not match the architecture in its config",
                 error: type[Exception] = CheckpointError) -> None:
    """``model.load_state_dict(weights)`` after checking every tensor's name, dtype, shape and finiteness, with an
    ``error`` that says ``what`` ``mismatch`` and how the architectures differ."""
    missing, unexpected = set(model.state_dict()) - set(weights), set(weights) - set(model.state_dict())
    if missing or unexpected:
        raise error(f"{what} {mismatch}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for name, expected in model.state_dict().items():
        got = weights[name]
        if got.dtype != expected.dtype or got.shape != expected.shape:
            raise error(f"{what} {mismatch}: {name} is {got.dtype} {tuple(got.shape)}, the network needs "
                        f"{expected.dtype} {tuple(expected.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise error(f"{what} holds NaN or infinite weights ({name}); it cannot sample. Resume from an earlier "
                        "copy of the run, or re-run training")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise error(f"{what} {mismatch}: {err}") from None


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of a run directory (its sampling weights) in eval mode, and the run's config."""
    checkpoint = read_checkpoint(run_dir)
    model = build_model(checkpoint.config)
    load_weights(model, checkpoint.prefixed("model"), f"checkpoint in {str(run_dir)!r}")
    return model.to(device).eval(), checkpoint.config


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able settings."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    """Inverse of ``optimizer_tensors``; CheckpointError if the state does not fit the optimizer's parameters."""
    state: dict[int, dict] = {}
    try:
        for name, value in list(tensors.items()) + list(settings["scalars"].items()):
            pid, key = name.split(".", 1)
            state.setdefault(int(pid), {})[key] = value
        params = {pid: p for saved, group in zip(settings["param_groups"], optimizer.param_groups)
                  for pid, p in zip(saved["params"], group["params"])}
        for pid, entries in state.items():
            for key, value in entries.items():
                if torch.is_tensor(value) and value.dim() > 0 and (
                        value.shape != params[pid].shape or value.dtype != params[pid].dtype):
                    raise ValueError(f"state {pid}.{key} is {value.dtype} {tuple(value.shape)}, its parameter "
                                     f"{params[pid].dtype} {tuple(params[pid].shape)}")
        optimizer.load_state_dict({"state": state, "param_groups": settings["param_groups"]})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the optimizer state does not match the model: {err}") from None


STEPS_FILE = "steps.json"  # a run's tuned time steps (pyddpm.step_tuning)


def write_tuned_timesteps(run_dir: str | os.PathLike, sampler: str, timesteps: list[int], record: dict) -> Path:
    """Add the tuned ``timesteps`` of ``sampler`` (with ``record``: how they were chosen) to the run's steps.json."""
    path = Path(run_dir) / STEPS_FILE
    entries = _read_steps_file(path)
    entries[f"{sampler}/{len(timesteps)}"] = {"sampler": sampler, "timesteps": [int(t) for t in timesteps],
                                              "weights_sha256": _weights_digest(run_dir), **record}
    write_json(path, entries)
    return path


def tuned_timesteps(run_dir: str | os.PathLike) -> dict[tuple[str, int], list[int]]:
    """{(sampler, NFE): time steps} stored for the run's current weights (entries tuned for other weights, e.g.
    before a resumed run trained on, are left out); {} when there are none."""
    path = Path(run_dir) / STEPS_FILE
    digest = _weights_digest(run_dir) if path.is_file() else None
    out = {}
    for key, entry in _read_steps_file(path).items():
        if entry.get("weights_sha256") == digest:
            out[entry["sampler"], len(entry["timesteps"])] = entry["timesteps"]
    return out


def _weights_digest(run_dir) -> str | None:
    """The checkpoint's recorded tensor checksum (its safetensors metadata), or None without a readable one."""
    path = Path(run_dir) / CHECKPOINT_FILE
    try:
        return read_safetensors_metadata(path.read_bytes()).get(CHECKSUM_KEY)
    except (OSError, ValueError):
        return None


def _read_steps_file(path: Path) -> dict:
    """The entries of a steps.json, each checked (sampler a string, time steps decreasing positive ints); a file
    that is not such JSON raises CheckpointError naming it."""
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        for entry in entries.values():
            ts = entry["timesteps"]
            if not (isinstance(entry["sampler"], str) and ts and all(isinstance(t, int) and t >= 1 for t in ts)
                    and all(a > b for a, b in zip(ts, ts[1:]))):
                raise ValueError(entry)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path} is not a steps file pyddpm wrote ({err!r:.80}); delete it to sample with "
                              "the default spacing") from None
    return entries
