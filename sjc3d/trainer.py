"""The fit loop: one image in, a trained field in a run directory out.

Each step (DESIGN.md §1):

    random cameras ──► render y ──► PAAS: z = y + σn, D = prior(z, σ, pose) ──► g = (D − y)/σ
                                                                                   │ chain: y.backward(−g)
    input camera ──► render ──► reference-view loss (colour, mask) + regularisers ──┴──► optimizer

Everything mathematical lives in `sjc.py` and `losses.py`; this module wires the pieces,
keeps the run directory (rundir.py) and survives interruptions: checkpoints are atomic, Ctrl-C
writes one, and `--resume` continues from the last one even after `kill -9`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from sjc3d import losses, sjc
from sjc3d.atomic import atomic_write_text
from sjc3d.cameras import input_c2w, sample_poses, spherical_to_c2w, zero123_pose
from sjc3d.config import Config, config_to_dict, dump_config, is_oracle, load_config
from sjc3d.device import resolve_device
from sjc3d.errors import ConfigError, InputError, NonFiniteError
from sjc3d.image import InputView, load_input_view, resize_images, save_png
from sjc3d.priors.base import Prior
from sjc3d.progress import ProgressBar
from sjc3d.render.base import RenderOutput
from sjc3d.rundir import RunPaths, load_checkpoint, load_run_config, save_checkpoint

PREVIEW_ELEVATION = 15.0


@dataclass
class FitResult:
    run_dir: Path
    step: int
    metrics: dict[str, float]
    wall_time: float


@dataclass
class Stage:
    """Everything a run builds once: models, targets and the cameras they refer to."""

    config: Config
    device: torch.device
    prior: Prior
    field: torch.nn.Module
    renderer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    view: InputView
    input_c2w: Tensor  # [1, 4, 4]
    background: Tensor  # [C]
    reference: Tensor  # [1, r, r, C] target of the render at the input camera
    reference_mask: Tensor  # [1, r, r, 1]
    generator: torch.Generator  # draws cameras and noise; saved in checkpoints for exact resume


# --------------------------------------------------------------------------- set-up


def oracle_input_view(config: Config, prior) -> InputView:
    """Without an image, the oracle renders its own input view of the truth."""
    if not is_oracle(config.prior.source):
        raise InputError("an input image is required (only --prior oracle:MESH renders its own input view)")
    return prior.input_view(config.input.size)


def to_model_space(prior, features: Tensor, output: str) -> Tensor:
    """Render features [B, H, W, C] → the prior's model space [B, C', h, w] (differentiable).

    latent fields render the model space directly; rgb fields are encoded (through the VAE for
    Zero-1-to-3, which expects 256² images, so the render is upsampled first).
    """
    if output == "latent":
        return features.permute(0, 3, 1, 2)
    size = getattr(prior, "encode_size", None)
    return prior.encode(resize_images(features, size) if size else features)


def encode_size(config: Config, prior) -> int:
    """Side of the images the prior's encoder expects (the VAE's training size, else the input's)."""
    return getattr(prior, "encode_size", None) or config.input.size


def check_latent_resolution(config: Config, prior) -> None:
    """Latent renders must have the size of the model's latents (256² views → 32², VAE factor 8)."""
    expected = encode_size(config, prior) // 8
    if config.field.output == "latent" and config.camera.resolution != expected:
        raise ConfigError(f"camera.resolution={config.camera.resolution}: latent renders for this prior must be "
                          f"{expected}x{expected} (set camera.resolution={expected}, or field.output=rgb)")


def reference_targets(config: Config, prior, view: InputView, device: torch.device) -> tuple[Tensor, Tensor]:
    """What the render at the input camera should match: ([1, r, r, C], [1, r, r, 1])."""
    r = config.camera.input_resolution or config.camera.resolution
    rgb = view.rgb[None].to(device)
    if config.field.output == "latent":
        with torch.no_grad():
            latent = prior.encode(resize_images(rgb, encode_size(config, prior))).float()  # [1, 4, h, w]
        target = resize_images(latent.permute(0, 2, 3, 1), r)
    else:
        target = resize_images(rgb, r)
    mask = resize_images(view.mask[None, :, :, None].to(device), r)
    return target, mask


def background_for(config: Config, prior, device: torch.device) -> Tensor:
    """White, in the field's output space: RGB ones, or the latent of a white image."""
    if config.field.output == "rgb":
        return torch.ones(3, device=device)
    size = encode_size(config, prior)
    white = torch.ones(1, size, size, 3, device=device)
    with torch.no_grad():
        return prior.encode(white).float().mean(dim=(2, 3))[0]


def build_optimizer(config: Config, field: torch.nn.Module) -> torch.optim.Optimizer:
    kind = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam}[config.train.optimizer]
    return kind(field.parameters(), lr=config.train.lr)


def build_stage(config: Config, image: Optional[Path], view: Optional[InputView] = None) -> Stage:
    """Build prior, field, renderer and optimiser; `view` (a resumed run's input) skips the image."""
    from sjc3d.fields import build_field
    from sjc3d.priors import build_prior
    from sjc3d.render import build_renderer

    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    if view is None and image is not None:
        view = load_input_view(image, config.input)  # check the image before loading a model
    prior = build_prior(config, device)
    if config.field.output == "latent" and prior.n_channels != 4:
        raise ConfigError("field.output=latent needs a latent prior (the oracle in rgb space has none)")
    check_latent_resolution(config, prior)
    if view is None:
        view = oracle_input_view(config, prior)
    prior.condition(view.rgb.to(device), config.input.elevation, config.camera.radius)
    field = build_field(config.field, device=device)
    renderer = build_renderer(field, config.render, device=device)
    reference, reference_mask = reference_targets(config, prior, view, device)
    generator = torch.Generator().manual_seed(config.train.seed)
    return Stage(
        config, device, prior, field, renderer, build_optimizer(config, field), view,
        input_c2w(config.input.elevation, config.camera.radius, device), background_for(config, prior, device),
        reference, reference_mask, generator,
    )


# --------------------------------------------------------------------------- one step


def score_term(stage: Stage) -> tuple[Tensor, dict[str, float], RenderOutput]:
    """Render random views, score them with the prior, return the chained surrogate loss."""
    cfg = stage.config
    poses = sample_poses(cfg.sjc.n_views, cfg.camera.elevation_range, cfg.camera.azimuth_range,
                         cfg.camera.radius_range, stage.generator, stage.device)
    c2w = poses.c2w()
    render = stage.renderer.render_views(c2w, cfg.camera.fov_deg, cfg.camera.resolution, stage.background)
    y = to_model_space(stage.prior, render.features, cfg.field.output)
    draw = sjc.draw_noise(y, stage.prior.sigmas, cfg.sjc.t_min, cfg.sjc.t_max, stage.generator)
    pose = zero123_pose(stage.input_c2w, c2w)
    denoised = stage.prior.denoise(draw.z, draw.sigma, pose, cfg.prior.guidance_scale).to(y.dtype)
    if not torch.isfinite(denoised).all():
        raise FloatingPointError("score")
    grad = sjc.clip_gradient(sjc.sjc_gradient(y, draw, denoised, cfg.sjc.variance_reduction), cfg.sjc.grad_clip)
    stats = {"sigma": draw.sigma.mean().item(), "score_norm": (grad.norm() / math.sqrt(grad.numel())).item()}
    return sjc.chain_loss(y, grad), stats, render


def reference_term(stage: Stage) -> tuple[Tensor, dict[str, float]]:
    """Reference-view colour and mask losses, plus near-view consistency."""
    cfg, w = stage.config, stage.config.loss
    r = stage.reference.shape[1]
    ref = stage.renderer.render_views(stage.input_c2w, cfg.camera.fov_deg, r, stage.background)
    color = losses.reference_color_loss(ref.features, stage.reference)
    mask = losses.reference_mask_loss(ref.opacity, stage.reference_mask)
    total = w.ref_rgb * color + w.ref_mask * mask
    stats = {"ref_color": color.item(), "ref_mask": mask.item()}
    if w.near_view > 0:
        jitter = (torch.rand(2, generator=stage.generator) * 2 - 1) * w.near_view_degrees
        near_c2w = spherical_to_c2w(cfg.input.elevation + jitter[:1], jitter[1:], torch.tensor([cfg.camera.radius]))
        near = stage.renderer.render_views(near_c2w.to(stage.device), cfg.camera.fov_deg, r, stage.background)
        near_loss = losses.near_view_loss(near.features, ref.features)
        total = total + w.near_view * near_loss
        stats["near_view"] = near_loss.item()
    if cfg.field.output == "rgb":
        stats["ref_psnr"] = (-10 * torch.log10(color.detach().clamp_min(1e-10))).item()
    return total, stats


def regulariser_term(stage: Stage, render: RenderOutput, step: int) -> tuple[Tensor, dict[str, float]]:
    """Depth smoothness, emptiness and opacity entropy on the scored views, with their schedules."""
    w, total_steps = stage.config.loss, stage.config.train.steps
    total = torch.zeros((), device=stage.device)
    stats: dict[str, float] = {}
    if w.depth_smooth > 0 and losses.ramp(step, total_steps, w.depth_smooth_start):
        smooth = losses.depth_smoothness_loss(render.depth, render.opacity)
        total = total + w.depth_smooth * smooth
        stats["depth_smooth"] = smooth.item()
    if w.emptiness > 0:
        boost = w.emptiness_multiplier if losses.ramp(step, total_steps, w.emptiness_start) else 1.0
        empty = losses.emptiness_loss(render.opacity, w.emptiness_scale)
        total = total + w.emptiness * boost * empty
        stats["emptiness"] = empty.item()
    if w.opacity > 0:
        entropy = losses.opacity_entropy_loss(render.opacity)
        total = total + w.opacity * entropy
        stats["opacity_entropy"] = entropy.item()
    return total, stats


def train_step(stage: Stage, step: int) -> dict[str, float]:
    """One optimisation step (1-based `step`); raises NonFiniteError on NaN/Inf."""
    stage.field.train()
    stage.renderer.train()
    stage.optimizer.zero_grad(set_to_none=True)
    try:
        chained, stats, render = score_term(stage)
    except FloatingPointError:
        raise NonFiniteError(f"non-finite score at step {step}") from None
    regulariser, reg_stats = regulariser_term(stage, render, step)
    stats.update(reg_stats)
    loss = chained + regulariser
    if step % stage.config.loss.ref_every == 0:
        ref_loss, ref_stats = reference_term(stage)
        loss = loss + ref_loss
        stats.update(ref_stats)
    if not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss at step {step}")
    loss.backward()
    stage.optimizer.step()
    stage.renderer.update(step)
    stats["loss"] = loss.item()
    return stats


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
    if cfg.field.output == "latent":  # rendered at camera.resolution, decoded 8× larger
        decode, resolution = stage.prior.decode, 8 * cfg.camera.resolution
    else:
        decode, resolution = None, max(64, cfg.camera.resolution)
    stage.field.eval()
    stage.renderer.eval()
    poses = turntable_poses(cfg.train.preview_frames, PREVIEW_ELEVATION, cfg.camera.radius).to(stage.device)
    frames = render_frames(stage.renderer.render_views, poses, cfg.camera.fov_deg, resolution, stage.background, decode)
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


def fit(config: Config, image: Optional[Path], run_dir: Path, resume: bool = False, progress: bool = True) -> FitResult:
    """Train a field for `config.train.steps` steps into `run_dir` (continuing it if `resume`)."""
    paths = RunPaths(Path(run_dir))
    state = None
    if resume:
        state = load_checkpoint(paths.last_checkpoint)
        view = InputView(state["input_rgb"], state["input_mask"])
        stage = build_stage(config, None, view=view)
        restore(stage, state)
    else:
        stage = build_stage(config, Path(image) if image else None)
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
    completed, stats = start, {}
    try:
        for step in range(start + 1, total + 1):
            try:
                stats = train_step(stage, step)
            except NonFiniteError as e:
                last = f"{paths.last_checkpoint}" if paths.last_checkpoint.is_file() else "none written yet"
                raise NonFiniteError(f"{e}; training stopped, last good checkpoint: {last}") from None
            completed = step
            rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
            if step % config.train.log_every == 0 or step == total:
                log.write({"step": step, **stats, "it_per_s": rate, "time": elapsed_before + time.perf_counter() - t0})
            bar.update(step, f"loss {stats['loss']:.4g}  {rate:.2f} it/s")
            if step % config.train.checkpoint_every == 0 and step < total:
                save_checkpoint(paths.last_checkpoint, checkpoint_state(stage, step, elapsed_before + time.perf_counter() - t0))
            if config.train.preview_every > 0 and step % config.train.preview_every == 0 and step < total:
                write_preview(stage, paths, f"step_{step:06d}")
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
