"""The package's layout holds: imports follow data -> train -> (diffusion + nets) -> store -> samplers | export |
evaluate, the command-line layer is imported by nothing in the library, and the math imports nothing compiled."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pyddpm"


def imported_modules(path: Path) -> set[str]:
    """The pyddpm modules a source file imports (absolute names; relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n == "pyddpm" or n.startswith("pyddpm.")}


def modules_of(prefix: str):
    return [p for p in PACKAGE.rglob("*.py") if ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
            .removesuffix(".__init__").startswith(prefix)]


# (modules, what they must never import)
RULES = [
    # (DDPM.sample, the exercise's API, reaches the samplers through an import inside the method, so importing
    # the math loads no sampler and nothing compiled: test_the_math_imports_without_the_compiled_extension)
    ("pyddpm.diffusion", ["pyddpm.ops", "pyddpm._C", "pyddpm.train", "pyddpm.export", "pyddpm.store", "pyddpm.cli",
                          "pyddpm.evaluate", "pyddpm.baselines"]),
    ("pyddpm.schedules", ["pyddpm.ops", "pyddpm._C", "pyddpm.diffusion", "pyddpm.cli"]),
    ("pyddpm.nets", ["pyddpm.ops", "pyddpm._C", "pyddpm.train", "pyddpm.export", "pyddpm.store", "pyddpm.cli",
                     "pyddpm.diffusion", "pyddpm.baselines"]),
    ("pyddpm.ops", ["pyddpm.diffusion", "pyddpm.nets", "pyddpm.cli"]),
    ("pyddpm.data", ["pyddpm.train", "pyddpm.diffusion", "pyddpm.nets", "pyddpm.store", "pyddpm.cli"]),
    ("pyddpm.train", ["pyddpm.cli", "pyddpm.evaluate", "pyddpm.samplers", "pyddpm.export"]),
]
LIBRARY = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts]


@pytest.mark.parametrize("prefix, forbidden", RULES, ids=[r[0] for r in RULES])
def test_imports_follow_the_arrow(prefix, forbidden):
    files = modules_of(prefix)
    assert files, prefix
    for path in files:
        bad = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad} against the arrow"


def test_no_library_module_imports_the_command_line_layer():
    for path in LIBRARY:
        bad = sorted(m for m in imported_modules(path) if m.startswith("pyddpm.cli"))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_the_core_never_imports_the_baselines():
    core = [p for p in LIBRARY if "baselines" not in p.relative_to(PACKAGE).parts]
    for path in core:
        assert not [m for m in imported_modules(path) if m.startswith("pyddpm.baselines")], path


def test_the_math_imports_without_the_compiled_extension():
    """diffusion, schedules, nets and data load in a Python where pyddpm._C cannot be imported."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'pyddpm._C': raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from pyddpm import DDPM, FcNetwork\n"
            "import pyddpm.diffusion, pyddpm.schedules, pyddpm.nets, pyddpm.data\n"
            "m = DDPM(FcNetwork(2, 8), T=10)\n"
            "import torch; m.loss(torch.randn(4, 2)); m.step_coefficients()\n"
            "loaded = sorted(n for n in sys.modules if n.startswith('pyddpm'))\n"
            "assert 'pyddpm._C' not in sys.modules and 'pyddpm.ops' not in sys.modules, loaded\n"
            "print(loaded)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pyddpm.diffusion" in result.stdout
