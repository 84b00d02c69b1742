"""Copies of a network with some of its modules replaced by others that compute the same function."""
from __future__ import annotations

import copy
from typing import Callable

from torch import nn


def replace_modules(network: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """A deep copy of ``network`` in which every submodule ``m`` with ``replacement(m)`` not None is replaced by
    it (children of a replaced module are not visited); ``network`` itself when nothing is replaced. The
    original is left as it is either way."""
    if all(replacement(m) is None for m in network.modules()):
        return network
    network = copy.deepcopy(network)
    _replace_children(network, replacement)
    return network


def _replace_children(module: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> None:
    for name, child in module.named_children():
        new = replacement(child)
        if new is None:
            _replace_children(child, replacement)
        else:
            setattr(module, name, new)
