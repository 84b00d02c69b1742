"""Time the JavaScript samplers beside pyddpm's on one trained run: ms per reverse step of

    eager     pyddpm.samplers.ddpm_sample, what pyddpm-sample runs (network in eager PyTorch + the fused step)
    node      export/js/sample.mjs --time (onnxruntime-node; the JS Philox noise included), median over its steps
    browser   the demo page export/js/demo/index.html in headless Chromium (onnxruntime-web, wasm, one thread),
              its msPerStep: sampling time without drawing, per step

Each backend samples --num samples in one batch with seed 0; the median over --repeats runs is shown. The run is
exported into a temporary directory first. Needs `npm ci` in export/js and Chromium (--chromium).

    python benchmarks/bench_js.py RUN_DIR [--num 1000] [--repeats 3] [--threads N] [--chromium /usr/bin/chromium]
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import re
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from pyddpm.store import load_model
from pyddpm.export import export_run
from pyddpm.samplers import ddpm_sample

JS = Path(__file__).resolve().parents[1] / "export" / "js"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def eager_ms(run: Path, num: int, repeats: int) -> float:
    model, config = load_model(run, "cpu")
    shape = (num, *config["data"]["shape"])
    times = []
    with torch.no_grad():
        ddpm_sample(model, shape, seed=0)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            ddpm_sample(model, shape, seed=0)
            times.append((time.perf_counter() - start) / model.T * 1e3)
    return statistics.median(times)


def node_ms(out: Path, num: int, repeats: int, threads: int, tmp: Path) -> float:
    times = []
    for _ in range(repeats):
        result = subprocess.run(["node", str(JS / "sample.mjs"), str(out), "--num", str(num), "--batch-size", str(num),
                                 "--threads", str(threads), "--out", str(tmp / "node.npy"), "--time"],
                                check=True, capture_output=True, text=True)
        times.append(float(re.search(r"ms/step ([0-9.]+)", result.stdout).group(1)))
    return statistics.median(times)


def browser_ms(out: Path, num: int, repeats: int, chromium: str, tmp: Path) -> float:
    root = tmp / "www"
    root.mkdir()
    (root / "js").symlink_to(JS, target_is_directory=True)
    (root / "model").symlink_to(out.resolve(), target_is_directory=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/js/demo/index.html?model=../../model/&num={num}&batch={num}"
    times = []
    try:
        for _ in range(repeats):
            subprocess.run(["node", str(JS / "demo" / "headless.mjs"), url, "--out", str(tmp / "page.json"),
                            "--chromium", chromium, "--timeout-ms", "600000"], check=True, capture_output=True)
            times.append(json.loads((tmp / "page.json").read_text())["msPerStep"])
    finally:
        server.shutdown()
        server.server_close()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory written by pyddpm-train")
    p.add_argument("--num", type=int, default=1000, help="samples, one batch (default 1000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per backend; the median is shown (default 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads for torch and onnxruntime-node (default torch's; the browser uses one)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable (default /usr/bin/chromium)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_run(args.run_dir, tmp / "export", formats=["onnx"])
        node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads; torch {torch.__version__}, "
              f"node {node_version}; batch {args.num}, median of {args.repeats}")
        rows = [("eager", eager_ms(Path(args.run_dir), args.num, args.repeats)),
                ("node", node_ms(tmp / "export", args.num, args.repeats, args.threads, tmp)),
                ("browser", browser_ms(tmp / "export", args.num, args.repeats, args.chromium, tmp))]
    print(f"{'backend':<10} {'ms/step':>10} {'vs eager':>9}")
    for backend, ms in rows:
        print(f"{backend:<10} {ms:>10.3f} {rows[0][1] / ms:>8.2f}x")


if __name__ == "__main__":
    main()
