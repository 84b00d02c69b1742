"""The CUDA half of pyddpm proven in one command (issue 16): build, test, sanitize and measure, with a report.

    python benchmarks/gpu_check.py --out DIR

On a CUDA machine, in this order, each part within its own time budget (about 8 minutes in all):

    install     pip install --no-build-isolation --no-deps --no-index . (with the machine's torch; offline),
                falling back to a CMake build into pyddpm/ if pip cannot build
    cuda_tests  pytest tests/ops/test_ops_cuda.py tests/sampling/test_samplers_cuda.py: pass / fail counts
    sanitizer   compute-sanitizer memcheck and racecheck over every fused kernel and dtype
                (``gpu_check_parts.py exercise-kernels``)
    op          the fused op vs device copy bandwidth at 2^24 elements, the eager update and torch.compile at 256x784
    sampling    batch 256 of the FcNetwork and both U-Nets: the course's loop, diffusers (if installed),
                pyddpm eager, pyddpm CUDA graph; ms/step and ratios
    training    images/s per network (eager, torch.compile, bf16 autocast, both) and 100 epochs of 60,000 images
    bf16        a short bf16 training run against the same run in float32

Without CUDA (or with --dry) the same command runs a dry mode in well under a minute: the measuring parts at tiny
sizes on the CPU, the kernel exercise on the CPU, and every CUDA-only cell reported as skipped with the reason.
A part that fails is recorded with the tail of its traceback and the others still run; a part that reaches its
budget is stopped and keeps what it had measured. Progress is printed as it goes; DIR/gpu_check.json and
DIR/gpu_check.md (targets of the issue with met / not met, tables, the GPU, torch and CUDA versions) are
rewritten after every part, and DIR/logs/ holds each part's full output. Exit code 1 if a part failed, else 0.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpu_check_report import judge_targets, write_report

ROOT = Path(__file__).resolve().parents[1]
PARTS_SCRIPT = Path(__file__).resolve().parent / "gpu_check_parts.py"
CUDA_TESTS = [ROOT / "tests" / "ops" / "test_ops_cuda.py", ROOT / "tests" / "sampling" / "test_samplers_cuda.py"]
PROBE = ("import json, pyddpm; from pyddpm import ops; print('PROBE ' + json.dumps({'file': pyddpm.__file__, "
         "'version': pyddpm.__version__, 'cuda_built': ops.cuda_built(), "
         "'build_info': ops._C.build_info() if ops.extension_available() else None}))")


# ----- running a command within a budget ---------------------------------------------------------------------
def run_logged(cmd: list, log: Path, *, timeout: float, env: dict, cwd: Path,
               echo: str | None = None) -> tuple[int | None, str]:
    """Runs ``cmd`` in its own process group with its output into ``log`` (each line also printed after ``echo``
    when given). When it exits, or after ``timeout`` seconds, whatever is left of its group is stopped (so a
    straggler holding the output open cannot hold the part). Returns (exit code, or None when stopped at the
    timeout; the last 60 lines)."""
    tail: deque = deque(maxlen=60)
    with open(log, "w") as sink:
        sink.write("$ " + " ".join(map(str, cmd)) + "\n")
        sink.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, cwd=cwd, start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:
                sink.write(line)
                tail.append(line)
                if echo is not None:
                    print(echo + line.rstrip(), flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            rc = None
        _stop_group(proc)
        reader.join(10)
    return rc, "".join(tail)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of ``proc`` (started with start_new_session), SIGKILL 5 s later if any is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        for _ in range(50):
            proc.poll()  # reaps the leader once it is gone (a zombie still counts as a member)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    proc.wait()


def _tool_path(name: str, *extra: Path) -> str | None:
    """``name`` on PATH, beside this Python, in $CUDA_HOME/bin, in its PyPI package (cmake, ninja) or in the other
    places given."""
    places = [Path(sys.executable).parent]
    for module, attribute in (("cmake", "CMAKE_BIN_DIR"), ("ninja", "BIN_DIR")):
        if module == name and importlib.util.find_spec(module):
            places.append(Path(getattr(importlib.import_module(module), attribute)))
    if os.environ.get("CUDA_HOME"):
        places.append(Path(os.environ["CUDA_HOME"]) / "bin")
    found = shutil.which(name)
    for path in [Path(found)] if found else [p / name for p in places] + list(extra):
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _first_line(cmd: list, pattern: str = "") -> str | None:
    """The first output line of ``cmd`` containing ``pattern`` (None if it cannot run)."""
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in text.splitlines() if pattern in line), None)


# ----- the parts run here (they only drive other programs) ---------------------------------------------------
@dataclass
class Result:
    status: str  # ok | failed | skipped | out of time
    reason: str = ""
    results: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    error: str | None = None
    tables: list = field(default_factory=list)  # from gpu_check_parts.py: [{"title", "columns", "rows"}]
    pyddpm: dict | None = None  # the pyddpm the part imported


class Check:
    """One run of the check: its folder, mode, and how child processes find pyddpm."""

    def __init__(self, args, dry_reason: str | None):
        self.args, self.out = args, args.out.resolve()
        self.dry, self.dry_reason = dry_reason is not None, dry_reason
        self.mode = "dry" if self.dry else "cuda"
        self.logs = self.out / "logs"
        self.pythonpath: str | None = os.environ.get("PYTHONPATH")  # after an install: where pyddpm is

    def env(self, **extra) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
        env.pop("PYTHONPATH", None)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def probe(self, pythonpath: str | None) -> dict | None:
        """What ``import pyddpm`` gives a child process with PYTHONPATH=pythonpath (None: unset)."""
        saved, self.pythonpath = self.pythonpath, pythonpath
        try:
            proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                                  env=self.env(), cwd=self.out, check=False)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.pythonpath = saved
        line = next((l for l in proc.stdout.splitlines() if l.startswith("PROBE ")), None)
        return json.loads(line[6:]) if line else None


def run_install(check: Check, deadline: float) -> Result:
    if check.args.no_install:
        return Result("skipped", "--no-install: the pyddpm this environment imports is used")
    if check.dry:
        return Result("skipped", f"{check.dry_reason}: dry mode, the pyddpm this environment imports is used")
    env = check.env(PYDDPM_CUDA="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-v", "."]
    start = time.time()
    rc, tail = run_logged(cmd, check.logs / "install.log", timeout=deadline - time.time(), env=env, cwd=ROOT)
    results = {"pip": {"command": "pip " + " ".join(cmd[3:]), "exit_code": rc, "seconds": time.time() - start}}
    if rc == 0:
        probe = check.probe(None)
        results["probe"] = probe
        if probe and probe["cuda_built"] and not Path(probe["file"]).resolve().is_relative_to(ROOT):
            check.pythonpath = None
            return Result("ok", results=results)
        reason = f"pip installed, but the installed pyddpm is not a CUDA build: {probe}"
    else:
        reason = "pip install failed" + (" (out of time)" if rc is None else f" (exit code {rc})")
    error = tail[-3000:]
    if deadline - time.time() > 20:  # the same build straight into pyddpm/, so that the other parts can run
        results["in_place_build"] = build_in_place(check, deadline)
        probe = results["in_place_build"].get("probe")
        if probe and probe["cuda_built"]:
            check.pythonpath = str(ROOT)
            reason += "; the other parts use an in-place CMake build (PYTHONPATH=repository)"
    return Result("failed", reason, results, error=error)


def build_in_place(check: Check, deadline: float) -> dict:
    """Configures and builds CMakeLists.txt's _C into pyddpm/ (what setup.py does, without setuptools)."""
    cmake, ninja = _tool_path("cmake"), _tool_path("ninja")
    nvcc = _tool_path("nvcc", Path("/usr/local/cuda/bin/nvcc"))
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    pybind11_dir = _first_line([sys.executable, "-m", "pybind11", "--cmakedir"])
    missing = [name for name, found in (("cmake", cmake), ("ninja", ninja), ("pybind11", pybind11_dir)) if not found]
    if missing:
        return {"exit_code": None, "error": f"not found: {', '.join(missing)}"}
    build = ROOT / "build" / "gpu_check"
    configure = [cmake, "-S", ROOT, "-B", build, "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                 "-DCMAKE_BUILD_TYPE=Release", "-DPYDDPM_CUDA=ON", f"-DPYDDPM_VERSION={version}",
                 f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11_dir}",
                 f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ROOT / 'pyddpm'}"] + ([f"-DCMAKE_CUDA_COMPILER={nvcc}"] if nvcc else [])
    for step, cmd in (("configure", configure), ("build", [cmake, "--build", build, "--target", "_C"])):
        rc, _ = run_logged(cmd, check.logs / f"install-cmake-{step}.log", timeout=deadline - time.time(),
                           env=check.env(), cwd=ROOT)
        if rc != 0:
            return {"exit_code": rc, "error": f"cmake {step} failed" if rc else f"cmake {step} ran out of time"}
    return {"exit_code": 0, "probe": check.probe(str(ROOT))}


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped of a pytest --junitxml file, and the failing tests' first lines."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failing = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failing.append(f"{case.get('classname')}::{case.get('name')}: {(problem.get('message') or '')[:200]}")
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"], "failing": failing}


def run_cuda_tests(check: Check, deadline: float) -> Result:
    if check.dry:
        return Result("skipped", f"{check.dry_reason}: the CUDA tests need a CUDA device")
    xml = check.logs / "cuda_tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-c", ROOT / "pyproject.toml",
           "--rootdir", ROOT, f"--junitxml={xml}", *CUDA_TESTS]
    # run from the report folder: `python -m pytest` puts its folder first on sys.path, and the repository's
    # pyddpm/ (without the built extension) must not shadow the installed one
    rc, tail = run_logged(cmd, check.logs / "cuda_tests.log", timeout=deadline - time.time(), env=check.env(),
                          cwd=check.out)
    if rc is None:
        return Result("out of time", "pytest was stopped at the part's budget", error=tail[-3000:])
    if not xml.is_file():
        return Result("failed", f"pytest wrote no report (exit code {rc})", error=tail[-3000:])
    counts = junit_counts(xml)
    ok = counts["failed"] == counts["errors"] == 0 and counts["passed"] > 0
    return Result("ok" if ok else "failed", "" if ok else f"{counts['failed']} failed, {counts['errors']} errors",
                  {**counts, "files": [str(p.relative_to(ROOT)) for p in CUDA_TESTS]},
                  error=None if ok else tail[-3000:])


def _exercise(check: Check, cmd_prefix: list, device: str, log: str, timeout: float, **env) -> dict:
    """Runs the kernel exercise (behind ``cmd_prefix``, e.g. compute-sanitizer) and reads what it reported."""
    start = time.time()
    rc, _ = run_logged(cmd_prefix + [sys.executable, PARTS_SCRIPT, "exercise-kernels", "--device", device],
                       check.logs / log, timeout=timeout, env=check.env(**env), cwd=check.out)
    text = (check.logs / log).read_text(errors="replace")
    checks = re.search(r"kernel exercise: (\d+) checks passed", text)
    return {"exit_code": rc, "checks": int(checks.group(1)) if checks else None, "errors": sanitizer_errors(text),
            "seconds": time.time() - start, "tail": text[-2000:]}


def sanitizer_errors(text: str) -> int | None:
    """The errors compute-sanitizer summarised: racecheck's hazards (errors and warnings), else memcheck's errors;
    None without a summary line."""
    summary = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed", text) or re.search(
        r"ERROR SUMMARY: (\d+) errors?", text)
    return int(summary.group(1)) if summary else None


def run_sanitizer(check: Check, deadline: float) -> Result:
    if check.dry:  # compute-sanitizer needs a GPU; the script it runs is checked on the CPU
        cpu = _exercise(check, [], "cpu", "sanitizer-cpu-exercise.log", deadline - time.time())
        if cpu["exit_code"] != 0 or not cpu["checks"]:
            return Result("failed", "the kernel exercise failed on the CPU", {"cpu exercise": cpu}, error=cpu["tail"])
        return Result("skipped", f"{check.dry_reason}: compute-sanitizer needs a CUDA device (the kernel exercise "
                                 f"it runs passed on the CPU: {cpu['checks']} checks)", {"cpu exercise": cpu})
    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    tool = _tool_path("compute-sanitizer", Path("/usr/local/cuda/bin/compute-sanitizer"),
                      cuda_home / "compute-sanitizer" / "compute-sanitizer")
    if tool is None:
        return Result("skipped", "compute-sanitizer not found (PATH, $CUDA_HOME, /usr/local/cuda)")
    results = {"compute_sanitizer": tool}
    for tool_name, share in (("memcheck", 0.6), ("racecheck", 1.0)):
        # PYTORCH_NO_CUDA_MEMORY_CACHING: every tensor its own cudaMalloc, so an access past its end is caught
        results[tool_name] = _exercise(check, [tool, "--tool", tool_name, "--error-exitcode", "86"], "cuda",
                                       f"sanitizer-{tool_name}.log", share * (deadline - time.time()),
                                       PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    runs = [results[t] for t in ("memcheck", "racecheck")]
    if any(r["exit_code"] is None for r in runs):
        return Result("out of time", "compute-sanitizer was stopped at the part's budget", results)
    # exit code 0 under --error-exitcode means no errors, also where a tool printed no summary line
    clean = all(r["exit_code"] == 0 and not r["errors"] and r["checks"] for r in runs)
    return Result("ok" if clean else "failed", "" if clean else "errors reported or the exercise failed", results,
                  error=None if clean else "\n".join(r["tail"] for r in runs))


def run_measuring_part(name: str) -> Callable[[Check, float], Result]:
    """A part of gpu_check_parts.py in a child process, which gets the budget minus a margin to end by itself."""

    def run(check: Check, deadline: float) -> Result:
        budget = deadline - time.time()
        report = check.out / "parts" / f"{name}.json"
        report.unlink(missing_ok=True)
        cmd = [sys.executable, PARTS_SCRIPT, name, "--out", check.out, "--mode", check.mode,
               "--deadline", f"{deadline - max(2.0, min(15.0, 0.15 * budget)):.1f}"]
        rc, tail = run_logged(cmd + (["--inject-failure"] if check.args.inject_failure == name else []),
                              check.logs / f"{name}.log", timeout=budget, env=check.env(), cwd=check.out,
                              echo=f"  {name}: ")
        data = json.loads(report.read_text()) if report.is_file() else {}
        result = Result("ok", results=data.get("results", {}), notes=data.get("notes", []), error=data.get("error"),
                        tables=data.get("tables", []), pyddpm=data.get("pyddpm"))
        failed = [k for k, v in result.results.items() if "failed" in v]
        if rc is None:
            result.status, result.reason = "out of time", f"stopped at its budget of {budget:.0f} s; what it measured is kept"
        elif rc != 0 and data.get("status") != "failed":
            result.status, result.reason, result.error = "failed", f"its process died (exit code {rc})", tail[-3000:]
        elif data.get("status") == "failed":
            result.status, result.reason = "failed", f"failed cells: {', '.join(failed)}" if failed else "error"
        return result

    return run


@dataclass
class Part:
    name: str
    title: str
    budget_s: float  # nominal; the slack of earlier parts is added
    run: Callable
    in_child: bool = False  # a gpu_check_parts.py part (the child handles --inject-failure)


PARTS = [
    Part("install", "Build and install pyddpm", 100, run_install),
    Part("cuda_tests", "CUDA tests", 80, run_cuda_tests),
    Part("sanitizer", "compute-sanitizer memcheck and racecheck", 70, run_sanitizer),
    Part("op", "The fused reverse step", 40, run_measuring_part("op"), in_child=True),
    Part("sampling", "Sampling", 60, run_measuring_part("sampling"), in_child=True),
    Part("training", "Training throughput", 100, run_measuring_part("training"), in_child=True),
    Part("bf16", "bf16 vs fp32 training", 20, run_measuring_part("bf16"), in_child=True),
]


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "gpu": None}
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count(),
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    smi = shutil.which("nvidia-smi")
    env["driver"] = _first_line([smi, "--query-gpu=driver_version", "--format=csv,noheader"]) if smi else None
    nvcc = _tool_path("nvcc", Path("/usr/local/cuda/bin/nvcc"))
    env["nvcc"] = _first_line([nvcc, "--version"], "release") if nvcc else None
    return env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md and logs/")
    p.add_argument("--no-install", action="store_true", help="skip the build and use the pyddpm that imports")
    p.add_argument("--dry", action="store_true", help="the dry mode even where CUDA is available")
    p.add_argument("--parts", default=",".join(part.name for part in PARTS),
                   help="comma-separated parts to run (default: all); the others are reported as skipped")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for all parts together (default 470)")
    p.add_argument("--inject-failure", metavar="PART", help="make PART fail (tests this harness): a part run here "
                   "raises at its start, a measuring part ends with a failing cell")
    args = p.parse_args()
    names = [part.name for part in PARTS]
    selected = [n for n in args.parts.split(",") if n]
    for name in selected + ([args.inject_failure] if args.inject_failure else []):
        if name not in names:
            p.error(f"unknown part {name!r}; choose from {', '.join(names)}")
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    env = environment()
    dry_reason = ("no CUDA device (torch.cuda.is_available() is False)" if not env["cuda_available"]
                  else "--dry" if args.dry else None)
    check = Check(args, dry_reason)
    print(f"gpu_check: {check.mode} mode; {env['gpu'] or 'no GPU'}; torch {env['torch']} (CUDA {env['torch_cuda']});"
          f" writing {check.out}", flush=True)
    report = {"mode": check.mode, "started": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": 0.0,
              "command": " ".join(sys.argv), "environment": env, "parts": {}, "targets": []}
    deadline = start + args.budget
    for i, part in enumerate(PARTS):
        later = sum(q.budget_s for q in PARTS[i + 1:] if q.name in selected)
        budget = deadline - time.time() - later
        entry = {"name": part.name, "title": part.title, "budget_s": round(max(budget, 0), 1)}
        began = time.time()
        if part.name not in selected:
            result = Result("skipped", "not selected (--parts)")
        elif budget < 5:
            result = Result("skipped", "out of time")
        else:
            print(f"[{i + 1}/{len(PARTS)}] {part.title} (budget {budget:.0f} s)", flush=True)
            try:
                if args.inject_failure == part.name and not part.in_child:
                    raise RuntimeError(f"injected failure (--inject-failure {part.name})")
                result = part.run(check, time.time() + budget)
            except Exception:
                result = Result("failed", "error", error=traceback.format_exc()[-3000:])
        entry.update(status=result.status, reason=result.reason, seconds=round(time.time() - began, 1),
                     results=result.results, notes=result.notes, error=result.error, tables=result.tables,
                     logs=sorted(f"logs/{f.name}" for f in check.logs.glob(f"{part.name}*")))
        probe = result.results.get("probe") if part.name == "install" else result.pyddpm
        if probe and "pyddpm" not in env:
            env["pyddpm"] = probe
        report["parts"][part.name] = entry
        print(f"[{i + 1}/{len(PARTS)}] {part.name}: {result.status}" + (f": {result.reason}" if result.reason else "")
              + f" ({entry['seconds']:.0f} s)", flush=True)
        report["targets"] = judge_targets(report["parts"], check.dry)
        report["wall_s"] = time.time() - start
        write_report(check.out, report)
    print("\ntarget | status | measured")
    for t in report["targets"]:
        print(f"{t['target']} | {t['status']} | {t['value']}")
    failed = [name for name, entry in report["parts"].items() if entry["status"] == "failed"]
    print(f"\ngpu_check: {len(failed)} part(s) failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{report['wall_s']:.0f} s; report in {check.out / 'gpu_check.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
