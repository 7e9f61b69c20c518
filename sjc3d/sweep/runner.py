"""Running a sweep's trials: one after another in this process, or as Ray tasks.

Both executors call the same top-level function, `run_trial`, which never raises for a
failing fit: it returns a `TrialRecord` with status "failed" and the error's first line (and
writes the traceback next to the run), so one bad trial never stops the others.  Only the
driver writes the journal, in the order trials finish.

The fit function is injectable: `fit(config, image, run_dir, resume=False, progress=False)
-> FitResult` (anything with `.run_dir`, `.step`, `.metrics`; `stop=` is passed only when the
local executor has a stop flag).  `None` means `sjc3d.trainer.fit`, imported inside the trial
so that neither the driver nor a dry run imports torch for nothing.

Recovery.  A trial's run directory is fixed by its name, and `<run>/trial.json` records the
trial's fingerprint and how many attempts were started (results.py).  A trial that has a
checkpoint from an earlier attempt with the same fingerprint resumes from it instead of
starting over: on a re-run of the sweep (after Ctrl-C, a crash, a lost machine) and on a
Ray retry.  The Ray driver retries a trial whose worker died (killed, out of memory, node
lost) up to `max_retries` times (Ray's own automatic retries are off so that every attempt
is counted here); an exception raised by the fit itself is a result, not retried.  Every
record carries `retries` (attempts before the last) and `resumed_from` (the step the last
attempt continued from).

Signals.  The local executor takes a stop flag (`sjc3d sweep` sets it on SIGTERM/SIGINT):
the running trial checkpoints its last step and is recorded "stopped", no further trial
starts, and running the same command again resumes it.

Ray.  Each trial is one task, `ray.remote(num_gpus=gpus_per_trial, num_cpus=1)`; Ray sets
CUDA_VISIBLE_DEVICES per task, so a trial sees only its share of the GPUs (with 0 GPUs per
trial it sees none and trains on the CPU).  The driver joins an existing cluster (`address`
or RAY_ADDRESS), reuses a Ray already initialised in this process, or starts a local one for
the sweep and shuts it down at the end.  Workers import sjc3d by name, so it must be
installed on every node, and run directories are written by the workers: on a multi-node
cluster the sweep directory must be on a filesystem all nodes share.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sjc3d.atomic import atomic_write_text
from sjc3d.errors import ConfigError, UserError
from sjc3d.sweep.results import (TrialRecord, append_journal, begin_attempt, is_done, read_journal, resumable,
                                 write_tables)
from sjc3d.sweep.spec import Sweep, Trial

FitFn = Callable[..., Any]
Report = Callable[[str], None]
EXECUTORS = ("local", "ray")
RAY_OBJECT_STORE = 128 * 1024**2  # trials exchange only small records; Ray's minimum is 75 MiB
DEFAULT_RETRIES = 3  # as Ray's own default for tasks (max_retries=3)


@dataclass(frozen=True)
class SweepSummary:
    sweep_dir: Path
    n_trials: int
    n_skipped: int  # already recorded as ok with the same config
    n_ok: int  # ran now and succeeded
    n_failed: int  # ran now and failed
    results_csv: Path
    results_md: Path
    n_stopped: int = 0  # stopped by a signal with a checkpoint (the local executor): resumed on a re-run
    stopped: Optional[TrialRecord] = None  # the trial that was stopped, if any


def one_line(error: BaseException) -> str:
    """A UserError's message as is; anything else prefixed with its type; first line only."""
    text = " ".join(str(error).split()) or "(no message)"
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


def _default_fit() -> FitFn:
    from sjc3d.trainer import fit

    return fit


def run_trial(trial: Trial, run_dir: str, fit: Optional[FitFn] = None, stop: Any = None,
              take_over_lock: bool = False) -> TrialRecord:
    """Fit one trial into `run_dir` and describe the outcome; a failing fit is recorded, not raised.

    Resumes from the run directory's checkpoint when an earlier attempt left one (the driver
    has already emptied directories of other trials or fingerprints).  `take_over_lock`: the
    driver knows the previous attempt's process is dead (its Ray worker died), so a lock it
    left, even one naming another host, is removed.  Top-level on purpose: Ray pickles it by
    reference and workers import it from sjc3d.
    """
    start = time.perf_counter()
    run_path = Path(run_dir)
    retries, resumed_from = 0, 0

    def record(status: str, **kwargs: Any) -> TrialRecord:
        return TrialRecord(trial=trial.name, status=status, image=str(trial.image or ""), overrides=trial.label,
                           run_dir=str(kwargs.pop("run_dir", run_path)), fingerprint=trial.fingerprint,
                           wall_time=time.perf_counter() - start, retries=retries, resumed_from=resumed_from,
                           **kwargs)

    try:
        retries = begin_attempt(run_path, trial.fingerprint) - 1
        resume = resumable(run_path, trial.fingerprint)
        if take_over_lock:
            from sjc3d.runlock import RunLock

            RunLock(run_path, take_over_foreign=True).acquire().release()  # the dead attempt's lock
        extra = {"stop": stop} if stop is not None else {}
        result = (fit or _default_fit())(trial.config, trial.image, run_path, resume=resume, progress=False, **extra)
        resumed_from = int(getattr(result, "start_step", 0))
        metrics = {str(k): float(v) for k, v in dict(result.metrics).items()}
        status = "stopped" if getattr(result, "stopped", False) else "ok"
        return record(status, run_dir=result.run_dir, step=int(result.step), metrics=metrics)
    except Exception as e:  # a trial's failure is data, not a reason to stop the sweep
        try:
            atomic_write_text(run_path / "traceback.txt", traceback.format_exc())
        except UserError:
            pass
        return record("failed", error=one_line(e))


def _prepare_run_dir(sweep_dir: Path, trial: Trial) -> Path:
    """The trial's run directory: kept when it holds this trial's checkpoint, else emptied."""
    run_dir = (sweep_dir / trial.name).resolve()
    if run_dir.is_dir() and not resumable(run_dir, trial.fingerprint):
        shutil.rmtree(run_dir)  # always inside the sweep dir: names hold no '/' and never start with '.'
    return run_dir


def _status_line(done: int, total: int, record: TrialRecord, sort_by: str) -> str:
    head = f"[{done}/{total}] {record.trial}: {record.status} ({record.wall_time:.1f} s"
    if record.status == "ok" and sort_by in record.metrics:
        return f"{head}, {sort_by}={record.metrics[sort_by]:.4g})"
    if record.status != "ok":
        return f"{head}) {record.error}"
    return head + ")"


# --------------------------------------------------------------------------- executors


def _run_local(pending: list[tuple[Trial, Path]], fit: Optional[FitFn], finish: Callable[[TrialRecord], None],
               report: Report, stop: Any) -> None:
    for trial, run_dir in pending:
        if stop is not None and stop.is_set():
            return
        report(f"running {trial.name}")
        record = run_trial(trial, str(run_dir), fit, stop=stop)
        finish(record)
        if record.status == "stopped":
            return


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'sjc3d[ray]'") from None
    return ray


def _connect(ray: Any, address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Make sure this process is a Ray driver; True when we called ray.init (so we shut down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=RAY_OBJECT_STORE, log_to_driver=True)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError...
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start {where}: {one_line(e)}") from None
    return True


def _worker_lost(ray: Any, error: Exception) -> bool:
    """True when `ray.get` failed because the task's process or node went away (worth a retry).

    Not: an exception raised by the task itself (RayTaskError: run_trial lets none through
    but KeyboardInterrupt-like ones), a cancellation, an environment that cannot be set up.
    """
    e = ray.exceptions
    return not isinstance(error, (e.RayTaskError, e.TaskCancelledError, e.RuntimeEnvSetupError,
                                  e.TaskUnschedulableError))


def _run_ray(pending: list[tuple[Trial, Path]], fit: Optional[FitFn], finish: Callable[[TrialRecord], None],
             report: Report, address: Optional[str], gpus_per_trial: float, num_cpus: Optional[int],
             max_retries: int) -> None:
    ray = _import_ray()
    started = _connect(ray, address, num_cpus)
    try:
        # max_retries=0: the driver retries lost workers itself, so that it can count and report them.
        task = ray.remote(num_gpus=gpus_per_trial, num_cpus=1, max_retries=0)(run_trial)
        waiting = {task.remote(trial, str(run_dir), fit): (trial, run_dir, 0) for trial, run_dir in pending}
        report(f"submitted {len(waiting)} Ray tasks ({gpus_per_trial:g} GPU, 1 CPU each)")
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                trial, run_dir, retried = waiting.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as e:  # run_trial never returned
                    if _worker_lost(ray, e) and retried < max_retries:
                        report(f"{trial.name}: worker lost ({one_line(e)[:200]}); retry {retried + 1}/{max_retries}, "
                               "resuming from its checkpoint")
                        again = task.remote(trial, str(run_dir), fit, take_over_lock=True)
                        waiting[again] = (trial, run_dir, retried + 1)
                        continue
                    record = TrialRecord(trial.name, "failed", str(trial.image or ""), trial.label, str(run_dir),
                                         trial.fingerprint, 0.0, retries=retried, error=f"ray: {one_line(e)}")
                finish(record)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- driver


def run_sweep(
    sweep: Sweep,
    sweep_dir: Path,
    executor: str = "local",
    fit: Optional[FitFn] = None,
    address: Optional[str] = None,
    gpus_per_trial: float = 0.0,
    ray_num_cpus: Optional[int] = None,
    report: Report = print,
    max_retries: int = DEFAULT_RETRIES,
    stop: Any = None,
) -> SweepSummary:
    """Run the trials not yet recorded as ok, journal each outcome, and write the tables.

    The tables are written even when the sweep is interrupted, so they always show the
    journal's state.  Failed trials do not raise here; see SweepSummary.n_failed.
    max_retries: Ray only, retries of a trial whose worker died (each resumes its checkpoint).
    stop: local executor only, a stop flag (`is_set()`), e.g. preemption.stop_on_signals().
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    sweep_dir = Path(sweep_dir)
    records = read_journal(sweep_dir)
    done = [t for t in sweep.trials if is_done(t, records)]
    pending = [t for t in sweep.trials if not is_done(t, records)]
    report(f"sweep {sweep.name}: {len(sweep.trials)} trials ({sweep.shape}); "
           f"{len(done)} already done, {len(pending)} to run; writing to {sweep_dir}")

    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / "sweep.yaml", sweep.text)
    if max_retries < 0:
        raise ConfigError(f"--retries {max_retries}: must be >= 0")
    work = [(trial, _prepare_run_dir(sweep_dir, trial)) for trial in pending]
    counts = {"ok": 0, "failed": 0, "stopped": 0}
    stopped: list[TrialRecord] = []

    def finish(record: TrialRecord) -> None:
        append_journal(sweep_dir, record)
        records[record.trial] = record
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.status == "stopped":
            stopped.append(record)
        report(_status_line(sum(counts.values()), len(pending), record, sweep.sort_by))

    try:
        if executor == "local":
            _run_local(work, fit, finish, report, stop)
        else:
            _run_ray(work, fit, finish, report, address, gpus_per_trial, ray_num_cpus, max_retries)
    finally:
        csv_path, md_path = write_tables(sweep, sweep_dir, records)
    return SweepSummary(sweep_dir, len(sweep.trials), len(done), counts["ok"], counts["failed"], csv_path, md_path,
                        n_stopped=counts["stopped"], stopped=stopped[0] if stopped else None)
