"""Time the JavaScript samplers beside pyddpm's on one trained run: ms per network call of

    eager     pyddpm.samplers.ddpm_sample, what pyddpm-sample runs (network in eager PyTorch + the fused step)
    node      export/js/sample.mjs --time (onnxruntime-node; the JS Philox noise included), median over its calls
    browser   the demo page export/js/demo/index.html in headless Chromium (onnxruntime-web, wasm, one thread),
              its msPerStep: sampling time without drawing, per network call

each by Algorithm 2 (T calls) and by the few-step plan of --sampler with --steps calls (rows ending in "-plan";
default: the export's default sampler, 10 calls), with ms per sample beside. Each backend samples --num samples in
one batch with seed 0; the median over --repeats runs is shown. The run is exported (with --sampler/--steps) into a
temporary directory first. Needs `npm ci` in export/js and Chromium (--chromium).

    python benchmarks/bench_js.py RUN_DIR [--num 1000] [--repeats 3] [--threads N] [--steps 10] [--sampler NAME]
                                  [--chromium /usr/bin/chromium]
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
from bench_export import pyddpm_plan  # benchmarks/: pyddpm's own sampling of a plan, timed the same way

from pyddpm.store import load_model
from pyddpm.export import export_run
from pyddpm.samplers import ddpm_sample

JS = Path(__file__).resolve().parents[1] / "export" / "js"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def eager_ms(run: Path, num: int, repeats: int, plan: dict | None = None) -> float:
    """ms per network call of pyddpm's own sampling: Algorithm 2, or the plan {"sampler", "steps"}."""
    model, config = load_model(run, "cpu")
    shape = (num, *config["data"]["shape"])
    if plan:
        calls, draw = plan["steps"], lambda: pyddpm_plan(model, shape, plan["sampler"], plan["steps"])
    else:
        calls, draw = model.T, lambda: ddpm_sample(model, shape, seed=0, fast=True)
    times = []
    with torch.no_grad():
        draw()  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            draw()
            times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def node_ms(out: Path, num: int, repeats: int, threads: int, tmp: Path, plan_flags: list[str]) -> float:
    times = []
    for _ in range(repeats):
        result = subprocess.run(["node", str(JS / "sample.mjs"), str(out), "--num", str(num), "--batch-size", str(num),
                                 "--threads", str(threads), "--out", str(tmp / "node.npy"), "--time", *plan_flags],
                                check=True, capture_output=True, text=True)
        times.append(float(re.search(r"ms/step ([0-9.]+)", result.stdout).group(1)))
    return statistics.median(times)


def browser_ms(out: Path, num: int, repeats: int, chromium: str, tmp: Path, queries: list[str]) -> list[float]:
    """The demo page's msPerStep for each plan query ("sampler=ddpm", "sampler=S&steps=N"), medians."""
    root = tmp / "www"
    root.mkdir()
    (root / "js").symlink_to(JS, target_is_directory=True)
    (root / "model").symlink_to(out.resolve(), target_is_directory=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/js/demo/index.html?model=../../model/&num={num}&batch={num}"
    medians = []
    try:
        for query in queries:
            times = []
            for _ in range(repeats):
                subprocess.run(["node", str(JS / "demo" / "headless.mjs"), f"{base}&{query}", "--out",
                                str(tmp / "page.json"), "--chromium", chromium, "--timeout-ms", "600000"],
                               check=True, capture_output=True)
                times.append(json.loads((tmp / "page.json").read_text())["msPerStep"])
            medians.append(statistics.median(times))
    finally:
        server.shutdown()
        server.server_close()
    return medians


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory written by pyddpm-train")
    p.add_argument("--num", type=int, default=1000, help="samples, one batch (default 1000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per backend; the median is shown (default 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads for torch and onnxruntime-node (default torch's; the browser uses one)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable (default /usr/bin/chromium)")
    p.add_argument("--steps", type=int, default=10, help="network calls of the few-step plan (default 10)")
    p.add_argument("--sampler", default=None, help="the few-step sampler timed (default: the export's default)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_run(args.run_dir, tmp / "export", formats=["onnx"], sampler=args.sampler, steps=args.steps)
        plan = json.loads((tmp / "export" / "manifest.json").read_text())["solvers"]["default"]
        flags = ["--sampler", plan["sampler"], "--steps", str(plan["steps"])]
        T = json.loads((tmp / "export" / "manifest.json").read_text())["T"]
        node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads; torch {torch.__version__}, "
              f"node {node_version}; batch {args.num}, median of {args.repeats}; plan {plan['sampler']} with "
              f"{plan['steps']} calls, Algorithm 2 with T = {T}")
        browser, browser_plan = browser_ms(tmp / "export", args.num, args.repeats, args.chromium, tmp,
                                           ["sampler=ddpm&steps=", f"sampler={plan['sampler']}&steps={plan['steps']}"])
        rows = [("eager", eager_ms(Path(args.run_dir), args.num, args.repeats)),
                ("node", node_ms(tmp / "export", args.num, args.repeats, args.threads, tmp, ["--sampler", "ddpm"])),
                ("browser", browser),
                ("eager-plan", eager_ms(Path(args.run_dir), args.num, args.repeats, plan)),
                ("node-plan", node_ms(tmp / "export", args.num, args.repeats, args.threads, tmp, flags)),
                ("browser-plan", browser_plan)]
    eager = dict(rows)
    print(f"{'backend':<13} {'calls':>6} {'ms/call':>10} {'ms/sample':>10} {'vs eager':>9}")
    for backend, ms in rows:
        plan_row = backend.endswith("-plan")
        calls = plan["steps"] if plan_row else T
        print(f"{backend:<13} {calls:>6} {ms:>10.3f} {ms * calls / args.num:>10.4f} "
              f"{eager['eager-plan' if plan_row else 'eager'] / ms:>8.2f}x")


if __name__ == "__main__":
    main()
