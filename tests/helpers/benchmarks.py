"""A script of benchmarks/ imported as a module, for tests of its pure functions."""
import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_module(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ on sys.path only while it imports, for its sibling imports)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
