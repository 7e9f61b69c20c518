"""The Ray executor on a local Ray instance, with a fake fit function (no torch in the trials)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sjc3d.sweep import load_sweep, read_journal, run_sweep

ray = pytest.importorskip("ray")


def fake_fit(config, image, run_dir, resume=False, progress=True):
    """Runs inside a Ray worker: leaves its pid behind; seed 1 fails."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pid").write_text(str(os.getpid()))
    time.sleep(0.2)
    if config.train.seed == 1:
        raise ValueError(f"seed {config.train.seed} is cursed")
    # Any object with run_dir, step, metrics and wall_time will do (no torch in the workers).
    return SimpleNamespace(run_dir=run_dir, step=config.train.steps, metrics={"loss": config.train.lr + config.train.seed},
                           wall_time=0.2)


def test_ray_executor_runs_trials_as_tasks_and_records_failures(tmp_path: Path):
    # Workers import this module by name to unpickle `fake_fit`; pickle it by value instead,
    # so they need nothing but sjc3d.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sweep_file = tmp_path / "ray.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "ray", "overrides": {"prior.source": "oracle:mesh.obj", "train.steps": 4},
        "grid": {"train.lr": [0.1, 0.2]}, "seeds": [0, 1],
    }))
    sweep = load_sweep(sweep_file)
    assert len(sweep.trials) == 4
    lines: list[str] = []

    assert not ray.is_initialized()
    start = time.perf_counter()
    summary = run_sweep(sweep, tmp_path / "out", executor="ray", fit=fake_fit, gpus_per_trial=0.0,
                        ray_num_cpus=2, report=lines.append)
    elapsed = time.perf_counter() - start
    assert not ray.is_initialized()  # the runner started Ray for the sweep and shut it down

    assert (summary.n_ok, summary.n_failed) == (2, 2)
    records = read_journal(tmp_path / "out")
    assert set(records) == {t.name for t in sweep.trials}
    for trial in sweep.trials:
        record = records[trial.name]
        pid = int((tmp_path / "out" / trial.name / "pid").read_text())
        assert pid != os.getpid()  # ran in a Ray worker, not in the driver
        if trial.config.train.seed == 1:
            assert record.status == "failed" and record.error == "ValueError: seed 1 is cursed"
            assert (tmp_path / "out" / trial.name / "traceback.txt").is_file()
        else:
            assert record.status == "ok" and record.step == 4
            assert record.metrics["loss"] == pytest.approx(trial.config.train.lr)
    assert any("submitted 4 Ray tasks" in line for line in lines)
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.index("train.lr=0.1__seed0") < md.index("train.lr=0.2__seed0") < md.index("seed1")
    print(f"ray sweep of 4 fake trials incl. start/stop of Ray: {elapsed:.1f} s")
