"""pyddpm.accel.memory: glibc's malloc keeps freed blocks for reuse in pyddpm's command-line tools."""
import ctypes
import platform
import sys

import pytest
from helpers.export_runs import RUNS

from pyddpm.accel import memory
from pyddpm.cli import eval as eval_cli
from pyddpm.cli import sample as sample_cli
from pyddpm.cli import train as train_cli

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="needs Linux with glibc")
def test_keep_freed_memory_sets_mallopt_once(monkeypatch):
    calls = []
    real = ctypes.CDLL

    class Recording:
        def __init__(self, name):
            self.libc = real(name)

        def __getattr__(self, attr):
            function = getattr(self.libc, attr)
            if attr != "mallopt":
                return function

            def mallopt(param, value):
                calls.append((param, value))
                return function(param, value)
            mallopt.argtypes = mallopt.restype = None
            return mallopt
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.ctypes, "CDLL", Recording)
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True  # the second call changes nothing
    assert calls == [(memory.M_MMAP_THRESHOLD, 32 * 2**20), (memory.M_TRIM_THRESHOLD, 2**30)]


def test_keep_freed_memory_changes_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: pytest.fail("loaded libc off Linux"))
    assert memory.keep_freed_memory() is False


def test_the_command_line_tools_keep_freed_memory(tiny_run, tmp_path, monkeypatch):
    run = tiny_run("toy")
    for cli, argv in ((sample_cli, [str(run), "--num", "8", "--out", str(tmp_path / "s.npy"), "--device", "cpu"]),
                      (eval_cli, [str(run), "--num", "64", "--out", str(tmp_path / "e.json"), "--device", "cpu"]),
                      (train_cli, [*RUNS["toy"], "--max-steps", "2", "--grid-samples", "0", "--num-samples", "16",
                                   "--device", "cpu", "--out", str(tmp_path / "run")])):
        calls = []
        monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
        assert cli.main(argv) == 0, cli.__name__
        assert calls == [1], cli.__name__
