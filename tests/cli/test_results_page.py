"""benchmarks/write_results_page.py --splice: one regenerated section replaces its namesake in RESULTS.md, stamped,
and every other part of the page stays byte for byte."""
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def results_page():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("write_results_page")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_splice_replaces_only_the_regenerated_section():
    old = ("# page\n\nheader\n\n## 1. One?\n\nold one\n\n## 4. Four?\n\nold four\n### sub\nold table\n\n"
           "## 5. Five?\n\nold five\n\n## Reproduce\n\nold command\n")
    new = "# page\n\nnew header\n\n## 4. Four, again?\n\nnew four\n### sub\nnew table\n\n## Reproduce\n\nnew command\n"
    out = results_page().splice(old, new, "*STAMP*")
    assert out == ("# page\n\nheader\n\n## 1. One?\n\nold one\n\n## 4. Four, again?\n\n*STAMP*\n\nnew four\n### sub\n"
                   "new table\n\n## 5. Five?\n\nold five\n\n## Reproduce\n\nold command\n")


def test_splice_keeps_a_page_without_the_section():
    old = "# page\n\n## 1. One?\n\nold one\n"
    assert results_page().splice(old, "## 4. Four?\n\nnew\n", "*STAMP*") == old
