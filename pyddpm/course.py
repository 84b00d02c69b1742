"""The course's model files: ``torch.save(model.state_dict())`` of ``DDPM(FcNetwork(D, 64))`` or ``DDPM(Unet())``
with T = 1000, as the exercise's ``ddpm.py`` writes and reads them.

Files are read with ``torch.load(weights_only=True)`` and must hold tensors only; the course U-Net's parameter
names (``_convs``, ``_tconvs``) are mapped to ``ExerciseUNet``'s (``pyddpm.nets.unet.from_course_keys``) and
back, so a file pyddpm writes loads in the course's code and a student's file loads in pyddpm.
"""
from __future__ import annotations

import os
import pickle
import re

import torch

from . import __version__
from .data import canonical_name, data_config_entries, is_toy
from .data.mnist import IMAGE_SHAPE
from .diffusion import DDPM
from .nets import ExerciseUNet, FcNetwork
from .nets.unet import from_course_keys, to_course_keys
from .store import load_weights

COURSE_T = 1000  # ddpm.py: T = 1000 (DDPM's beta_1 = 1e-4, beta_T = 2e-2 defaults)
COURSE_HIDDEN = 64  # ddpm.py: num_hidden = 64
COURSE_NETWORKS = ("fc", "unet")
COURSE_DATA_SCALE = 2.0  # transform = lambda x: (x - 0.5) * 2.0, to [-1, 1]


class CourseFileError(ValueError):
    """A course model file that cannot be read safely or does not fit the network it is loaded into."""


def check_network(network: str, data: str) -> None:
    """ValueError naming ``--network`` unless it is a course network that fits the data set."""
    if network not in COURSE_NETWORKS:
        raise ValueError(f"--network must be one of {', '.join(COURSE_NETWORKS)}, got {network!r}")
    if network == "unet" and is_toy(data):
        raise ValueError(f"--network unet needs image data (--data mnist), not {data!r}")


def course_network(network: str, data: str, num_hidden: int = COURSE_HIDDEN) -> torch.nn.Module:
    """The exercise's network for ``data``: ``FcNetwork(D, 64)`` ([x, t] -> Linear -> ReLU -> Linear -> ReLU ->
    Linear) or the course U-Net (``ExerciseUNet()``, 28 x 28 images)."""
    check_network(network, data)
    if network == "unet":
        return ExerciseUNet()
    return FcNetwork(2 if is_toy(data) else IMAGE_SHAPE[1] * IMAGE_SHAPE[2], num_hidden)


def course_model(network: str, data: str, T: int = COURSE_T, beta_1: float = 1e-4, beta_T: float = 2e-2,
                 num_hidden: int = COURSE_HIDDEN) -> DDPM:
    """``DDPM(network, beta_1, beta_T, T)`` as the course builds it (linear schedule, sigma_t^2 = beta_t)."""
    return DDPM(course_network(network, data, num_hidden), beta_1=beta_1, beta_T=beta_T, T=T)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save(state_dict)`` file, loaded with ``weights_only=True`` (nothing but tensors,
    containers and numbers is unpickled); CourseFileError for a file that holds anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CourseFileError(f"model file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        reason = f"it holds a {found.group(1)}" if found else "it holds a type that is not a tensor"
        raise CourseFileError(
            f"{path} holds objects other than tensors, which pyddpm does not unpickle ({reason}; torch.load "
            f"with weights_only=True refused it); save torch.save(model.state_dict(), FILE), not the "
            "model") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CourseFileError(f"{path} is not a torch.save file ({err})") from None
    if not isinstance(state, dict) or not state:
        raise CourseFileError(f"{path} does not hold a state_dict (a dict of tensors), but {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CourseFileError(f"{path} holds entries that are not tensors: {bad[:5]}; pyddpm reads state_dict "
                              "files of tensors only")
    return state


def load_course_weights(model: DDPM, state: dict[str, torch.Tensor], what: str = "model file") -> None:
    """Load a course state_dict (course U-Net names accepted) into ``model`` strictly, with the checks of
    ``store.load_weights`` (names, dtypes, shapes, finite values) and a clear error."""
    load_weights(model, from_course_keys(state), what, error=CourseFileError,
                 mismatch=f"does not fit {type(model.network).__name__} (check --network and --data)")


def course_state_dict(model: DDPM) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` under the course's names (the course U-Net's ``_convs``/``_tconvs``), on the CPU."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return to_course_keys(state) if isinstance(model.network, ExerciseUNet) else state


def schedule_of(state: dict[str, torch.Tensor], what: str) -> tuple[int, float, float]:
    """(T, beta_1, beta_T) of a course state_dict, read from its ``beta`` buffer."""
    beta = state.get("beta")
    if beta is None or beta.dim() != 1 or len(beta) < 1:
        raise CourseFileError(f"{what} has no 1-D 'beta' schedule; it is not the state_dict of a course DDPM")
    # float32 buffers: 6 significant digits give back the float64 ends the course passed (1e-4, 2e-2)
    return len(beta), float(f"{float(beta[0]):.6g}"), float(f"{float(beta[-1]):.6g}")


def import_config(network: str, data: str, model: DDPM, source: str) -> dict:
    """A pyddpm run config (``pyddpm.store.build_model`` rebuilds ``model`` from it) for a course model."""
    data = canonical_name(data)
    net = model.network
    kwargs = ({"channels": [c[1 if i else 0].out_channels for i, c in enumerate(net.convs)],
               "image_shape": list(net.image_shape)} if network == "unet"
              else {"input_dim": net.input_dim, "num_hidden": net.network[0].out_features, "num_layers": 2, "activation": "relu",
                    "time_embedding": "linear"})
    shape = [2] if is_toy(data) else [IMAGE_SHAPE[1] * IMAGE_SHAPE[2]]
    return {
        "pyddpm_version": __version__,
        "imported_from": source,
        "diffusion": {"T": model.T, "schedule": "linear", "beta_1": model.beta_1, "beta_T": model.beta_T,
                      "variance": "beta"},
        "network": {"name": network, "kwargs": kwargs},
        "data": {"name": data, "shape": shape, "center": 0.5, "scale": COURSE_DATA_SCALE,
                 **data_config_entries(data)},
    }
