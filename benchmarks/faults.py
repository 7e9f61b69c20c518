"""What surviving faults costs: checkpoint writes, their history, and the time from SIGTERM to exit.

    .venv/bin/python benchmarks/faults.py [--repeats 5] [--folder DIR]

1. Checkpoint write of the default field (16 levels, 2^19 table, Adamax state): its size, and
   the wall time of `save_run_checkpoint` with `keep_checkpoints` 0 (last.pt only) against 3
   (step_<N>.pt + a hard link as last.pt + pruning), best and median of `--repeats`, into
   `--folder` (default: a temporary folder on the disk the runs would use).
2. Preemption latency: a child `sjc3d fit -c cpu-tiny` is sent SIGTERM once it has logged step
   5; printed are the seconds until it has exited (finish the step, write the checkpoint, exit
   75), for the CPU-tiny field and for the default-size field.  Schedulers allow 30 s by default
   (Kubernetes' terminationGracePeriodSeconds, Slurm's KillWait).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sjc3d.config import FieldConfig, load_config
from sjc3d.fields import build_field
from sjc3d.rundir import RunPaths, load_checkpoint, save_run_checkpoint

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZE = ("n_levels", "log2_hashmap_size", "per_level_scale", "hidden_dim")  # what cpu-tiny changes


def default_field_state() -> dict:
    """A checkpoint-shaped state of the default field after one Adamax step (moments filled)."""
    config = load_config([], [])
    field = build_field(config.field, device="cpu")
    optimizer = torch.optim.Adamax(field.parameters(), lr=config.train.lr)
    field(torch.rand(4096, 3) * 2 - 1).features.sum().backward()
    optimizer.step()
    return {"step": 1, "field": field.state_dict(), "optimizer": optimizer.state_dict()}


def checkpoint_writes(folder: Path, repeats: int) -> None:
    state = default_field_state()
    for keep in (0, 3):
        paths = RunPaths(folder / f"keep{keep}")
        times = []
        for i in range(repeats + 1):  # the first one warms the page cache and the allocator
            state["step"] = i + 1
            start = time.perf_counter()
            save_run_checkpoint(paths, state, keep)
            times.append(time.perf_counter() - start)
        size = paths.last_checkpoint.stat().st_size / 2**20
        files = sorted(p.name for p in paths.checkpoints.iterdir())
        print(f"checkpoint write, keep_checkpoints={keep}: {size:.0f} MiB, best {min(times[1:]):.3f} s, "
              f"median {statistics.median(times[1:]):.3f} s  (files: {', '.join(files)})")


def preemption_latency(folder: Path, name: str, overrides: list[str]) -> None:
    run = folder / f"sigterm-{name}"
    child = subprocess.Popen(
        [sys.executable, "-m", "sjc3d.cli", "fit", "-c", "cpu-tiny", "--out", str(run), "train.steps=100000",
         "train.log_every=1", "train.preview_every=0", "train.checkpoint_every=100000", *overrides],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = RunPaths(run).metrics
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.02)
    lines = metrics.read_text().splitlines()
    rate = json.loads(lines[-1])["it_per_s"]
    start = time.perf_counter()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate()
    latency = time.perf_counter() - start
    step = int(load_checkpoint(RunPaths(run).last_checkpoint)["step"])
    size = RunPaths(run).last_checkpoint.stat().st_size / 2**20
    print(f"SIGTERM to exit, {name} field ({size:.0f} MiB checkpoint, {rate:.1f} it/s): {latency:.2f} s, "
          f"exit code {child.returncode}, checkpoint of step {step}; last line: {err.strip().splitlines()[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        checkpoint_writes(folder, args.repeats)
        preemption_latency(folder, "CPU-tiny", [])
        default = FieldConfig()  # cpu-tiny shrinks the grid; put the default size back
        preemption_latency(folder, "default-size", [f"field.{k}={getattr(default, k)}" for k in DEFAULT_SIZE])


if __name__ == "__main__":
    main()
