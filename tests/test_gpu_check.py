"""benchmarks/gpu_check.sh: the GPU smoke script parses and plans its parts (it runs on a GPU machine)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dry_run_lists_every_part_and_runs_nothing(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "GPU_CHECK_LOGS": str(tmp_path / "logs")})
    assert result.returncode == 0, result.stderr
    parts = [line[3:].rsplit(" (at most", 1)[0] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert parts == ["environment", "packages", "nerfacc CUDA ops", "tinycudann", "cuda tests",
                     "fit step (real-size, fp16 + bf16)"]
    assert "-m cuda" in result.stdout and "--dtypes float16,bfloat16" in result.stdout
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


def test_unknown_option_is_refused():
    result = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option --gpu" in result.stderr
