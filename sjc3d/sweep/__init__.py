"""Config-driven experiment sweeps: `sjc3d sweep configs/sweeps/cpu_tiny_grid.yaml`.

    spec.py     the sweep file format (documented there), expansion into trials, validation
    runner.py   the local and Ray executors, `run_trial`, `run_sweep`
    results.py  the journal (sweep.jsonl, resume) and the tables (results.csv, results.md)

Behaviour of the command:

- every trial's config is built before anything runs; a bad key, value or image path fails
  the whole sweep with one line (exit code 2) and runs nothing;
- `--dry-run` prints the expanded trials (and which are already done) and writes nothing;
- each trial writes its run directory `<sweep dir>/<trial name>/` (default sweep dir:
  outputs/sweeps/<name>/) and one journal line when it finishes, ok or failed;
- a failing trial is recorded with its one-line error and the others go on; once all trials
  have run and the tables are written, the command exits with code 1 if any trial failed;
- running the same sweep again skips trials recorded as ok with an unchanged config and
  re-runs failed, missing and changed ones: a trial with a checkpoint of the same config
  resumes from it, other stale run directories are replaced;
- Ray: a trial whose worker dies is retried up to `--retries` times, resuming its checkpoint;
- local: SIGTERM/SIGINT stop the running trial after its current step with a checkpoint, and
  the command exits with code 75 (`Preempted`); the same command continues.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from sjc3d.errors import ConfigError, UserError
from sjc3d.sweep.results import TrialRecord, is_done, read_journal, write_tables
from sjc3d.sweep.runner import DEFAULT_RETRIES, EXECUTORS, FitFn, SweepSummary, run_sweep, run_trial
from sjc3d.sweep.spec import Sweep, Trial, load_sweep

DEFAULT_SWEEPS = Path("outputs") / "sweeps"

__all__ = [
    "Sweep", "SweepFailed", "SweepSummary", "Trial", "TrialRecord", "load_sweep", "print_plan", "read_journal",
    "run_sweep", "run_trial", "sweep_command", "write_tables",
]


class SweepFailed(UserError):
    """Some trials failed; the others finished and the tables were written."""

    exit_code = 1


def print_plan(sweep: Sweep, sweep_dir: Path) -> None:
    """The expanded trials as a rich table; reads the journal (if any) but writes nothing."""
    from rich.console import Console
    from rich.table import Table

    records = read_journal(sweep_dir)
    table = Table(title=f"sweep {sweep.name}: {len(sweep.trials)} trials ({sweep.shape})", title_justify="left")
    with_images = any(t.image is not None for t in sweep.trials)
    for column in ("#", "trial", "image", "overrides", "status"):
        if column != "image" or with_images:
            table.add_column(column, overflow="fold")
    for i, trial in enumerate(sweep.trials, 1):
        record = records.get(trial.name)
        if is_done(trial, records):
            status = "done"
        elif record is not None and record.status == "failed":
            status = "re-run (failed)"
        elif record is not None:
            status = "re-run (changed)"
        else:
            status = "new"
        image = [trial.image.name if trial.image else "-"] if with_images else []
        table.add_row(str(i), trial.name, *image, trial.label or "-", status)
    console = Console(highlight=False)
    console.print(table)
    presets = ", ".join(str(p) for p in sweep.presets) or "(defaults)"
    console.print(f"presets: {presets}\nsweep directory: {sweep_dir} (dry run: nothing written)")


def sweep_command(
    sweep_file: Path,
    dry_run: bool = False,
    executor: str = "local",
    address: Optional[str] = None,
    gpus_per_trial: float = 0.0,
    out: Optional[Path] = None,
    fit: Optional[FitFn] = None,
    retries: int = DEFAULT_RETRIES,
) -> Optional[SweepSummary]:
    """`sjc3d sweep`: validate and expand the sweep file, then print the plan or run it.

    Raises SweepFailed (exit code 1) after writing the tables when any trial failed, and
    Preempted (exit code 75) when a signal stopped a local trial (its checkpoint written).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor != "ray" and address:
        raise ConfigError("--address needs --executor ray")
    if executor != "ray" and gpus_per_trial:
        raise ConfigError("--gpus-per-trial needs --executor ray (the local executor runs one trial at a time)")
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: must be >= 0")
    if retries < 0:
        raise ConfigError(f"--retries {retries}: must be >= 0")
    sweep = load_sweep(sweep_file)
    sweep_dir = Path(out) if out is not None else DEFAULT_SWEEPS / sweep.name
    if dry_run:
        print_plan(sweep, sweep_dir)
        return None
    from sjc3d.preemption import Preempted, stop_on_signals

    again = f"sjc3d sweep {sweep_file}" + (f" --out {out}" if out is not None else "")
    # Ray trials run in their workers; only the local executor can stop a trial at a step boundary.
    signals = stop_on_signals() if executor == "local" else contextlib.nullcontext()
    with signals as stop:
        try:
            summary = run_sweep(sweep, sweep_dir, executor=executor, fit=fit, address=address,
                                gpus_per_trial=gpus_per_trial, max_retries=retries, stop=stop)
        except KeyboardInterrupt as e:  # a second signal, or Ctrl-C in the Ray driver
            step = getattr(e, "step", None)  # trainer.FitInterrupted: the trial's checkpoint is written
            if step is None:
                raise
            raise Preempted.after(step, "SIGINT", again, f"trial {Path(e.run_dir).name}") from None
    if summary.stopped is not None:
        raise Preempted.after(summary.stopped.step, stop.signal, again, f"trial {summary.stopped.trial}")
    ok = summary.n_skipped + summary.n_ok
    print(f"{ok}/{summary.n_trials} trials ok ({summary.n_skipped} skipped as done); results: {summary.results_md}")
    if summary.n_failed:
        raise SweepFailed(f"{summary.n_failed} of {summary.n_trials} trials failed; see {summary.results_md}")
    return summary
