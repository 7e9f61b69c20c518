"""One optimisation step of the fit, and the stage it runs on.

    random cameras ──► render y ──► PAAS: z = y + σn, D = prior(z, σ, pose) ──► g = (D − y)/σ
         │                                                                          │ chain: y.backward(−g)
         └─► near cameras ──► render ──► near-view consistency ─┐                  │
    input camera ──► render ──► reference-view loss (colour, mask) + regularisers ──┴──► optimizer

`build_stage` builds everything a run needs once (prior, field, renderer, optimiser, targets);
`train_step` runs one step on it.  The mathematics lives in `sjc.py` and `losses.py`; the loop,
checkpoints and the run directory live in `trainer.py`.

Host syncs.  On a GPU, reading a value back (`.item()`, `if tensor:`, a size that depends on
the data) makes the CPU wait for every queued kernel.  A step therefore keeps its statistics as
0-d tensors on the device, and the NaN/Inf check is deferred: the step records the first step
whose score or loss was not finite in `Stage.nonfinite` (on the device) and drops that step's
gradients; `read_stats` — one transfer, on logging steps only — raises `NonFiniteError` then.
Random numbers are drawn on the CPU (one generator, saved in checkpoints) and reach the device by
non-blocking copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from sjc3d import losses, sjc
from sjc3d.cameras import input_c2w, near_cameras, sample_poses, spherical_to_c2w, zero123_pose
from sjc3d.config import Config, is_oracle
from sjc3d.device import resolve_device
from sjc3d.errors import ConfigError, InputError, NonFiniteError
from sjc3d.image import InputView, load_input_view, resize_images
from sjc3d.priors.base import Prior
from sjc3d.render.base import RenderOutput

Stats = dict[str, Tensor]  # name → detached 0-d tensor on the device


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
    reference: Tensor  # [1, s, s, C'] target at the input camera: RGB, or a latent (loss.ref_space)
    reference_mask: Tensor  # [1, r, r, 1] the input's alpha at the input-view render's size
    generator: torch.Generator  # draws cameras and noise (CPU); saved in checkpoints for exact resume
    nonfinite: Optional[Tensor] = None  # [2] long on the device: first step with a non-finite score, loss (0 = none)

    def __post_init__(self) -> None:
        if self.nonfinite is None:
            self.nonfinite = torch.zeros(2, dtype=torch.long, device=self.device)


@dataclass
class Views:
    """The random views of one step: their cameras [B, 4, 4] and render ([B, r, r, ·])."""

    c2w: Tensor
    render: RenderOutput


# --------------------------------------------------------------------------- set-up


def oracle_input_view(config: Config, prior) -> InputView:
    """Without an image, the oracle renders its own input view of the truth, at the input camera."""
    if not is_oracle(config.prior.source):
        raise InputError("an input image is required (only --prior oracle:MESH renders its own input view)")
    prior.condition(None, config.input.elevation, config.camera.radius)  # the oracle needs the camera, no image
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


def decode_latents(prior, latents: Tensor) -> Tensor:
    """Latent render [B, h, w, c] → image [B, f·h, f·w, 3] in [0, 1]-scale, differentiable.

    Not clamped, as the reference's `decode_first_stage`: a pixel the decoder pushes past white
    still gets its gradient.
    """
    from sjc3d.priors import vae as vae_io

    vae = getattr(prior, "vae", None)
    if vae is None:
        raise ConfigError("loss.ref_space=rgb with a latent field needs a prior with a VAE (or set loss.ref_space=latent)")
    return vae_io.decode_scaled(vae, latents.permute(0, 3, 1, 2), clamp=False)


def resolve_render_size(config: Config, prior) -> Config:
    """`camera.resolution: 0` (auto) made concrete: the prior's latent side in latent mode, else 32.

    The run's config.yaml records the concrete value, so export and resume see what was trained.
    """
    if config.camera.resolution:
        return config
    side = encode_size(config, prior) // prior.latent_factor if config.field.output == "latent" else 32
    return replace(config, camera=replace(config.camera, resolution=side))


def check_latent_resolution(config: Config, prior) -> None:
    """Latent renders must have the size of the model's latents: its image size / its VAE factor.

    (256² views → 32² for Zero-1-to-3's factor-8 VAE; 64² → 16² for a factor-4 toy model.)
    """
    expected = encode_size(config, prior) // prior.latent_factor
    if config.field.output == "latent" and config.camera.resolution != expected:
        raise ConfigError(f"camera.resolution={config.camera.resolution}: latent renders for this prior must be "
                          f"{expected}x{expected} (set camera.resolution={expected}, or field.output=rgb)")


def input_render_size(config: Config) -> int:
    return config.camera.input_resolution or config.camera.resolution


def reference_targets(config: Config, prior, view: InputView, device: torch.device) -> tuple[Tensor, Tensor]:
    """What the render at the input camera should match: (colour target, alpha [1, r, r, 1]).

    rgb field: the input view at the render's size r.  latent field: the input view at the
    model's image size (the decoded render is compared with it, as the reference does), or with
    loss.ref_space=latent its encoding, resized to r.
    """
    r = input_render_size(config)
    rgb = view.rgb[None].to(device)
    if config.field.output == "rgb":
        target = resize_images(rgb, r)
    elif config.loss.ref_space == "rgb":
        target = resize_images(rgb, r * prior.latent_factor)
    else:
        with torch.no_grad():
            latent = prior.encode(resize_images(rgb, encode_size(config, prior))).float()  # [1, c, h, w]
        target = resize_images(latent.permute(0, 2, 3, 1), r)
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


def parameter_groups(config: Config, field: torch.nn.Module) -> list[dict]:
    """Two optimiser groups: the hash-grid tables (`train.lr_grid`) and the MLP heads (`train.lr`).

    A hash-grid entry is touched only by the points that fall next to it, an MLP weight by every
    point: they want different step sizes (instant-NGP and threestudio give the grid the larger one).
    """
    grid = list(field.encoding.parameters())
    grid_ids = {id(p) for p in grid}
    heads = [p for p in field.parameters() if id(p) not in grid_ids]
    lr_grid = config.train.lr_grid or config.train.lr
    return [{"params": grid, "lr": lr_grid, "name": "grid"}, {"params": heads, "lr": config.train.lr, "name": "mlp"}]


def build_optimizer(config: Config, field: torch.nn.Module) -> torch.optim.Optimizer:
    kind = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam}[config.train.optimizer]
    return kind(parameter_groups(config, field), lr=config.train.lr)


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
    config = resolve_render_size(config, prior)
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


# --------------------------------------------------------------------------- the terms of one step


def score_term(stage: Stage) -> tuple[Tensor, Stats, Views, Tensor]:
    """Render random views, score them with the prior; (chained surrogate loss, stats, views, score finite?)."""
    cfg = stage.config
    cam = cfg.camera
    poses = sample_poses(cfg.sjc.n_views, cam.elevation_range, cam.azimuth_range, cam.radius_range,
                         stage.generator, stage.device, cam.sampling)
    c2w = poses.c2w()
    views = Views(c2w, stage.renderer.render_views(c2w, cam.fov_deg, cam.resolution, stage.background))
    finite = torch.ones((), dtype=torch.bool, device=stage.device)
    if cfg.sjc.weight == 0:  # the score-off baseline: the views are rendered for the regularisers only
        return torch.zeros((), device=stage.device), {}, views, finite
    y = to_model_space(stage.prior, views.render.features, cfg.field.output)
    draw = sjc.draw_noise(y, stage.prior.sigmas, cfg.sjc.t_min, cfg.sjc.t_max, stage.generator)
    pose = zero123_pose(stage.input_c2w, c2w)
    denoised = stage.prior.denoise(draw.z, draw.sigma, pose, cfg.prior.guidance_scale,
                                   guidance_min_t=cfg.prior.guidance_min_t).to(y.dtype)
    grad = sjc.clip_gradient(sjc.sjc_gradient(y, draw, denoised, cfg.sjc.variance_reduction), cfg.sjc.grad_clip)
    stats = {"sigma": draw.sigma.mean(), "score_norm": grad.norm() / math.sqrt(grad.numel())}
    return cfg.sjc.weight * sjc.chain_loss(y, grad), stats, views, torch.isfinite(denoised).all()


def near_view_term(stage: Stage, views: Views) -> tuple[Tensor, Stats]:
    """Near-view consistency around each random view (the reference run's form).

    Each camera is moved by `loss.near_view_offset` in a random direction; the render there must
    match the random view's features (colour or latent) and depth (over the far background) in
    L1, both renders trainable.
    """
    cfg, w = stage.config, stage.config.loss
    near = stage.renderer.render_views(near_cameras(views.c2w, w.near_view_offset, stage.generator),
                                       cfg.camera.fov_deg, cfg.camera.resolution, stage.background)
    depth = losses.depth_over_background(views.render.depth, views.render.opacity, w.background_depth)
    depth_near = losses.depth_over_background(near.depth, near.opacity, w.background_depth)
    loss = losses.near_view_l1(near.features, views.render.features, depth_near, depth)
    return w.near_view * loss, {"near_view": loss.detach()}


def input_near_view_term(stage: Stage, reference: RenderOutput) -> tuple[Tensor, Stats]:
    """sjc3d's earlier near view: the input camera jittered by up to `near_view_degrees`, MSE to
    the input-view render (held fixed)."""
    cfg, w = stage.config, stage.config.loss
    jitter = (torch.rand(2, generator=stage.generator) * 2 - 1) * w.near_view_degrees
    near_c2w = spherical_to_c2w(cfg.input.elevation + jitter[:1], jitter[1:], torch.tensor([cfg.camera.radius]))
    size = reference.features.shape[1]
    near = stage.renderer.render_views(near_c2w.to(stage.device, non_blocking=True), cfg.camera.fov_deg, size,
                                       stage.background)
    loss = losses.near_view_mse(near.features, reference.features)
    return w.near_view * loss, {"near_view": loss.detach()}


def reference_term(stage: Stage) -> tuple[Tensor, Stats]:
    """The input view: colour (in RGB on the [−1, 1] scale, or latent) and mask losses; with the
    reference regularisers its depth smoothness (from step 1), else the input-view near view."""
    cfg, w = stage.config, stage.config.loss
    r = stage.reference_mask.shape[1]
    ref = stage.renderer.render_views(stage.input_c2w, cfg.camera.fov_deg, r, stage.background)
    if cfg.field.output == "rgb":
        color = losses.rgb_loss(ref.features, stage.reference)
    elif w.ref_space == "rgb":
        color = losses.rgb_loss(decode_latents(stage.prior, ref.features), stage.reference)
    else:
        color = losses.latent_loss(ref.features, stage.reference)
    mask = losses.reference_mask_loss(ref.opacity, stage.reference_mask)
    total = w.ref_rgb * color + w.ref_mask * mask
    stats = {"ref_color": color.detach(), "ref_mask": mask.detach()}
    if cfg.field.output == "rgb" or w.ref_space == "rgb":  # PSNR of [0, 1] images; the loss is 4·MSE
        stats["ref_psnr"] = -10 * torch.log10((color.detach() / 4).clamp_min(1e-10))
    if w.depth_smooth > 0 and w.depth_smooth_mode == "reference" and w.depth_smooth_input > 0:
        depth = losses.depth_over_background(ref.depth, ref.opacity, w.background_depth)
        smooth = losses.depth_smoothness_l1(depth)
        total = total + w.depth_smooth_input * w.depth_smooth * smooth
        stats["input_depth_smooth"] = smooth.detach()
    if w.near_view > 0 and w.near_view_mode == "input":
        near, near_stats = input_near_view_term(stage, ref)
        total = total + near
        stats.update(near_stats)
    return total, stats


def regulariser_term(stage: Stage, views: Views, step: int) -> tuple[Tensor, Stats]:
    """On the random views: near-view consistency, depth smoothness, emptiness, opacity entropy."""
    w, total_steps = stage.config.loss, stage.config.train.steps
    render = views.render
    total = torch.zeros((), device=stage.device)
    stats: Stats = {}
    if w.near_view > 0 and w.near_view_mode == "reference":
        near, stats = near_view_term(stage, views)
        total = total + near
    if w.depth_smooth > 0 and losses.ramp(step, total_steps, w.depth_smooth_start):
        if w.depth_smooth_mode == "reference":
            smooth = losses.depth_smoothness_l1(losses.depth_over_background(render.depth, render.opacity,
                                                                             w.background_depth))
        else:
            smooth = losses.depth_smoothness_squared(render.depth, render.opacity)
        total = total + w.depth_smooth * smooth
        stats["depth_smooth"] = smooth.detach()
    if w.emptiness > 0:
        if render.weights is None:
            raise ConfigError("loss.emptiness needs the renderer's per-sample weights")
        factor = losses.emptiness_factor(step, total_steps, w.emptiness_multiplier, w.emptiness_start,
                                         w.emptiness_schedule)
        empty = losses.emptiness_loss(render.weights, render.opacity.numel(), w.emptiness_scale, w.emptiness_form)
        total = total + w.emptiness * factor * empty
        stats["emptiness"] = empty.detach()
    if w.opacity > 0:
        entropy = losses.opacity_entropy_loss(render.opacity)
        total = total + w.opacity * entropy
        stats["opacity_entropy"] = entropy.detach()
    return total, stats


# --------------------------------------------------------------------------- one step


def record_nonfinite(stage: Stage, step: int, score_finite: Tensor, loss: Tensor) -> Tensor:
    """Note `step` in `stage.nonfinite` where score / loss is not finite (first occurrence only),
    on the device; returns the 0-d bool 'this step is usable'."""
    finite = torch.stack([score_finite, torch.isfinite(loss)])
    first = stage.nonfinite
    stage.nonfinite = torch.where((first == 0) & ~finite, torch.full_like(first, step), first)
    return finite.all()


def drop_gradients_unless(ok: Tensor, parameters) -> None:
    """Zero every gradient when `ok` (0-d bool) is False — without reading `ok` on the host.

    A NaN gradient would turn the field into NaN at once; a zero one leaves it as it was (Adam's
    momentum still moves it a little) until the loop notices the step on its next logging step.
    """
    for p in parameters:
        if p.grad is not None:
            p.grad.masked_fill_(~ok, 0.0)


def train_step(stage: Stage, step: int) -> Stats:
    """One optimisation step (1-based `step`); statistics stay on the device (see `read_stats`)."""
    stage.field.train()
    stage.renderer.train()
    stage.optimizer.zero_grad(set_to_none=True)
    chained, stats, views, score_finite = score_term(stage)
    regulariser, reg_stats = regulariser_term(stage, views, step)
    stats.update(reg_stats)
    loss = chained + regulariser
    if step % stage.config.loss.ref_every == 0:
        ref_loss, ref_stats = reference_term(stage)
        loss = loss + ref_loss
        stats.update(ref_stats)
    loss.backward()
    ok = record_nonfinite(stage, step, score_finite, loss.detach())
    drop_gradients_unless(ok, stage.field.parameters())
    stage.optimizer.step()
    stage.renderer.update(step)
    stats["loss"] = loss.detach()
    return stats


def read_stats(stage: Stage, stats: Stats) -> dict[str, float]:
    """The statistics as floats — one host sync — after the deferred finiteness check.

    Raises NonFiniteError naming the first step whose score or loss was NaN/Inf.
    """
    names = list(stats)
    values = torch.cat([torch.stack([stats[k].float() for k in names]) if names else torch.zeros(0, device=stage.device),
                        stage.nonfinite.float()]).tolist()
    bad_score, bad_loss = int(values[-2]), int(values[-1])
    if bad_score and (not bad_loss or bad_score <= bad_loss):
        raise NonFiniteError(f"non-finite score at step {bad_score}")
    if bad_loss:
        raise NonFiniteError(f"non-finite loss at step {bad_loss}")
    return dict(zip(names, values[:-2]))
