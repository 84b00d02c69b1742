"""`pyddpm-export RUN_DIR --out DIR [--format onnx,torchscript] [--sampler NAME] [--steps N]`: export a trained run to ONNX and TorchScript.

Writes denoiser.onnx ((x_t, t) -> eps_hat) and step.onnx ((x_t, t, z) -> x_{t-1}, the schedule baked in), both
with a dynamic batch and pyddpm metadata, and denoiser.pt and sampler.pt (TorchScript). t is the 1-based step
of Algorithm 2 (int64, shape (batch,)); a host loops t = T..1. Beside them, solver_step.onnx ((x, t, z, h, row,
clip) -> (x_next, h_next)) takes one network call of a few-step plan; manifest.json carries the plan asked for
with --sampler/--steps and every sampler at 5, 8, 10 and 20 calls. Every file is checked and run once against
PyTorch before the command reports success.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from ..store import CheckpointError
from ..export import SAMPLERS, ExportError, export_run
from ..schedules import VARIANCES
from .common import check_int, check_output_dir

MAX_BATCH = 4096  # the example batch is traced and run once per file


def build_parser() -> argparse.ArgumentParser:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="pyddpm-export", description=summary.split(";")[0] + ".", epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory written by pyddpm-train")
    p.add_argument("--out", required=True, help="directory to write the exported files into (created if missing)")
    p.add_argument("--format", default="onnx,torchscript",
                   help="comma-separated formats: onnx (denoiser.onnx, step.onnx), torchscript (denoiser.pt, "
                        "sampler.pt) (default: both)")
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="reverse variance sigma_t^2 baked into the step (default: the run's, normally beta)")
    p.add_argument("--sampler", default=None,
                   help="the few-step sampler the export's hosts run by default, as pyddpm-sample's --sampler "
                        f"({', '.join(SAMPLERS)}; default: pyddpm-sample's)")
    p.add_argument("--steps", type=int, default=None,
                   help="its number of network calls, as pyddpm-sample's --steps (alone: pyddpm's default sampler "
                        "with N calls)")
    p.add_argument("--batch", type=int, default=4,
                   help=f"size of the random batch used to trace and validate, 2 to {MAX_BATCH} (default 4)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    try:
        check_int("--batch", args.batch, 2, MAX_BATCH)
        check_output_dir(args.out, "--out")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            written = export_run(args.run_dir, args.out, formats, args.variance, args.batch, args.sampler,
                                 args.steps)
    except (CheckpointError, ExportError, ValueError) as err:
        print(f"pyddpm-export: error: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"pyddpm-export: warning: {warning.message}", file=sys.stderr)
    for path, note in written:  # every model file is validated; the manifest's note says so for the set
        print(f"wrote {path} ({note})" if path.suffix == ".json" else f"wrote {path} ({note}; validated against PyTorch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
