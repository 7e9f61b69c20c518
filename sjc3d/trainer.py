"""The fit loop: one image in, a trained field in a run directory out.

`step.py` builds the stage and runs one optimisation step (DESIGN.md §1); this module repeats
it, keeps the run directory (rundir.py) and survives interruptions: checkpoints are atomic,
Ctrl-C writes one, and `--resume` continues from the last one even after `kill -9`.

Library callers (the sweep runner, the web app) can hand `fit` a prior that is already loaded,
watch every completed step (`on_step`) and ask the loop to stop (`stop`, anything with
`is_set()`, e.g. a `threading.Event`): it then writes a checkpoint of the last completed step
and returns a result marked `stopped`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from sjc3d.atomic import atomic_write_text
from sjc3d.config import Config, config_to_dict, dump_config, is_oracle, load_config
from sjc3d.errors import ConfigError, InputError, NonFiniteError
from sjc3d.image import InputView, save_png
from sjc3d.priors.base import Prior
from sjc3d.progress import ProgressBar
from sjc3d.rundir import RunPaths, load_checkpoint, load_run_config, save_checkpoint
from sjc3d.step import Stage, build_stage, read_stats, train_step

PREVIEW_ELEVATION = 15.0


@dataclass
class FitResult:
    run_dir: Path
    step: int  # last completed step
    metrics: dict[str, float]  # statistics of that step
    wall_time: float  # seconds of training, summed over resumed sessions
    stopped: bool = False  # True when `stop` ended the fit early (a checkpoint of `step` was written)


class StopFlag(Protocol):
    """Anything with `is_set()` (threading.Event): the loop checks it after every step."""

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
    stage.optimizer.load_state_dict(state["optimizer"])
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
    """metrics.jsonl, one JSON object per logged step, appended and flushed."""

    def __init__(self, path: Path):
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- the loop


def fit(config: Config, image: Optional[Path], run_dir: Path, resume: bool = False, progress: bool = True,
        prior: Optional[Prior] = None, on_step: Optional[StepCallback] = None,
        stop: Optional[StopFlag] = None) -> FitResult:
    """Train a field for `config.train.steps` steps into `run_dir` (continuing it if `resume`).

    prior: an already loaded prior to use instead of loading `config.prior.source` (it is
        conditioned on this run's input view).
    on_step: called after every completed step with (step, statistics).
    stop: checked after every step; once set, the loop checkpoints and returns `stopped=True`.
    """
    paths = RunPaths(Path(run_dir))
    state = None
    if resume:
        state = load_checkpoint(paths.last_checkpoint)
        view = InputView(state["input_rgb"], state["input_mask"])
        stage = build_stage(config, None, view=view, prior=prior)
        restore(stage, state)
    else:
        stage = build_stage(config, Path(image) if image else None, prior=prior)
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.config, dump_config(config))
        save_png(paths.input_image, torch.cat([stage.view.rgb, stage.view.mask[..., None]], -1))

    start = int(state["step"]) if state else 0
    elapsed_before = float(state.get("elapsed", 0.0)) if state else 0.0
    truncate_metrics(paths.metrics, start)
    total = config.train.steps
    log = MetricsLog(paths.metrics)
    bar = ProgressBar(total, "fit step", start, config.train.log_every, enabled=progress)
    t0 = time.perf_counter()
    completed, stats, info = start, {}, ""
    try:
        for step in range(start + 1, total + 1):
            try:
                stats = train_step(stage, step)
                # Statistics stay on the device (reading them is a host sync on a GPU) except on
                # steps that log, checkpoint or end, or when a caller watches every step.
                if (step % config.train.log_every == 0 or step == total or step % config.train.checkpoint_every == 0
                        or on_step is not None or (stop is not None and stop.is_set())):
                    stats = read_stats(stage, stats)
                    info = f"loss {stats['loss']:.4g}  "
            except NonFiniteError as e:
                last = f"{paths.last_checkpoint}" if paths.last_checkpoint.is_file() else "none written yet"
                raise NonFiniteError(f"{e}; training stopped, last good checkpoint: {last}") from None
            completed = step
            rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
            if step % config.train.log_every == 0 or step == total:
                log.write({"step": step, **stats, "it_per_s": rate, "time": elapsed_before + time.perf_counter() - t0})
            bar.update(step, f"{info}{rate:.2f} it/s")
            if step % config.train.checkpoint_every == 0 and step < total:
                save_checkpoint(paths.last_checkpoint, checkpoint_state(stage, step, elapsed_before + time.perf_counter() - t0))
            if config.train.preview_every > 0 and step % config.train.preview_every == 0 and step < total:
                write_preview(stage, paths, f"step_{step:06d}")
            if on_step is not None:
                on_step(step, stats)
            if stop is not None and stop.is_set() and step < total:
                save_checkpoint(paths.last_checkpoint, checkpoint_state(stage, step, elapsed_before + time.perf_counter() - t0))
                bar.close()
                log.close()
                return FitResult(paths.root, step, {k: float(v) for k, v in stats.items()},
                                 elapsed_before + time.perf_counter() - t0, stopped=True)
    except KeyboardInterrupt:
        # An interrupt lands inside a step, almost always before optimizer.step(): the state
        # saved is that after the last completed step.
        save_checkpoint(paths.last_checkpoint, checkpoint_state(stage, completed, elapsed_before + time.perf_counter() - t0))
        bar.close()
        log.close()
        print(f"interrupted at step {completed}: checkpoint written; continue with `sjc3d fit --resume {paths.root}`",
              file=sys.stderr)
        raise
    bar.close()
    log.close()

    wall = elapsed_before + time.perf_counter() - t0
    final = checkpoint_state(stage, total, wall)
    save_checkpoint(paths.last_checkpoint, final)
    save_checkpoint(paths.final_checkpoint, final)
    if config.train.preview_every > 0:
        write_preview(stage, paths, "final")
    metrics = {k: float(v) for k, v in stats.items()}
    return FitResult(paths.root, total, metrics, wall)


def default_run_dir(config: Config, image: Optional[str]) -> Path:
    stem = Path(image).stem if image else Path(config.prior.source.split(":", 1)[-1]).stem
    return Path("outputs") / stem / datetime.now().strftime("%Y%m%d-%H%M%S")


def fit_command(image: Optional[str], presets: list[str], overrides: list[str], out: Optional[Path],
                resume: Optional[Path]) -> FitResult:
    """`sjc3d fit`: resolve the config, pick the run directory, train, say where things are."""
    if resume is not None:
        paths = RunPaths(Path(resume))
        if not paths.last_checkpoint.is_file():
            raise InputError(f"cannot resume {resume}: no checkpoint at {paths.last_checkpoint}")
        if image is not None:
            raise ConfigError("--resume continues a run with its own input; do not pass an image")
        saved = config_to_dict(load_run_config(paths))
        config = load_config(presets, overrides, base=saved)
        atomic_write_text(paths.config, dump_config(config))
        run_dir = paths.root
    else:
        config = load_config(presets, overrides)
        if image is None and not is_oracle(config.prior.source):
            raise InputError("give an input image: sjc3d fit IMAGE (only --prior oracle:MESH needs none)")
        run_dir = Path(out) if out is not None else default_run_dir(config, image)
        if RunPaths(run_dir).last_checkpoint.is_file():
            raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out")
    result = fit(config, Path(image) if image else None, run_dir, resume=resume is not None)
    summary = "  ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k in ("loss", "ref_psnr", "ref_mask"))
    print(f"done: {result.step} steps in {result.wall_time:.1f} s  {summary}")
    print(f"run directory: {result.run_dir}")
    print(f"export a mesh: sjc3d export {result.run_dir} --mesh {result.run_dir / 'mesh.glb'}")
    return result
