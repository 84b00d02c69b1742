"""The CPU a benchmark ran on, named the same way on every generated page."""
from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name, family and model (from /proc/cpuinfo), and torch's vector capability on it."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    name = info.get("model name", platform.processor() or platform.machine())
    if "cpu family" in info:
        name += f", family {info['cpu family']} model {info.get('model', '?')}"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"
