"""`pyddpm-classifier`: train the MNIST (or Fashion-MNIST) classifier that pyddpm-eval's Frechet distance,
label histogram and confidence use, and cache it with its SHA-256."""
from __future__ import annotations

import argparse
import sys

from ..data import DataError
from ..evaluate.classifier import MIN_TEST_ACCURACY, checksum_path, default_classifier_path, save_classifier, train_classifier
from ..schema import MAX_EPOCHS
from .common import check_int, check_output_file, pick_device



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyddpm-classifier",
                                description="Train the classifier that pyddpm-eval's Frechet distance, label histogram "
                                            "and confidence use, and cache it with its SHA-256.")
    p.add_argument("--data", default="mnist", help="mnist or fashion-mnist (default mnist)")
    p.add_argument("--data-dir", default=None,
                   help="directory with the IDX files (default: the data set's usual place)")
    p.add_argument("--out", default=None, help="classifier file (default ~/.cache/pyddpm/DATA-classifier.safetensors; "
                                              "$PYDDPM_CACHE or $XDG_CACHE_HOME move it)")
    p.add_argument("--epochs", type=int, default=8, help="passes over the training split (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of initial weights, order and augmentation (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_int("--epochs", args.epochs, 1, MAX_EPOCHS)
        check_int("--seed", args.seed, 0, 2**63 - 1)
        device = pick_device(args.device)
        out = check_output_file(args.out or default_classifier_path(args.data), "--out")
        model, info = train_classifier(args.data, args.data_dir, epochs=args.epochs, seed=args.seed,
                                       device=device)
        need = MIN_TEST_ACCURACY[info["data"]]
        if info["test_accuracy"] < need:
            raise ValueError(f"test accuracy {info['test_accuracy']:.2%} is below the required {need:.0%}; "
                             "nothing was written: train longer with --epochs")
        digest = save_classifier(model, out, info)
    except (DataError, ValueError) as err:
        print(f"classifier: error: {err}", file=sys.stderr)
        return 2
    print(f"test accuracy {info['test_accuracy']:.2%} ({info['train_seconds']:.0f} s); wrote {out} "
          f"(sha256 {digest[:16]}...) and {checksum_path(out).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
