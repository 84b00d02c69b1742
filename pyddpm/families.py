"""Model families a run directory can hold besides the DDPM, under the name its config's ``model`` entry gives,
and the one way a registered model class is built from its stored settings.

The core never imports them: ``pyddpm.baselines`` registers the course's flow and VAE here when it is imported
(the pyddpm console scripts import it), and ``pyddpm.store`` rebuilds a run's model from this registry."""
from __future__ import annotations

from torch import nn

MODEL_FAMILIES: dict[str, type[nn.Module]] = {}


def build_registered(registry: dict[str, type[nn.Module]], kind: str, name: str, kwargs: dict) -> nn.Module:
    """``registry[name](**kwargs)`` with ValueErrors that name the ``kind``, the choices and the bad settings."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}")
    try:
        return registry[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad settings for {kind} {name!r}: {err}") from None


def register_family(name: str, cls: type[nn.Module]) -> None:
    """Make runs whose ``model`` entry is named ``name`` rebuild as ``cls(**kwargs)``."""
    MODEL_FAMILIES[name] = cls


def model_family(name) -> type[nn.Module]:
    """The class registered under ``name``; ValueError naming the choices and how to register the course's."""
    if name not in MODEL_FAMILIES:
        known = ", ".join(MODEL_FAMILIES) or "none registered"
        raise ValueError(f"unknown model {name!r} (known: {known}); runs of the course's flow and vae load after "
                         "`import pyddpm.baselines`, as the pyddpm commands do")
    return MODEL_FAMILIES[name]
