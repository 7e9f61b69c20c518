"""`sjc3d train-prior CONFIG [key=value ...]`: resolve the run, the data and the model, run the stages.

    sjc3d train-prior toy                                   # the shipped toy prior (= make prior)
    sjc3d train-prior toy data.root=/data/views_release     # on the original Objaverse renders
    sjc3d train-prior toy model.init_from=ashawkey/zero123-xl-diffusers diffusion.lr=1e-4 data.root=...
    sjc3d train-prior --resume outputs/prior/toy            # continue after an interruption
    accelerate launch --multi_gpu --num_processes 2 -m sjc3d train-prior toy   # several processes
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from sjc3d.config import config_to_dict, read_yaml
from sjc3d.errors import ConfigError, InputError
from sjc3d.train_prior.config import PriorTrainingConfig, load_training_config
from sjc3d.train_prior.data import ViewSet, load_view_set
from sjc3d.train_prior.loop import (
    PriorRunPaths,
    PriorTrainer,
    StageLog,
    load_training_checkpoint,
    truncate_metrics,
    write_config,
)
from sjc3d.train_prior.model import PriorComponents


def make_accelerator(device: str):
    """The Accelerator of this process (one process, or one of those `accelerate launch` started)."""
    from accelerate import Accelerator

    from sjc3d.device import resolve_device

    cpu = resolve_device(device, setting="run.device").type == "cpu"
    launcher_choice = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher_choice not in ("", "no"):
        print(f"sjc3d train-prior: accelerate's mixed precision ({launcher_choice}) is not used; precision is set "
              "per stage: autoencoder.autocast / diffusion.autocast=bf16", file=sys.stderr)
    return Accelerator(cpu=cpu, mixed_precision="no")  # the stages autocast themselves (loop.autocast)


def procedural_root(cfg: PriorTrainingConfig, size: int) -> Path:
    d = cfg.data
    return Path(d.procedural_cache) / f"procedural-seed{d.procedural_seed}-{d.procedural_objects}x{d.procedural_views}-{size}px"


def prepare_views(cfg: PriorTrainingConfig, size: int, accelerator, progress: bool) -> ViewSet:
    """Every view in memory at `size`²; procedural views are rendered first (once, by the main process)."""
    if cfg.data.root:
        root = Path(cfg.data.root)
    else:
        from sjc3d.datasets.make_views import make_views

        root = procedural_root(cfg, size)
        if accelerator.is_main_process:
            make_views(root, n_objects=cfg.data.procedural_objects, n_views=cfg.data.procedural_views, size=size,
                       seed=cfg.data.procedural_seed, split="train", workers=cfg.data.workers, progress=progress)
        accelerator.wait_for_everyone()
    views = load_view_set(root, size, progress)
    if views.n_objects <= cfg.data.held_out_objects:
        raise InputError(f"{root}: {views.n_objects} objects, but data.held_out_objects={cfg.data.held_out_objects} "
                         "must leave some to train on")
    return views


def build_model(cfg: PriorTrainingConfig) -> PriorComponents:
    from sjc3d.train_prior.model import build_components, load_components

    if cfg.model.init_from:
        from sjc3d.priors import resolve_project_path

        parts = load_components(str(resolve_project_path(cfg.model.init_from)), cfg.model.image_encoder or None)
    else:
        parts = build_components(cfg.model, cfg.run.seed)
    if cfg.diffusion.prediction_type:
        parts.scheduler_config["prediction_type"] = cfg.diffusion.prediction_type
    return parts


def resolve_run(config: Optional[str], overrides: list[str], resume: Optional[Path],
                out: Optional[Path]) -> tuple[PriorTrainingConfig, PriorRunPaths]:
    """The configuration and run directory of a new run, or of the run `resume` continues."""
    if resume is not None:
        paths = PriorRunPaths(Path(resume))
        if not paths.checkpoint.is_file():
            raise InputError(f"cannot resume {resume}: no checkpoint at {paths.checkpoint}")
        cfg = load_training_config("", overrides, base=read_yaml(paths.config))
        return cfg, paths
    if not config:
        raise ConfigError("give a training config: sjc3d train-prior CONFIG (e.g. toy), or --resume RUN_DIR")
    cfg = load_training_config(config, overrides)
    root = out or (Path(cfg.run.out) if cfg.run.out else Path("outputs") / "prior" / Path(config).stem)
    paths = PriorRunPaths(Path(root))
    if paths.checkpoint.is_file():
        raise ConfigError(f"{paths.root} already holds a training run: continue it with --resume {paths.root}, "
                          "or choose another --out")
    return cfg, paths


def train_prior(cfg: PriorTrainingConfig, paths: PriorRunPaths, resume: bool = False, progress: bool = True,
                stop=None) -> PriorTrainer:
    """Run every stage of `cfg` into `paths` (continuing the checkpoint there when `resume`)."""
    accelerator = make_accelerator(cfg.run.device)
    start = time.perf_counter()
    state = load_training_checkpoint(paths.checkpoint) if resume else None
    if accelerator.is_main_process:
        paths.root.mkdir(parents=True, exist_ok=True)
        write_config(paths, cfg)
        if state is not None:
            truncate_metrics(paths.metrics, state["stage"], int(state["step"]))

    parts = build_model(cfg)
    size = int(parts.vae.config.sample_size)  # a fine-tuned model trains at its own image size
    views = prepare_views(cfg, size, accelerator, progress and accelerator.is_main_process)
    trainer = PriorTrainer(cfg, views, parts, paths.root, accelerator, progress, stop)
    if state is not None:
        trainer.logs.update({k: StageLog(**v) for k, v in state["logs"].items()})
    before = sum(log.wall_time for log in trainer.logs.values())
    trainer.logs["setup"].wall_time += time.perf_counter() - start  # model, data (rendered once), loading

    new_model = not cfg.model.init_from
    if new_model and cfg.autoencoder.init_from and state is None:
        from sjc3d.train_prior.model import adopt_autoencoder

        adopt_autoencoder(parts, cfg.autoencoder.init_from)  # stage 1 done elsewhere
        trainer.freeze_autoencoder(measure_scale=False)
    elif new_model and (state is None or state["stage"] == "autoencoder"):
        trainer.train_autoencoder(state)
        if trainer.stopped:
            return trainer
        trainer.freeze_autoencoder(measure_scale=True)
    else:
        if state is not None:
            parts.vae.load_state_dict(state["vae"])
            parts.vae.register_to_config(scaling_factor=float(state["scaling_factor"]))
        trainer.freeze_autoencoder(measure_scale=False)  # a fine-tuned model keeps its latent space

    trainer.train_diffusion(state if state is not None and state["stage"] == "diffusion" else None)
    if trainer.stopped:
        return trainer
    if accelerator.is_main_process:
        trainer.write_samples("final")
        # Everything of this session not yet counted (latent caching, final samples, export).
        counted = sum(log.wall_time for log in trainer.logs.values()) - before
        trainer.logs["setup"].wall_time += max(0.0, time.perf_counter() - start - counted)
        trainer.export()
    accelerator.wait_for_everyone()
    return trainer


def train_prior_command(config: Optional[str], overrides: list[str], resume: Optional[Path], out: Optional[Path]) -> Path:
    from sjc3d.preemption import Preempted, stop_on_signals

    cfg, paths = resolve_run(config, overrides, resume, out)
    torch.manual_seed(cfg.run.seed)
    with stop_on_signals() as stop:  # SIGTERM/SIGINT: checkpoint at the next step, then exit 75
        trainer = train_prior(cfg, paths, resume=resume is not None, stop=stop)
    if trainer.stopped:
        raise Preempted(f"checkpoint written; continue with: sjc3d train-prior --resume {paths.root}", stop.signal)
    if trainer.main:
        print(f"model: {paths.model}  (card: {paths.model / 'MODEL.md'})")
        print(f"samples: {paths.samples}")
        print(f"use it: sjc3d fit IMAGE --model {paths.model} -c learned-cpu")
    return paths.model


__all__ = ["train_prior", "train_prior_command", "resolve_run", "config_to_dict"]
