"""The fit loop: one image in, a trained field in a run directory out.

`step.py` builds the stage and runs one optimisation step (DESIGN.md §1); this module repeats
it and keeps the run directory (rundir.py) through the faults of real machines:

- preemption: `sjc3d fit` turns SIGTERM and SIGINT into a stop flag (preemption.py); the loop
  finishes its step, writes a checkpoint of it and the command exits with code 75 and one line
  saying how to resume.  A second signal abandons the step in progress; a checkpoint being
  written is always completed first;
- a file that cannot be written (full disk, unwritable folder) stops the fit with one line
  naming the file and the cause (atomic.py); checkpoints are atomic, so the last good one
  stays, and `train.keep_checkpoints` keeps a short history to fall back on;
- one writer per run directory (runlock.py); `--resume` continues from the last checkpoint,
  also after `kill -9`, and an interrupted and resumed run is bit-identical to an
  uninterrupted one.

Library callers (the sweep runner, the web app) can hand `fit` a prior that is already loaded,
watch every completed step (`on_step`) and ask the loop to stop (`stop`, anything with
`is_set()`, e.g. a `threading.Event`): it then writes a checkpoint of the last completed step
and returns a result marked `stopped`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from sjc3d.atomic import WriteError, atomic_write_text, remove_partials, reporting_write_errors
from sjc3d.config import Config, config_to_dict, dump_config, is_oracle, load_config
from sjc3d.errors import ConfigError, InputError, NonFiniteError
from sjc3d.fields import port_optimizer_state
from sjc3d.image import InputView, save_png
from sjc3d.preemption import Preempted, signals_deferred, stop_on_signals
from sjc3d.priors.base import Prior
from sjc3d.progress import ProgressBar
from sjc3d.rundir import RunPaths, load_resume_checkpoint, load_run_config, save_checkpoint, save_run_checkpoint
from sjc3d.runlock import RunLock
from sjc3d.step import Stage, build_stage, read_stats, train_step

PREVIEW_ELEVATION = 15.0


@dataclass
class FitResult:
    run_dir: Path
    step: int  # last completed step
    metrics: dict[str, float]  # statistics of that step
    wall_time: float  # seconds of training, summed over resumed sessions
    stopped: bool = False  # True when `stop` ended the fit early (a checkpoint of `step` was written)
    start_step: int = 0  # the step this session continued from (0: a new run)


class StopFlag(Protocol):
    """Anything with `is_set()` (threading.Event, preemption.SignalStop): checked before every step."""

    def is_set(self) -> bool: ...


StepCallback = Callable[[int, dict], None]  # (completed step, its statistics)


# --------------------------------------------------------------------------- run directory


def checkpoint_state(stage: Stage, step: int, elapsed: float) -> dict:
    return {
        "step": step,
        "field": stage.field.state_dict(),
        "renderer": stage.renderer.state_dict(),
        "optimizer": stage.optimizer.state_dict(),
        "background": stage.background.detach().cpu(),
        "rng": stage.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "input_rgb": stage.view.rgb.cpu(),
        "input_mask": stage.view.mask.cpu(),
        "elapsed": elapsed,
        # Stratified jitter on a GPU draws from the CUDA generator: saved too for exact resumes.
        "cuda_rng": torch.cuda.get_rng_state_all() if stage.device.type == "cuda" else [],
    }


def restore(stage: Stage, state: dict) -> None:
    stage.field.load_state_dict(state["field"])
    stage.renderer.load_state_dict(state["renderer"])
    # A run trained on the other hash-grid backend: its Adam(ax) moments follow the converted table.
    stage.optimizer.load_state_dict(port_optimizer_state(state["optimizer"], stage.optimizer, stage.field))
    stage.generator.set_state(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and stage.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep complete metric lines up to `last_step` (a killed run may leave later or partial ones)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", math.inf) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def write_preview(stage: Stage, paths: RunPaths, name: str) -> Path:
    """A turntable strip (views side by side, input view first) in previews/<name>.png."""
    from sjc3d.turntable import render_frames, turntable_poses

    cfg = stage.config
    factor = stage.prior.latent_factor if cfg.field.output == "latent" else 1
    if cfg.field.output == "latent":  # rendered at camera.resolution, decoded `factor`× larger
        decode, resolution = stage.prior.decode, factor * cfg.camera.resolution
    else:
        decode, resolution = None, max(64, cfg.camera.resolution)
    stage.field.eval()
    stage.renderer.eval()
    poses = turntable_poses(cfg.train.preview_frames, PREVIEW_ELEVATION, cfg.camera.radius).to(stage.device)
    frames = render_frames(stage.renderer.render_views, poses, cfg.camera.fov_deg, resolution, stage.background, decode,
                           latent_factor=factor)
    return save_png(paths.previews / f"{name}.png", np.concatenate(list(frames), axis=1))


class MetricsLog:
    """metrics.jsonl, one JSON object per logged step, appended and flushed.

    A line that cannot be written (full disk) raises a WriteError naming the file; a torn
    last line is dropped on resume (`truncate_metrics`).
    """

    def __init__(self, path: Path):
        self.path = path
        with reporting_write_errors(path):
            self.file = open(path, "a")

    def write(self, record: dict) -> None:
        with reporting_write_errors(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # after a failed write the buffer may still hold it
            self.file.close()


class Checkpoints:
    """Writes the run's checkpoints and remembers the last step on disk.

    Each write runs with SIGTERM/SIGINT deferred (preemption.py): a signal arriving during it
    is acted on once the file is complete.
    """

    def __init__(self, paths: RunPaths, keep: int, saved_step: Optional[int]):
        self.paths, self.keep = paths, keep
        self.saved_step = saved_step  # step of the newest checkpoint on disk (None: none yet)

    def save(self, stage: Stage, step: int, elapsed: float) -> None:
        with signals_deferred():  # a held signal is delivered on leaving, after saved_step is set
            save_run_checkpoint(self.paths, checkpoint_state(stage, step, elapsed), self.keep)
            self.saved_step = step

    def save_final(self, stage: Stage, step: int, elapsed: float) -> None:
        with signals_deferred():
            state = checkpoint_state(stage, step, elapsed)
            save_run_checkpoint(self.paths, state, self.keep)
            save_checkpoint(self.paths.final_checkpoint, state)
            self.saved_step = step

    def describe(self) -> str:
        """Where a stopped run stands, for error messages."""
        if self.saved_step is None:
            return "no checkpoint written yet"
        return f"last good checkpoint: step {self.saved_step} in {self.paths.last_checkpoint}"


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a second stop signal) ended the fit; a checkpoint of `step` is on disk.

    A KeyboardInterrupt, so that code which stops on Ctrl-C keeps stopping.
    """

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted after step {step}")
        self.run_dir, self.step = run_dir, step


# --------------------------------------------------------------------------- the loop


def fit(config: Config, image: Optional[Path], run_dir: Path, resume: bool = False, progress: bool = True,
        prior: Optional[Prior] = None, on_step: Optional[StepCallback] = None,
        stop: Optional[StopFlag] = None) -> FitResult:
    """Train a field for `config.train.steps` steps into `run_dir` (continuing it if `resume`).

    prior: an already loaded prior to use instead of loading `config.prior.source` (it is
        conditioned on this run's input view).
    on_step: called after every completed step with (step, statistics).
    stop: checked before every step; once set, the loop checkpoints the last completed step
        and returns `stopped=True` (sjc3d.preemption.stop_on_signals gives one set by SIGTERM).

    The run directory is locked for the duration (runlock.py): RunLocked if another live
    process holds it.  Ctrl-C raises FitInterrupted after checkpointing the last completed
    step; a file that cannot be written raises WriteError, the last good checkpoint intact.
    A new run whose set-up fails (a bad image) leaves no folder behind.
    """
    paths = RunPaths(Path(run_dir))
    created = not paths.root.exists()
    with reporting_write_errors(paths.root):
        paths.root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(paths.root).acquire()
    try:
        try:
            stage, start, elapsed = open_run(config, image, paths, resume, prior)
        except BaseException:
            if created:
                lock.release()
                with contextlib.suppress(OSError):
                    paths.root.rmdir()  # only if empty: nothing was written yet
            raise
        return train(stage, paths, start, elapsed, resume, progress, on_step, stop)
    finally:
        lock.release()


def open_run(config: Config, image: Optional[Path], paths: RunPaths, resume: bool,
             prior: Optional[Prior]) -> tuple[Stage, int, float]:
    """The stage of a new run (config.yaml and input.png written) or of a resumed one.

    Returns (stage, step to continue after, seconds trained before).  Called with the lock held.
    """
    for folder in (paths.root, paths.checkpoints, paths.previews):
        remove_partials(folder)  # temporary files of a writer that was killed (kill -9, power loss)
    if resume:
        state, _ = load_resume_checkpoint(paths)
        stage = build_stage(config, None, view=InputView(state["input_rgb"], state["input_mask"]), prior=prior)
        restore(stage, state)
        atomic_write_text(paths.config, dump_config(stage.config))  # the settings this session runs with
        return stage, int(state["step"]), float(state.get("elapsed", 0.0))
    if paths.has_checkpoint():
        raise ConfigError(f"{paths.root} already holds a run: continue it with --resume {paths.root}, "
                          "or choose another --out")
    stage = build_stage(config, Path(image) if image else None, prior=prior)
    atomic_write_text(paths.config, dump_config(stage.config))  # with auto settings made concrete
    save_png(paths.input_image, torch.cat([stage.view.rgb, stage.view.mask[..., None]], -1))
    return stage, 0, 0.0


def train(stage: Stage, paths: RunPaths, start: int, elapsed_before: float, resumed: bool, progress: bool,
          on_step: Optional[StepCallback], stop: Optional[StopFlag]) -> FitResult:
    """Steps start+1 .. train.steps, with logs, checkpoints and previews; see `fit`."""
    config = stage.config
    total = config.train.steps
    truncate_metrics(paths.metrics, start)
    checkpoints = Checkpoints(paths, config.train.keep_checkpoints, start if resumed else None)
    log = MetricsLog(paths.metrics)
    bar = ProgressBar(total, "fit step", start, config.train.log_every, enabled=progress)
    t0 = time.perf_counter()

    def clock() -> float:
        return elapsed_before + time.perf_counter() - t0

    def checked(stats: dict, read: bool) -> dict:
        """The step's statistics as floats; NonFiniteError if any step so far went NaN/Inf."""
        try:
            return stats if read else read_stats(stage, stats)
        except NonFiniteError as e:
            raise NonFiniteError(f"{e}; training stopped, {checkpoints.describe()}") from None

    completed, stats, info, read = start, {}, "", True
    try:
        for step in range(start + 1, total + 1):
            if stop is not None and stop.is_set():
                # Between steps: the state is exactly that after `completed`, nothing is lost.
                stats = checked(stats, read)
                if checkpoints.saved_step != completed:
                    checkpoints.save(stage, completed, clock())
                return FitResult(paths.root, completed, {k: float(v) for k, v in stats.items()}, clock(),
                                 stopped=True, start_step=start)
            stats, read = train_step(stage, step), False
            # Statistics stay on the device (reading them is a host sync on a GPU) except on
            # steps that log, checkpoint or end, or when a caller watches every step.
            if (step % config.train.log_every == 0 or step == total or step % config.train.checkpoint_every == 0
                    or on_step is not None or (stop is not None and stop.is_set())):
                stats, read = checked(stats, read), True
                info = f"loss {stats['loss']:.4g}  "
            completed = step
            rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
            if step % config.train.log_every == 0 or step == total:
                log.write({"step": step, **stats, "it_per_s": rate, "time": clock()})
            bar.update(step, f"{info}{rate:.2f} it/s")
            if step % config.train.checkpoint_every == 0 and step < total:
                checkpoints.save(stage, step, clock())
            if config.train.preview_every > 0 and step % config.train.preview_every == 0 and step < total:
                write_preview(stage, paths, f"step_{step:06d}")
            if on_step is not None:
                on_step(step, stats)
        stats = checked(stats, read)
        wall = clock()
        checkpoints.save_final(stage, total, wall)
        if config.train.preview_every > 0:
            write_preview(stage, paths, "final")
    except KeyboardInterrupt:
        # Ctrl-C without a handler, or a second stop signal: it lands inside a step, almost
        # always before optimizer.step(), so the state saved is that after the last completed step.
        if checkpoints.saved_step != completed:
            checked(stats, read)
            checkpoints.save(stage, completed, clock())
        raise FitInterrupted(paths.root, completed) from None
    except WriteError as e:
        raise WriteError(f"{e}; training stopped after step {completed}, {checkpoints.describe()}; make room "
                         f"(or fix the folder), then continue with: sjc3d fit --resume {paths.root}") from e
    finally:
        bar.close()
        log.close()
    return FitResult(paths.root, total, {k: float(v) for k, v in stats.items()}, wall, start_step=start)


def default_run_dir(config: Config, image: Optional[str]) -> Path:
    stem = Path(image).stem if image else Path(config.prior.source.split(":", 1)[-1]).stem
    return Path("outputs") / stem / datetime.now().strftime("%Y%m%d-%H%M%S")


def fit_command(image: Optional[str], presets: list[str], overrides: list[str], out: Optional[Path],
                resume: Optional[Path]) -> FitResult:
    """`sjc3d fit`: resolve the config, pick the run directory, train, say where things are.

    SIGTERM/SIGINT stop the fit after its current step with a checkpoint: `Preempted` (exit 75).
    """
    if resume is not None:
        paths = RunPaths(Path(resume))
        if not paths.has_checkpoint():
            raise InputError(f"cannot resume {resume}: no checkpoint at {paths.last_checkpoint}")
        if image is not None:
            raise ConfigError("--resume continues a run with its own input; do not pass an image")
        saved = config_to_dict(load_run_config(paths))
        config = load_config(presets, overrides, base=saved)
        run_dir = paths.root
    else:
        config = load_config(presets, overrides)
        if image is None and not is_oracle(config.prior.source):
            raise InputError("give an input image: sjc3d fit IMAGE (only --prior oracle:MESH needs none)")
        run_dir = Path(out) if out is not None else default_run_dir(config, image)
        if RunPaths(run_dir).has_checkpoint():
            raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out")
    how_to_resume = f"sjc3d fit --resume {run_dir}"
    with stop_on_signals() as stop:
        try:
            result = fit(config, Path(image) if image else None, run_dir, resume=resume is not None, stop=stop)
        except FitInterrupted as e:
            raise Preempted.after(e.step, stop.signal or "SIGINT", how_to_resume) from None
    if result.stopped:
        raise Preempted.after(result.step, stop.signal, how_to_resume)
    summary = "  ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k in ("loss", "ref_psnr", "ref_mask"))
    print(f"done: {result.step} steps in {result.wall_time:.1f} s  {summary}")
    print(f"run directory: {result.run_dir}")
    print(f"export a mesh: sjc3d export {result.run_dir} --mesh {result.run_dir / 'mesh.glb'}")
    return result
