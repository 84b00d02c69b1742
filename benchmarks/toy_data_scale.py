"""How the data scale decides the Chequerboard's edges: train the default toy run at several scales.

The model sees (x - 0.5) * scale. Every run has the default budget of `pyddpm-train` (same network, steps,
seed); only --data-scale changes. Prints a table of the toy metrics per scale (quality, not speed).

    python benchmarks/toy_data_scale.py [--scales 2 8 16 32 64 128] [--data cb] [--out runs/scale-sweep]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyddpm.cli.train import main as train_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", type=float, nargs="+", default=[2, 8, 16, 32, 64, 128])
    p.add_argument("--data", default="cb")
    p.add_argument("--out", default="runs/scale-sweep")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more pyddpm-train flags")
    args = p.parse_args()
    rows = []
    for scale in args.scales:
        run = Path(args.out) / f"{args.data}-scale{scale:g}"
        if not (run / "metrics.json").exists():
            code = train_main(["--data", args.data, "--data-scale", str(scale), "--out", str(run), *args.extra])
            if code != 0:
                raise SystemExit(f"training at scale {scale} failed")
        rows.append((scale, json.loads((run / "metrics.json").read_text())))
    print(f"\n{args.data}: default pyddpm-train budget, one run per scale (seed 0)\n")
    if "support_fraction" in rows[0][1]:
        print("| scale | inside squares | min / max square mass | energy distance (floor) |")
        print("|---:|---:|---:|---:|")
        for scale, m in rows:
            print(f"| {scale:g} | {m['support_fraction']:.1%} | {min(m['square_mass']):.3f} / "
                  f"{max(m['square_mass']):.3f} | {m['energy_distance']:.2e} ({m['energy_distance_floor']:.2e}) |")
    else:
        print("| scale | mixture weights | mean log-density (true) | energy distance (floor) |")
        print("|---:|---:|---:|---:|")
        for scale, m in rows:
            w = m["mixture_weights"]
            print(f"| {scale:g} | {w[0]:.3f} / {w[1]:.3f} | {m['mean_log_prob']:.3f} ({m['true_mean_log_prob']:.3f}) | "
                  f"{m['energy_distance']:.2e} ({m['energy_distance_floor']:.2e}) |")


if __name__ == "__main__":
    main()
