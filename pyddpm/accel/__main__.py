"""python -m pyddpm.accel NETWORK [--precision fp32|bf16]: the levers a network gets on this CPU, for sampling and
for training. NETWORK is a run directory (pyddpm-train's --out) or a network name (fc, unet, unet-ddpm with their
default settings)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..nets import NETWORKS, build_network
from .levers import CPU_CLASSES, levers_for, native_bf16


def _network(name: str):
    if name == "fc":  # the default toy network (pyddpm-train --data cb)
        return build_network("fc", input_dim=2, num_hidden=256, num_layers=4, activation="silu",
                             time_embedding="sinusoidal", input_embedding="fourier"), name
    if name in NETWORKS:
        return build_network(name), name
    if name == "ddpm-unet":
        return build_network("unet-ddpm"), name
    from ..store import load_model  # a run directory
    path = Path(name)
    if not path.is_dir():
        raise SystemExit(f"NETWORK: {name!r} is neither a run directory nor one of {', '.join(NETWORKS)}")
    model, _ = load_model(path, "cpu")
    return model.network, str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyddpm.accel", description=__doc__.split("\n\n")[0])
    p.add_argument("network", help="a run directory, or fc, unet, unet-ddpm (ddpm-unet)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="(default fp32)")
    args = p.parse_args(argv)
    network, label = _network(args.network)
    this_cpu = [name for name, (_, test) in CPU_CLASSES.items() if test()]
    print(f"{label} ({type(network).__name__}), {args.precision}, on this CPU: torch's "
          f"{torch.backends.cpu.get_cpu_capability()}; classes {', '.join(this_cpu)}")
    if args.precision == "bf16" and not native_bf16("cpu"):
        print("bf16 is refused on this CPU (no AVX512-BF16 or AMX): no levers")
        return 0
    for purpose in ("sample", "train"):
        levers = levers_for(network, args.precision, purpose)
        print(f"\n{purpose}: {len(levers)} lever(s)" + ("" if levers else " (the network runs as it is)"))
        for lv in levers:
            print(f"  {lv.name:20s} {lv.kind:13s} replaces {'/'.join(c.__name__ for c in lv.replaces)}"
                  + (f" + {'/'.join(c.__name__ for c in lv.followed_by)}" if lv.followed_by else "")
                  + f": {lv.does}\n  {'':20s} {'':13s} gain: {lv.gain} ({lv.measured})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
