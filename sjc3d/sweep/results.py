"""What a sweep leaves behind: the trial journal and the results tables.

    <sweep dir>/
      sweep.yaml     the sweep file as it was last run
      sweep.jsonl    one JSON line per finished trial (ok or failed), appended as trials finish
      results.csv    one row per trial, rewritten (atomically) at the end of every invocation
      results.md     the same as a markdown table, sorted by the sweep's `sort_by` metric
      <trial>/       each trial's run directory (see sjc3d/rundir.py), plus
        trial.json   {"fingerprint", "attempts"}: whose checkpoint this is, how many starts

The journal is the source of truth for what is done: the last line of a trial wins.  Lines are
written whole, flushed and fsynced one at a time, so a sweep killed mid-way loses at most the
line being written; a torn last line is skipped when reading.  trial.json decides whether an
unfinished trial resumes: only from a checkpoint of the same fingerprint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from sjc3d.atomic import atomic_write_text, reporting_write_errors
from sjc3d.rundir import RunPaths
from sjc3d.sweep.spec import Sweep, Trial

JOURNAL = "sweep.jsonl"
CSV = "results.csv"
MARKDOWN = "results.md"
TRIAL_STATE = "trial.json"


@dataclass
class TrialRecord:
    """The outcome of one trial, as a journal line."""

    trial: str
    status: str  # "ok" | "failed" | "stopped" (a signal; checkpoint written, resumed on a re-run)
    image: str  # "" for an oracle prior
    overrides: str  # the varied settings, `[run] key=value ...`
    run_dir: str
    fingerprint: str
    wall_time: float  # seconds around the fit call (model loading included)
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""  # one line; the full traceback is in <run_dir>/traceback.txt
    retries: int = 0  # attempts started before the last one (a lost worker, an interrupted sweep)
    resumed_from: int = 0  # the checkpoint step the last attempt continued from (0: from scratch)

    @classmethod
    def from_json(cls, data: dict) -> Optional["TrialRecord"]:
        try:
            return cls(
                trial=str(data["trial"]), status=str(data["status"]), image=str(data.get("image", "")),
                overrides=str(data.get("overrides", "")), run_dir=str(data.get("run_dir", "")),
                fingerprint=str(data.get("fingerprint", "")), wall_time=float(data.get("wall_time", 0.0)),
                step=int(data.get("step", 0)), metrics={str(k): float(v) for k, v in dict(data.get("metrics", {})).items()},
                error=str(data.get("error", "")), retries=int(data.get("retries", 0)),
                resumed_from=int(data.get("resumed_from", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def read_journal(sweep_dir: Path) -> dict[str, TrialRecord]:
    """The latest record of each trial; unreadable (torn) lines are skipped."""
    path = Path(sweep_dir) / JOURNAL
    records: dict[str, TrialRecord] = {}
    if not path.is_file():
        return records
    for line in path.read_text(errors="replace").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        record = TrialRecord.from_json(data) if isinstance(data, dict) else None
        if record is not None:
            records[record.trial] = record
    return records


def append_journal(sweep_dir: Path, record: TrialRecord) -> None:
    """Append one line and make it durable before the next trial starts."""
    path = Path(sweep_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(record), sort_keys=False)
    with reporting_write_errors(path), open(path, "a+b") as f:
        # A sweep killed mid-write leaves a torn line with no newline: start on a fresh one.
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def is_done(trial: Trial, records: dict[str, TrialRecord]) -> bool:
    """Finished successfully with the same resolved config and image: skip it on a re-run."""
    record = records.get(trial.name)
    return record is not None and record.status == "ok" and record.fingerprint == trial.fingerprint


def _trial_state(run_dir: Path) -> dict:
    try:
        data = json.loads((Path(run_dir) / TRIAL_STATE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def resumable(run_dir: Path, fingerprint: str) -> bool:
    """The run directory holds a checkpoint of a trial with this fingerprint (resume, do not wipe)."""
    return _trial_state(run_dir).get("fingerprint") == fingerprint and RunPaths(Path(run_dir)).has_checkpoint()


def begin_attempt(run_dir: Path, fingerprint: str) -> int:
    """Count one more start of the trial in `<run_dir>/trial.json`; returns this attempt's number (1, 2 ...)."""
    state = _trial_state(run_dir)
    attempt = int(state.get("attempts", 0)) + 1 if state.get("fingerprint") == fingerprint else 1
    atomic_write_text(Path(run_dir) / TRIAL_STATE, json.dumps({"fingerprint": fingerprint, "attempts": attempt}) + "\n")
    return attempt


# --------------------------------------------------------------------------- tables


def _rows(sweep: Sweep, records: dict[str, TrialRecord]) -> list[TrialRecord]:
    """One record per trial of the sweep, pending ones included, sorted by the chosen metric."""
    rows = []
    for trial in sweep.trials:
        record = records.get(trial.name)
        if record is None or record.fingerprint != trial.fingerprint:
            record = TrialRecord(trial.name, "pending", str(trial.image or ""), trial.label, "", trial.fingerprint, 0.0)
        rows.append(record)

    def key(record: TrialRecord) -> tuple[int, float]:
        value = record.wall_time if sweep.sort_by == "wall_time" else record.metrics.get(sweep.sort_by)
        if record.status != "ok" or value is None or math.isnan(value):
            return (1, 0.0)  # failed, pending and unmeasured trials go last, in sweep order
        return (0, value if sweep.sort_order == "asc" else -value)

    return sorted(rows, key=key)  # stable: ties keep the sweep's order


def _display_path(path: str) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _table(rows: list[TrialRecord]) -> tuple[list[str], list[list[str]]]:
    metric_names = sorted({k for r in rows for k in r.metrics})
    header = ["trial", "overrides", "image", "run_dir", "status", *metric_names, "wall_time_s", "retries", "error"]
    body = []
    for r in rows:
        metrics = [f"{r.metrics[k]:.6g}" if k in r.metrics else "" for k in metric_names]
        wall = f"{r.wall_time:.1f}" if r.status != "pending" else ""
        retries = str(r.retries) if r.status != "pending" else ""
        image = Path(r.image).name if r.image else ""
        body.append([r.trial, r.overrides, image, _display_path(r.run_dir), r.status, *metrics, wall, retries, r.error])
    return header, body


def write_tables(sweep: Sweep, sweep_dir: Path, records: dict[str, TrialRecord]) -> tuple[Path, Path]:
    """Rewrite results.csv and results.md from the journal's records."""
    rows = _rows(sweep, records)
    header, body = _table(rows)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(body)
    csv_path = Path(sweep_dir) / CSV
    atomic_write_text(csv_path, buffer.getvalue())

    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "failed", "stopped", "pending")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"{len(rows)} trials ({sweep.shape}): {summary}. Sorted by `{sweep.sort_by}` ({sweep.sort_order}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    md_path = Path(sweep_dir) / MARKDOWN
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
