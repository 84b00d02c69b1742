"""benchmarks/gpu_check.py: its dry mode (what CI runs, so the GPU check never rots) writes a JSON and a markdown
report that list every part, skips each CUDA part with its reason, and measures the rest at tiny sizes on the CPU;
a part that fails is recorded with its traceback and the others still run; the pieces that only a GPU run
reaches (judging the targets, reading pytest's and compute-sanitizer's reports, stopping a part at its budget)
are checked on made-up inputs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_report  # noqa: E402

PARTS = ["install", "cuda_tests", "sanitizer", "op", "sampling", "training", "bf16"]
CUDA_PARTS = ["install", "cuda_tests", "sanitizer"]


def run_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out), "--dry",
                           *args], capture_output=True, text=True, timeout=600, env=env, check=False)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """One dry run, in which the op part ends with a deliberately failing cell."""
    out = tmp_path_factory.mktemp("gpu_check")
    start = time.perf_counter()
    proc = run_check(out, "--inject-failure", "op")
    seconds = time.perf_counter() - start
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]  # 1: a part failed
    return out, proc, json.loads((out / "gpu_check.json").read_text()), seconds


def test_dry_mode_reports_every_part_and_target_in_both_files(dry):
    out, proc, report, seconds = dry
    assert report["mode"] == "dry" and list(report["parts"]) == PARTS
    assert seconds < 120  # "well under a minute" on an idle machine; this one is shared
    md = (out / "gpu_check.md").read_text()
    for part in report["parts"].values():
        assert f"## {part['title']}" in md
        assert part["logs"] or part["name"] in ("install", "cuda_tests")  # those two run nothing in dry mode
        assert not any("could not be built" in table["title"] for table in part["tables"])
    assert len(report["targets"]) == len(gpu_check_report.TARGETS)
    for target in report["targets"]:
        assert target["status"] == "not measured" and target["target"] in md
    for i in range(1, len(PARTS) + 1):  # progress, part by part
        assert f"[{i}/{len(PARTS)}]" in proc.stdout
    assert "op: 256x784/float32/fused:" in proc.stdout


def test_dry_mode_skips_the_cuda_parts_with_the_reason(dry):
    _, _, report, _ = dry
    reason = "no CUDA device" if not torch.cuda.is_available() else "--dry"
    for name in CUDA_PARTS:
        part = report["parts"][name]
        assert part["status"] == "skipped" and reason in part["reason"], part
    # the measuring parts ran; their CUDA-only cells say why they did not
    results = {name: report["parts"][name]["results"] for name in ("op", "sampling", "training")}
    for name in ("sampling", "training", "bf16"):
        assert report["parts"][name]["status"] == "ok", report["parts"][name]
    assert results["op"]["256x784/float32/copy"]["skipped"]
    assert results["op"]["256x784/float32/compiled"]["skipped"]
    for net in ("fc", "unet", "unet-ddpm"):
        assert results["sampling"][f"{net}/pyddpm graph"] == {"skipped": "CUDA graphs need CUDA"}
        assert results["training"][f"{net}/compile"]["skipped"]
    diffusers = results["sampling"]["unet/diffusers"]
    assert "ms_per_step" in diffusers or diffusers == {"skipped": "diffusers not installed"}


def test_dry_mode_measures_on_the_cpu(dry):
    _, _, report, _ = dry
    parts = report["parts"]
    assert parts["sanitizer"]["results"]["cpu exercise"]["checks"] > 100  # the script compute-sanitizer runs
    op = parts["op"]["results"]
    for size in ("5000x2", "256x784"):
        assert op[f"{size}/float32/check"]["bit_equal"]  # the CPU kernel is bit-equal to the reference
        assert op[f"{size}/float32/fused"]["us"] > 0 and op[f"{size}/float32/eager"]["us"] > 0
    sampling = parts["sampling"]["results"]
    for net in ("fc", "unet", "unet-ddpm"):
        # the course's loop is Algorithm 2: from the same torch seed it gives pyddpm's torch backend's samples
        assert sampling[f"{net}/course"]["max_diff_vs_pyddpm_torch_backend"] < 1e-3
        assert sampling[f"{net}/pyddpm eager"]["ms_per_step"] > 0
        assert parts["training"]["results"][f"{net}/eager"]["images_per_s"] > 0
    bf16 = parts["bf16"]["results"]["comparison"]
    # same weights, batch, t and noise: the first losses differ by bf16 rounding only (8-bit mantissa, ~0.4%)
    assert bf16["first_step_rel_diff"] < 0.02
    assert all(row[-1] != "-" for row in parts["training"]["tables"][0]["rows"])  # 100-epoch time extrapolated


def test_a_failing_part_is_recorded_and_the_others_still_run(dry):
    out, proc, report, _ = dry
    op = report["parts"]["op"]
    assert op["status"] == "failed" and op["reason"] == "failed cells: injected failure"
    traceback = op["results"]["injected failure"]["traceback"]
    assert "Traceback" in traceback and "injected failure" in traceback
    assert not [k for k, v in op["results"].items() if "failed" in v and k != "injected failure"]  # the rest ran
    assert [name for name, part in report["parts"].items() if part["status"] == "failed"] == ["op"]
    assert "injected failure" in (out / "gpu_check.md").read_text()
    assert "1 part(s) failed: op" in proc.stdout


def test_exit_code_is_0_when_nothing_failed_and_unselected_parts_are_listed(tmp_path):
    proc = run_check(tmp_path, "--parts", "install,cuda_tests")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["parts"]) == PARTS
    for name in ("sanitizer", "op", "sampling", "training", "bf16"):
        assert report["parts"][name]["status"] == "skipped" and "not selected" in report["parts"][name]["reason"]


def test_targets_are_judged_from_the_parts_results():
    parts = {
        "cuda_tests": {"status": "ok", "results": {"passed": 40, "failed": 0, "errors": 0, "skipped": 1}},
        "sanitizer": {"status": "failed", "results": {
            "memcheck": {"exit_code": 0, "errors": 0, "checks": 900},
            "racecheck": {"exit_code": 86, "errors": 2, "checks": 900}}},
        "op": {"status": "ok", "results": {
            "2^24/float32/fused": {"us": 60.0, "GB/s": 3500.0}, "2^24/float32/copy": {"us": 35.0, "GB/s": 4000.0},
            "256x784/float32/fused": {"us": 8.0}, "256x784/float32/eager": {"us": 30.0},
            "256x784/float32/compiled": {"skipped": "out of time"}}},
        "sampling": {"status": "ok", "results": {"unet/course": {"ms_per_step": 1.2},
                                                 "unet/pyddpm graph": {"ms_per_step": 0.5},
                                                 "unet/diffusers": {"skipped": "diffusers not installed"}}},
        "training": {"status": "ok", "results": {"unet/eager": {"minutes_100_epochs": 4.0},
                                                 "unet/compile+bf16": {"minutes_100_epochs": 2.5}}},
        "bf16": {"status": "skipped", "reason": "not selected (--parts)", "results": {}},
    }
    by_part = {}
    for t in gpu_check_report.judge_targets(parts, dry=False):
        by_part.setdefault(t["part"], []).append((t["status"], t["value"]))
    assert [s for s, _ in by_part["cuda_tests"]] == ["met"]
    assert [s for s, _ in by_part["sanitizer"]] == ["not met"]  # racecheck found hazards
    assert [s for s, _ in by_part["op"]] == ["met", "met", "not measured"]  # 88% of copy; 3.75x eager; no compile
    assert "out of time" in by_part["op"][2][1]  # why a target was not measured
    assert [s for s, _ in by_part["sampling"]] == ["not met", "not measured"]  # 2.4x the course loop; no diffusers
    assert by_part["training"] == [("met", "2.5 min (compile+bf16)")]  # the best mode counts
    assert by_part["bf16"][0][0] == "not measured" and "not selected" in by_part["bf16"][0][1]
    assert all(t["status"] == "not measured" for t in gpu_check_report.judge_targets(parts, dry=True))


def test_pytest_and_compute_sanitizer_reports_are_read(tmp_path):
    xml = tmp_path / "report.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" '
                   'tests="9"><testcase classname="tests.test_ops_cuda" name="test_a"/>'
                   '<testcase classname="tests.test_ops_cuda" name="test_b"><failure message="assert 1 == 2"/>'
                   '</testcase><testcase classname="tests.test_samplers_cuda" name="test_c"><error message="boom"/>'
                   '</testcase></testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (5, 1, 1, 2)
    assert counts["failing"] == ["tests.test_ops_cuda::test_b: assert 1 == 2", "tests.test_samplers_cuda::test_c: boom"]
    assert gpu_check.sanitizer_errors("...\n========= ERROR SUMMARY: 3 errors\n") == 3
    assert gpu_check.sanitizer_errors("========= RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)") == 2
    assert gpu_check.sanitizer_errors("kernel exercise: 900 checks passed\n") is None


def test_a_command_is_stopped_at_its_budget_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    sleeper = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
               f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
               "time.sleep(60)")
    start = time.perf_counter()
    rc, tail = gpu_check.run_logged([sys.executable, "-c", sleeper], tmp_path / "log.txt", timeout=1.5,
                                    env=dict(os.environ), cwd=tmp_path)
    assert rc is None and "started" in tail and time.perf_counter() - start < 20
    child = Path(f"/proc/{pid_file.read_text()}")
    for _ in range(50):  # the grandchild went down with its process group (a zombie is down)
        if not child.exists() or "\tZ" in (child / "status").read_text().split("State:")[1].split("\n")[0]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {child.name} outlived the budget")
    assert "started" in (tmp_path / "log.txt").read_text()


def test_a_finished_command_is_not_held_by_a_child_that_keeps_its_output_open(tmp_path):
    straggler = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                 "print('done', flush=True)")
    start = time.perf_counter()
    rc, tail = gpu_check.run_logged([sys.executable, "-c", straggler], tmp_path / "log.txt", timeout=60,
                                    env=dict(os.environ), cwd=tmp_path)
    assert rc == 0 and "done" in tail and time.perf_counter() - start < 20
