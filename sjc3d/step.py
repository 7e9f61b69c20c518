"""One optimisation step of the fit, and the stage it runs on.

    random cameras ──► render y ──► PAAS: z = y + σn, D = prior(z, σ, pose) ──► g = (D − y)/σ
                                                                                   │ chain: y.backward(−g)
    input camera ──► render ──► reference-view loss (colour, mask) + regularisers ──┴──► optimizer

`build_stage` builds everything a run needs once (prior, field, renderer, optimiser, targets);
`train_step` runs one step on it.  The mathematics lives in `sjc.py` and `losses.py`; the loop,
checkpoints and the run directory live in `trainer.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from sjc3d import losses, sjc
from sjc3d.cameras import input_c2w, sample_poses, spherical_to_c2w, zero123_pose
from sjc3d.config import Config, is_oracle
from sjc3d.device import resolve_device
from sjc3d.errors import ConfigError, InputError, NonFiniteError
from sjc3d.image import InputView, load_input_view, resize_images
from sjc3d.priors.base import Prior
from sjc3d.render.base import RenderOutput


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
    Zero-1-to-3, which expects images of its training size, so the render is resized first).
    """
    if output == "latent":
        return features.permute(0, 3, 1, 2)
    size = getattr(prior, "encode_size", None)
    return prior.encode(resize_images(features, size) if size else features)


def encode_size(config: Config, prior) -> int:
    """Side of the images the prior's encoder expects (the VAE's training size, else the input's)."""
    return getattr(prior, "encode_size", None) or config.input.size


def check_latent_resolution(config: Config, prior) -> None:
    """Latent renders must have the size of the model's latents: its image size / its VAE factor.

    (256² views → 32² for Zero-1-to-3's factor-8 VAE; 64² → 16² for a factor-4 toy model.)
    """
    expected = encode_size(config, prior) // prior.latent_factor
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


def build_stage(config: Config, image: Optional[Path], view: Optional[InputView] = None,
                prior: Optional[Prior] = None) -> Stage:
    """Build prior, field, renderer and optimiser.

    view: a resumed run's input view (the image is then not read again).
    prior: an already loaded prior (the web app shares one); else `config.prior.source` is loaded.
    """
    from sjc3d.fields import build_field
    from sjc3d.priors import build_prior
    from sjc3d.render import build_renderer

    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    if view is None and image is not None:
        view = load_input_view(image, config.input)  # check the image before loading a model
    if prior is None:
        prior = build_prior(config, device)
    if config.field.output == "latent" and prior.n_channels == 3:
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
    if cfg.sjc.weight == 0:  # the score-off baseline: the views are rendered for the regularisers only
        return torch.zeros((), device=stage.device), {}, render
    y = to_model_space(stage.prior, render.features, cfg.field.output)
    draw = sjc.draw_noise(y, stage.prior.sigmas, cfg.sjc.t_min, cfg.sjc.t_max, stage.generator)
    pose = zero123_pose(stage.input_c2w, c2w)
    denoised = stage.prior.denoise(draw.z, draw.sigma, pose, cfg.prior.guidance_scale).to(y.dtype)
    if not torch.isfinite(denoised).all():
        raise FloatingPointError("score")
    grad = sjc.clip_gradient(sjc.sjc_gradient(y, draw, denoised, cfg.sjc.variance_reduction), cfg.sjc.grad_clip)
    stats = {"sigma": draw.sigma.mean().item(), "score_norm": (grad.norm() / math.sqrt(grad.numel())).item()}
    return cfg.sjc.weight * sjc.chain_loss(y, grad), stats, render


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
