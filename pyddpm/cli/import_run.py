"""`pyddpm-import FILE --network fc|unet --out RUN`: turn a course model file into a pyddpm run directory.

FILE is what the course's ``ddpm.py`` saves, ``torch.save(model.state_dict())`` of ``DDPM(FcNetwork(D, H))`` or
``DDPM(Unet())`` (the course U-Net's ``_convs``/``_tconvs`` names are mapped to ``ExerciseUNet``'s). It is read
with ``torch.load(weights_only=True)``: a file holding anything but tensors is refused. T and the linear schedule's
ends are read from the file's ``beta``; the run directory then works with pyddpm-sample, -eval and -export.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..course import (COURSE_NETWORKS, CourseFileError, course_model, import_config, load_course_weights,
                      read_state_dict, schedule_of)
from ..store import CHECKPOINT_FILE, save_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyddpm-import", description=__doc__.split(": ", 1)[1].split("\n")[0],
                                epilog="then: pyddpm-sample RUN --trajectory trajectory.png; pyddpm-eval RUN; "
                                       "pyddpm-export RUN --out exported/")
    p.add_argument("file", help="the course's model file (a state_dict saved with torch.save)")
    p.add_argument("--network", required=True, choices=list(COURSE_NETWORKS),
                   help="fc: the course's FcNetwork; unet: the course's MNIST U-Net")
    p.add_argument("--data", choices=["tg", "cb", "mnist"], default=None,
                   help="the data set it was trained on (needed for 2-D models; default mnist for 784-d ones)")
    p.add_argument("--T", type=int, default=None, help="diffusion steps (default: the length of the file's beta)")
    p.add_argument("--out", required=True, help="run directory to write (must not hold a run yet)")
    return p


def infer_data(network: str, state: dict[str, torch.Tensor], data: str | None) -> str:
    """The data set of a course model: as given, mnist for the U-Net and 784-d FcNetworks, else an error."""
    first = state.get("network.network.0.weight")
    dims = None if first is None else first.shape[1] - 1
    if data is not None:
        return data
    if network == "unet" or dims == 784:
        return "mnist"
    raise ValueError(f"--data tg or --data cb is needed: the file holds a {dims}-d FcNetwork, which could be "
                     "either toy data set")


def import_course_file(path: str, network: str, out: str | Path, data: str | None = None,
                       T: int | None = None) -> dict:
    """Write the run directory ``out`` for the course model file ``path``; returns its config."""
    state = read_state_dict(path)
    file_T, beta_1, beta_T = schedule_of(state, path)
    if T is not None and T != file_T:
        raise ValueError(f"--T {T} does not match the file, whose beta schedule has {file_T} steps")
    data = infer_data(network, state, data)
    first = state.get("network.network.0.weight")
    hidden = first.shape[0] if network == "fc" and first is not None else 64
    model = course_model(network, data, T=file_T, beta_1=beta_1, beta_T=beta_T, num_hidden=hidden)
    load_course_weights(model, state, path)
    if not torch.allclose(state["beta"].double(), model.noise_schedule.beta, rtol=1e-5, atol=1e-8):
        raise CourseFileError(f"{path}'s beta is not the linear schedule {beta_1:g} .. {beta_T:g} in {file_T} "
                              "steps that pyddpm rebuilds; it cannot be imported faithfully")
    out = Path(out)
    if (out / CHECKPOINT_FILE).exists():
        raise ValueError(f"{out} already holds a run; choose another --out")
    config = import_config(network, data, model, str(path))
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(out, config, tensors, {"step": 0, "imported_from": str(path)})
    return config


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = import_course_file(args.file, args.network, args.out, args.data, args.T)
    except (CourseFileError, ValueError) as err:
        print(f"pyddpm-import: error: {err}", file=sys.stderr)
        return 2
    diff = config["diffusion"]
    print(f"wrote {args.out}: {config['data']['name']}, {args.network} network, T = {diff['T']}, beta "
          f"{diff['beta_1']:g} .. {diff['beta_T']:g}, data scale 2; try pyddpm-sample {args.out} --trajectory "
          "trajectory.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
