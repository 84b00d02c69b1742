"""export/js: the Node.js sampler against pyddpm-sample (the same seed gives the same samples, scored the same on
the Chequerboard, by Algorithm 2 and every few-step sampler), its Philox port bit for bit against pyddpm's, its
refusal of files that do not match the manifest and of plans the export does not carry, and the demo page in
headless Chromium sampling an exported model (a 10-call plan, and Algorithm 2)."""
import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import pytest
import torch
from helpers.export_runs import (EXPORT_NETS, FEW_STEP, ROOT, exported, plan_flags, pyddpm_samples,
                         trained_run)
from PIL import Image

from pyddpm import philox
from pyddpm.data.toy import Chequerboard
from pyddpm.evaluate.toy import toy_metrics

NODE = shutil.which("node")
JS = ROOT / "export" / "js"
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (the JS sampler needs Node.js >= 20)")
SUPPORT_POINTS = 0.03  # the bound: support fraction within 3 points of pyddpm-sample's
# onnxruntime (Node: native CPU, browser: wasm) and PyTorch round the network's sums in different orders (~1e-7
# relative per call); the noise is the same bit for bit and the update the same float32 operations in the same
# order, so over the T steps (or a plan's 10 calls, coefficients below 2 here) of these tiny runs the samples stay
# far below 1e-4 apart in data space
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def node_modules():
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("export/js/node_modules is missing: run `npm ci` in export/js (.ci/run does this)")


def node(*args, cwd=None):
    return subprocess.run([NODE, *map(str, args)], capture_output=True, text=True, cwd=cwd or JS, timeout=300)


def js_samples(tmp_path, export_dir, num, seed, *extra):
    out = tmp_path / f"js-{seed}-{num}.npy"
    result = node(JS / "sample.mjs", export_dir, "--num", num, "--seed", seed, "--out", out, *extra)
    assert result.returncode == 0, result.stderr
    return np.load(out)


def support_fraction(samples) -> float:
    return toy_metrics(Chequerboard(), torch.from_numpy(samples))["support_fraction"]


def test_philox_port_is_bit_identical_to_pyddpm(tmp_path):
    cases = [((1, 8), 42, 0, 0), ((1, 8), 2**40 + 5, 7, 3), ((3, 7), 1, 2, 3), ((5, 2), 2**63 - 1, 2**32 - 1, 2**32 - 3),
             ((2, 1, 28, 28), 123, 17, 5), ((4, 3), 2**32, 1, 2**40)]
    words = (np.arange(0, 2**24, 89, dtype=np.int64) << 8) | 0xA5  # a spread of the 2**24 inputs of Box-Muller
    script = tmp_path / "noise.mjs"
    script.write_text(f"""
import {{ normalPair, philoxNormal }} from {json.dumps((JS / "sampler.mjs").as_uri())};
const bits = (a) => Array.from(new Int32Array(Float32Array.from(a).buffer));
const cases = {json.dumps([[list(shape), str(seed), step, str(offset)] for shape, seed, step, offset in cases])};
const noise = cases.map(([shape, seed, step, offset]) =>
  bits(philoxNormal(shape[0], shape.slice(1).reduce((a, b) => a * b, 1), BigInt(seed), step, BigInt(offset))));
const words = {json.dumps(words.tolist())};
const pairs = words.map((w, k) => normalPair(w, words[words.length - 1 - k]));
console.log(JSON.stringify({{ noise, cos: bits(pairs.map((p) => p[0])), sin: bits(pairs.map((p) => p[1])) }}));
""")
    result = node(script)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    for (shape, seed, step, offset), bits in zip(cases, got["noise"]):
        expected = philox.philox_normal(shape, seed, step, offset).view(torch.int32).flatten().tolist()
        assert bits == expected, (shape, seed, step, offset)
    t = torch.from_numpy(words)
    cos, sin = philox.normal_pair(t, t.flip(0))
    assert got["cos"] == cos.view(torch.int32).tolist() and got["sin"] == sin.view(torch.int32).tolist()


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_same_seed_same_samples_as_pyddpm_sample(net, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    num, seed = (5000, 5) if net == "toy" else (3, 11)
    expected = pyddpm_samples(run, tmp_path, num, seed)
    got = js_samples(tmp_path, out, num, seed, "--sampler", "ddpm")
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= ATOL
    if net == "toy":
        assert abs(support_fraction(got) - support_fraction(expected)) <= SUPPORT_POINTS
        # sample i depends only on (seed, i): other batch sizes, and a JSON output, give the same samples
        result = node(JS / "sample.mjs", out, "--num", 40, "--seed", seed, "--batch-size", 16, "--out",
                      tmp_path / "s.json", "--time", "--sampler", "ddpm")
        assert result.returncode == 0, result.stderr
        assert "ms/step" in result.stdout
        written = json.loads((tmp_path / "s.json").read_text())
        assert written["shape"] == [40, 2]
        assert np.abs(np.array(written["samples"], dtype=np.float32).reshape(40, 2) - got[:40]).max() <= 1e-6


@pytest.mark.parametrize("sampler", FEW_STEP)
def test_few_step_plans_give_pyddpm_sample_s_samples(sampler, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, "toy"), trained_run(tmp_path_factory, "toy")
    expected = pyddpm_samples(run, tmp_path, 2000, 6, *plan_flags(sampler, 10))
    got = js_samples(tmp_path, out, 2000, 6, "--batch-size", 700, *plan_flags(sampler, 10))
    assert got.shape == expected.shape and np.abs(got - expected).max() <= ATOL
    assert abs(support_fraction(got) - support_fraction(expected)) <= SUPPORT_POINTS


def test_plan_flags_that_the_export_does_not_carry_are_refused(tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    old = tmp_path / "old"  # an export that predates the plans
    shutil.copytree(out, old)
    manifest = json.loads((old / "manifest.json").read_text())
    default = manifest.pop("solvers")["default_sampler"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    cases = [
        ((out, "--sampler", "euler", "--steps", 10), "unknown --sampler euler: this export carries"),
        ((out, "--steps", 7), f"re-export the run with `pyddpm-export RUN --out DIR --sampler {default} --steps 7`"),
        ((out, "--steps", 31), "--steps must be an integer in [1, T = 30], got 31"),
        ((out, "--steps", 0), "--steps must be a positive integer"),
        ((old, "--steps", 10), "carries no few-step plans (it predates them)"),
    ]
    for args, message in cases:
        result = node(JS / "sample.mjs", *args, "--out", tmp_path / "x.npy")
        assert result.returncode == 2 and message in result.stderr and "    at " not in result.stderr, (
            args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.npy").exists()
    assert node(JS / "sample.mjs", old, "--num", 4, "--out", tmp_path / "a2.npy").returncode == 0


def modified_copy(out, target, names=("step.onnx", "solver_step.onnx")):
    """A copy of the export with the graphs ``names`` changed in a way that still loads (their doc string)."""
    shutil.copytree(out, target)
    for name in names:
        model = onnx.load(str(target / name))
        model.doc_string = "modified after the export"
        onnx.save(model, str(target / name))
    return target


def test_a_modified_file_and_bad_arguments_are_refused(tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    other_rule = tmp_path / "rule"
    shutil.copytree(out, other_rule)
    manifest = json.loads((other_rule / "manifest.json").read_text())
    manifest["noise"]["rule"] = "other-rng"
    (other_rule / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "empty").mkdir()
    cases = [
        ((modified_copy(out, tmp_path / "modified"),), "step.onnx does not match its SHA-256 in manifest.json"),
        ((tmp_path / "empty",), "holds no readable manifest.json"),
        ((other_rule,), "noise rule other-rng"),
        ((out, "--out", tmp_path / "s.txt"), "--out must end in .npy or .json"),
        ((out, "--num", 0), "--num must be a positive integer"),
        ((out, "--seed=-1"), "--seed must be in"),
        ((out, "--seed", 2**63), "--seed must be in"),
    ]
    for args, message in cases:
        default_out = [] if "--out" in args else ["--out", tmp_path / "s.npy"]
        result = node(JS / "sample.mjs", *args, *default_out)
        assert result.returncode == 2 and message in result.stderr and "    at " not in result.stderr, (
            args, result.stderr)
    assert not (tmp_path / "s.npy").exists()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """An http.server on localhost serving export/js as /js and the directory /model (filled by the test)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "js").symlink_to(JS, target_is_directory=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_page(base, tmp_path, query, screenshot=None, pick=None):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does this)")
    result_file = tmp_path / "page.json"
    result = node(JS / "demo" / "headless.mjs", f"{base}/js/demo/index.html?{query}", "--out", result_file,
                  *(["--screenshot", screenshot] if screenshot else []), *(["--pick", pick] if pick else []),
                  "--timeout-ms", 120000)
    return result, json.loads(result_file.read_text())


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_demo_page_samples_in_headless_chromium(net, served, tmp_path_factory, tmp_path):
    """The toy run by the export's default sampler in the form's 10 calls, drawn live; the U-Net by Algorithm 2."""
    root, base = served
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    (root / "model").symlink_to(out, target_is_directory=True)
    num, seed = (5000, 7) if net == "toy" else (4, 2)
    screenshot = tmp_path / f"demo-{net}.png"
    query = f"model=../../model/&num={num}&seed={seed}" + ("" if net == "toy" else "&sampler=ddpm&steps=")
    result, page = run_page(base, tmp_path, query, screenshot)
    assert result.returncode == 0 and page["state"] == "done", (result.stderr, page.get("message"))
    default = json.loads((out / "manifest.json").read_text())["solvers"]["default_sampler"]
    assert page["calls"] == (10 if net == "toy" else page["T"])
    expected = pyddpm_samples(run, tmp_path, num, seed, *plan_flags(default, 10)) if net == "toy" else pyddpm_samples(run, tmp_path, num, seed)
    got = np.array(page["samples"], dtype=np.float32).reshape(page["shape"])
    assert got.shape == expected.shape and np.abs(got - expected).max() <= ATOL
    if net == "toy":
        assert abs(support_fraction(got) - support_fraction(expected)) <= SUPPORT_POINTS
    assert page["T"] == json.loads((out / "manifest.json").read_text())["T"] and page["msPerStep"] > 0
    # the artefact: the page with the drawn samples (dark points or digits on the white canvas)
    shot = np.asarray(Image.open(screenshot).convert("L"))
    assert shot.shape[0] >= 560 and (shot < 128).sum() > 100
    print(f"demo page screenshot: {screenshot}")


def test_demo_page_refuses_a_modified_file(served, tmp_path_factory, tmp_path):
    root, base = served
    modified_copy(exported(tmp_path_factory, "toy"), root / "model", ["solver_step.onnx"])
    result, page = run_page(base, tmp_path, "model=../../model/&num=10")  # the form's 10 calls: solver_step.onnx
    assert result.returncode == 2 and page["state"] == "error" and page["samples"] is None
    assert "solver_step.onnx does not match its SHA-256 in manifest.json" in page["message"]


def test_demo_page_samples_a_picked_directory_in_batches(served, tmp_path_factory, tmp_path):
    _, base = served
    out, run = exported(tmp_path_factory, "toy"), trained_run(tmp_path_factory, "toy")
    result, page = run_page(base, tmp_path, f"num=40&seed=5&batch=16&sampler={FEW_STEP[0]}&steps=8", pick=out)
    assert result.returncode == 0 and page["state"] == "done", (result.stderr, page.get("message"))
    got = np.array(page["samples"], dtype=np.float32).reshape(page["shape"])
    assert np.abs(got - pyddpm_samples(run, tmp_path, 40, 5, *plan_flags(FEW_STEP[0], 8))).max() <= ATOL
