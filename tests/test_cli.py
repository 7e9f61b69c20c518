"""The command line answers --help and --version quickly, without importing torch."""

import subprocess
import sys
import time

import pytest

import sjc3d

PROBE = """
import sys, time
t = time.perf_counter()
sys.argv = ["sjc3d", {arg!r}]
from sjc3d.cli import app
try:
    app()
except SystemExit:
    pass
print("TORCH_IMPORTED" if "torch" in sys.modules else "NO_TORCH", time.perf_counter() - t)
"""


@pytest.mark.parametrize("arg", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(arg):
    result = subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "NO_TORCH" in result.stdout
    if arg == "--version":
        assert f"sjc3d {sjc3d.__version__}" in result.stdout
    else:
        for command in ("fit", "export", "views", "sweep", "config", "render", "eval"):
            assert command in result.stdout


def test_version_answers_in_under_a_second():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sjc3d.cli", "--version"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    assert elapsed < 1.0, f"sjc3d --version took {elapsed:.2f} s"
