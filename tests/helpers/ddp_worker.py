"""Run by tests/training/test_ddp.py under torchrun: trains with pyddpm-train's Trainer, then saves this rank's weights
(raw and EMA) as rank{RANK}.safetensors in the run directory, so the test can compare the ranks."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from pyddpm.cli.common import pick_device
from pyddpm.cli.train import build_parser, config_from_args, epoch_grid_writer
from pyddpm.train import Trainer


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    trainer = Trainer(cfg, Path(args.out), pick_device(args.device), resume=False)
    if not trainer.run(on_epoch_end=epoch_grid_writer(cfg)):
        return 130
    weights = {f"raw.{k}": v for k, v in trainer.model.state_dict().items()}
    weights.update({f"ema.{k}": v for k, v in trainer.sampling_model().state_dict().items()})
    save_file({k: v.contiguous() for k, v in weights.items()}, Path(args.out) / f"rank{trainer.rank}.safetensors")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
