"""The report of benchmarks/gpu_check.py: the issue's GPU targets judged from the parts' results, and the JSON and
markdown files written from them."""
from __future__ import annotations

import json
from pathlib import Path

MET, NOT_MET = "met", "not met"


def _number(results: dict, key: str, field: str) -> float | None:
    value = results.get(key, {}).get(field)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _why_missing(part: dict, *keys: str) -> str:
    """Why a target could not be judged: the first of ``keys`` that was skipped or failed, else the part's status."""
    for key in keys if part.get("status") in ("ok", "failed", "out of time") else ():
        cell = part.get("results", {}).get(key)
        if cell is None:
            return f"{key} not measured ({part['status']})"
        if "skipped" in cell or "failed" in cell:
            return f"{key}: {cell.get('skipped') or 'failed: ' + cell['failed']}"
    status = part.get("status", "not run")
    return f"{status}: {part['reason']}" if part.get("reason") else status


def _ratio_target(part, num_key, den_key, field, at_least, label) -> tuple[str, str]:
    r = part.get("results", {})
    a, b = _number(r, num_key, field), _number(r, den_key, field)
    if a is None or b is None or b <= 0:
        return "not measured", _why_missing(part, num_key, den_key)
    return (MET if a / b >= at_least else NOT_MET), f"{a / b:.2f}x ({label})"


def _op_bandwidth(part):
    r = part.get("results", {})
    fused, copy = _number(r, "2^24/float32/fused", "GB/s"), _number(r, "2^24/float32/copy", "GB/s")
    if fused is None or copy is None:
        return "not measured", _why_missing(part, "2^24/float32/fused", "2^24/float32/copy")
    return (MET if fused >= 0.8 * copy else NOT_MET), f"{fused / copy:.0%} ({fused:,.0f} of {copy:,.0f} GB/s)"


def _tests(part):
    r = part.get("results", {})
    if "passed" not in r:
        return "not measured", _why_missing(part)
    ok = r["failed"] == 0 and r["errors"] == 0 and r["passed"] > 0
    return (MET if ok else NOT_MET), f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped"


def _sanitizer(part):
    r = part.get("results", {})
    tools = [r.get(tool) for tool in ("memcheck", "racecheck")]
    if not all(t and t.get("exit_code") is not None for t in tools):  # missing, or stopped at the budget
        return "not measured", _why_missing(part, "memcheck", "racecheck")
    clean = all(not t["errors"] and t["exit_code"] == 0 and t.get("checks") for t in tools)
    return (MET if clean else NOT_MET), "; ".join(
        f"{name}: {'no summary' if t['errors'] is None else t['errors']} errors, exit code {t['exit_code']}, "
        f"{t.get('checks') or 'no'} checks passed"
        for name, t in zip(("memcheck", "racecheck"), tools))


def _epochs(part):
    r = part.get("results", {})
    measured = {mode: _number(r, f"unet/{mode}", "minutes_100_epochs")
                for mode in ("eager", "bf16", "compile", "compile+bf16")}
    measured = {m: v for m, v in measured.items() if v is not None}
    if not measured:
        return "not measured", _why_missing(part, "unet/eager")
    mode = min(measured, key=measured.get)
    return (MET if measured[mode] < 3 else NOT_MET), f"{measured[mode]:.1f} min ({mode})"


def _bf16(part):
    c = part.get("results", {}).get("comparison", {})
    if "max_rel_diff_second_half" not in c:
        return "not measured", _why_missing(part, "fp32", "bf16", "comparison")
    ok = c["max_rel_diff_second_half"] <= 0.05 and c["bf16_decrease"] > 0 and c["fp32_decrease"] > 0
    return (MET if ok else NOT_MET), (f"max {c['max_rel_diff_second_half']:.2%} over the second half, "
                                      f"{c['final_rel_diff']:.2%} at the end")


# (part, the target as the issue states it, judge(part report) -> (status, value))
TARGETS = [
    ("cuda_tests", "the CUDA tests pass", _tests),
    ("sanitizer", "compute-sanitizer memcheck and racecheck clean over every kernel and dtype", _sanitizer),
    ("op", "fused op >= 80% of device-copy bandwidth at 2^24 elements (float32)", _op_bandwidth),
    ("op", "fused op >= 3x the eager update at batch 256 x 784",
     lambda p: _ratio_target(p, "256x784/float32/eager", "256x784/float32/fused", "us", 3.0, "eager / fused")),
    ("op", "fused op no slower than torch.compile at batch 256 x 784",
     lambda p: _ratio_target(p, "256x784/float32/compiled", "256x784/float32/fused", "us", 1.0, "compiled / fused")),
    ("sampling", "graph-captured exercise U-Net sampling >= 3x the course's loop (batch 256)",
     lambda p: _ratio_target(p, "unet/course", "unet/pyddpm graph", "ms_per_step", 3.0, "course / graph ms per step")),
    ("sampling", "graph-captured exercise U-Net sampling ahead of diffusers' DDPMScheduler (batch 256)",
     lambda p: _ratio_target(p, "unet/diffusers", "unet/pyddpm graph", "ms_per_step", 1.0,
                             "diffusers / graph ms per step")),
    ("training", "100 epochs of the exercise U-Net on 60,000 images in < 3 minutes (best mode, batch 256)", _epochs),
    ("bf16", "bf16 training loss tracks fp32 (smoothed, within 5% over the second half; both decrease)", _bf16),
]


def judge_targets(parts: dict, dry: bool) -> list[dict]:
    """Each target of the issue with met / not met / not measured, and the measured value or the reason."""
    out = []
    for part, target, judge in TARGETS:
        if dry:
            status, value = "not measured", "dry mode: the targets are GPU targets"
        else:
            status, value = judge(parts.get(part, {}))
        out.append({"part": part, "target": target, "status": status, "value": value})
    return out


def tool_tables(part: dict) -> list[dict]:
    """Tables of the parts that drive other programs (install, cuda_tests, sanitizer), from their results."""
    r = part.get("results") or {}
    if part["name"] == "install" and r:
        rows = [["pip install", r["pip"]["exit_code"], f"{r['pip']['seconds']:.0f}", r.get("probe")]]
        if "in_place_build" in r:
            build = r["in_place_build"]
            rows.append(["CMake build into pyddpm/", build["exit_code"], "-", build.get("probe") or build.get("error")])
        return [{"title": r["pip"]["command"], "columns": ["step", "exit code", "seconds", "pyddpm imported"],
                 "rows": rows}]
    if part["name"] == "cuda_tests" and "passed" in r:
        return [{"title": ", ".join(r["files"]), "columns": ["passed", "failed", "errors", "skipped"],
                 "rows": [[r["passed"], r["failed"], r["errors"], r["skipped"]]]}] + (
            [{"title": "failing tests", "columns": ["test: message"], "rows": [[f] for f in r["failing"]]}]
            if r["failing"] else [])
    if part["name"] == "sanitizer":
        runs = [(name, r[name]) for name in ("memcheck", "racecheck", "cpu exercise") if name in r]
        return [{"title": "compute-sanitizer over the kernel exercise (gpu_check_parts.py exercise-kernels)",
                 "columns": ["run", "exit code", "errors reported", "kernel checks passed", "seconds"],
                 "rows": [[name, run["exit_code"], "-" if run["errors"] is None else run["errors"], run["checks"],
                           f"{run['seconds']:.0f}"] for name, run in runs]}] if runs else []
    return []


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(columns: list, rows: list) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def render_markdown(report: dict) -> str:
    env = report["environment"]
    pyddpm = env.get("pyddpm") or {}
    lines = [f"# pyddpm GPU check ({report['mode']} mode)", "",
             (f"{env.get('gpu') or 'no CUDA device'}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"Python {env.get('python')}, driver {env.get('driver') or '-'}, nvcc {env.get('nvcc') or '-'}; "
             f"pyddpm {pyddpm.get('version', '?')} from {pyddpm.get('file', '?')} "
             f"(CUDA kernels: {pyddpm.get('cuda_built', '?')}). Started {report['started']}, "
             f"{report['wall_s']:.0f} s in all."), "", "## Targets", ""]
    lines += _table(["target", "status", "measured"],
                    [[t["target"], t["status"], t["value"]] for t in report["targets"]])
    lines += ["", "## Parts", ""]
    lines += _table(["part", "status", "seconds (budget)"],
                    [[p["title"], p["status"] + (f": {p['reason']}" if p.get("reason") else ""),
                      f"{p.get('seconds', 0):.0f} ({p.get('budget_s', 0):.0f})"] for p in report["parts"].values()])
    for part in report["parts"].values():
        lines += ["", f"## {part['title']}", "", f"Status: **{part['status']}**"
                  + (f": {part['reason']}" if part.get("reason") else "") + "."]
        for note in part.get("notes", []):
            lines += ["", note]
        for table in part.get("tables") or tool_tables(part):
            lines += ["", f"*{table['title']}*", ""] + _table(table["columns"], table["rows"])
        failed = {k: v for k, v in part.get("results", {}).items() if isinstance(v, dict) and "failed" in v}
        for key, cell in failed.items():
            lines += ["", f"{key} failed:", "", "```", cell.get("traceback") or cell["failed"], "```"]
        if part.get("error"):
            lines += ["", "Error (tail):", "", "```", part["error"], "```"]
        if part.get("logs"):
            lines += ["", "Logs: " + ", ".join(f"`{log}`" for log in part["logs"])]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """out/gpu_check.json and out/gpu_check.md (each replaced whole, so a reader never sees half a file)."""
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_check.md", render_markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
