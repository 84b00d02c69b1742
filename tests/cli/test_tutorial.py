"""docs/tutorial.py executes top to bottom on its tiny budget (so it cannot rot)."""
from __future__ import annotations

import os
import subprocess
import sys
from helpers.export_runs import MNIST_DIR, ROOT


def test_tutorial_runs_on_the_tiny_budget(tmp_path):
    # the installed pyddpm, as a reader runs it (in CI the source tree has no compiled extension)
    env = {**os.environ, "PYDDPM_TUTORIAL_BUDGET": "tiny", "PYDDPM_TUTORIAL_OUT": str(tmp_path),
           "PYDDPM_MNIST_DIR": str(MNIST_DIR), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "tutorial.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    for picture in ("forward.png", "trajectory.png"):
        assert (tmp_path / picture).stat().st_size > 10_000, picture
    assert "inside the squares" in result.stdout
    if (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        assert (tmp_path / "mnist.png").stat().st_size > 10_000
