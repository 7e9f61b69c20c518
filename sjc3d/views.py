"""`sjc3d views`: novel views of the input sampled from the Zero-1-to-3 prior alone.

No 3D here: each target camera is a DDIM sample of the view-conditioned diffusion model, the
quickest way to see what the prior believes before spending a fit on it.  Poses are built
with sjc3d.cameras (input camera at (elevation_in, azimuth 0, R); targets at
(elevation_in + Δelevation, Δazimuth, R + Δradius)) and embedded by `zero123_pose`, so the
convention lives in one place; a positive --elevation-delta moves the camera up.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from sjc3d.config import DEFAULT_MODEL, CameraConfig, InputConfig
from sjc3d.device import resolve_device
from sjc3d.errors import ConfigError
from sjc3d.progress import ProgressBar


def parse_azimuths(text: str) -> list[float]:
    """"30,90,180" → [30.0, 90.0, 180.0]; anything else is a ConfigError."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--azimuth {text!r}: expected comma-separated numbers in degrees, e.g. 30,90,180") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--azimuth {text!r}: expected comma-separated numbers in degrees, e.g. 30,90,180")
    return values


def view_name(azimuth: float, elevation_delta: float, radius_delta: float) -> str:
    """File stem of a target view, e.g. az030_el+00_r+0.00 (azimuth, Δelevation, Δradius)."""
    az = f"{int(azimuth):03d}" if float(azimuth).is_integer() else f"{azimuth:05.1f}"
    el = f"{elevation_delta:+03.0f}" if float(elevation_delta).is_integer() else f"{elevation_delta:+.1f}"
    return f"az{az}_el{el}_r{radius_delta:+.2f}"


def target_poses(azimuths: list[float], input_elevation: float, elevation_delta: float, radius: float,
                 radius_delta: float) -> Tensor:
    """Zero-1-to-3 pose embeddings [N, 4] of the target views relative to the input view."""
    from sjc3d.cameras import input_c2w, spherical_to_c2w, zero123_pose

    n = len(azimuths)
    target = spherical_to_c2w(
        torch.full((n,), input_elevation + elevation_delta),
        torch.tensor(azimuths, dtype=torch.float32),
        torch.full((n,), radius + radius_delta),
    )
    return zero123_pose(input_c2w(input_elevation, radius), target)


@torch.no_grad()
def sample_views(prior, poses: Tensor, steps: int, guidance: float, generator: torch.Generator, progress=None,
                 eta: float = 0.0, guidance_rescale: float = 0.0, guidance_min_t: int = 0) -> Tensor:
    """DDIM samples of the conditioned prior for each pose: images [N, H, W, 3] in [0, 1].

    All views are denoised together: one UNet call of batch 2N per step (N when guidance is 1).
    The noise is drawn on the CPU from `generator`, so a seed gives the same views on any device.
    eta: DDIM's η, the share of the posterior's noise put back at each step: 0 is deterministic
        DDIM (Zero-1-to-3's sampler), 1 the DDPM ancestral step.
    guidance_rescale: φ of `rescale_guidance` (priors/zero123.py); 0 is plain guidance.
    guidance_min_t: guidance only at the steps with t ≥ this (`limit_guidance`); 0 guides every step.
    """
    from diffusers import DDIMScheduler

    # predict_noise returns ε whatever the UNet predicts, so the scheduler must read ε.  The last step
    # lands where the model's scheduler config says, as the original's sampler: for Zero-1-to-3 on
    # ᾱ_0 = 0.99915 (`set_alpha_to_one=False`).  Landing on the denoised latent itself (ᾱ = 1) was
    # measured 0.10 dB lower on the shipped toy and level on two other models (README, "Guidance interval").
    scheduler = DDIMScheduler.from_config(prior.scheduler_config, prediction_type="epsilon")
    scheduler.set_timesteps(steps)
    n = poses.shape[0]
    h, w = prior.concat_latent.shape[-2:]
    latents = torch.randn((n, prior.n_channels, h, w), generator=generator) * scheduler.init_noise_sigma
    latents = latents.to(prior.device)
    for t in scheduler.timesteps:
        eps = prior.predict_noise(latents, t.reshape(1).expand(n), poses, guidance, guidance_rescale=guidance_rescale,
                                  guidance_min_t=guidance_min_t)
        latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
        if progress is not None:
            progress()
    return prior.decode(latents)


def grid(images: list[Tensor]) -> Tensor:
    """Images [H, W, 3] side by side with a thin grey gap: [H, n·W + (n−1)·gap, 3]."""
    height = images[0].shape[0]
    gap = torch.full((height, max(2, height // 64), 3), 0.5)
    row: list[Tensor] = []
    for i, image in enumerate(images):
        row += ([gap] if i else []) + [image]
    return torch.cat(row, dim=1)


def default_out(image: Path) -> Path:
    """outputs/views/<image stem>/<time>: a fresh folder per run, like `sjc3d fit`'s run directories."""
    return Path("outputs") / "views" / Path(image).stem / datetime.now().strftime("%Y%m%d-%H%M%S")


def views_command(image: Path, azimuth: str, elevation_delta: float, radius_delta: float, input_elevation: float,
                  model: Optional[str], steps: int, guidance: float, seed: int, out: Optional[Path],
                  device: Optional[str], object_fraction: float = InputConfig.object_fraction,
                  guidance_min_t: int = 0) -> list[Path]:
    """Sample the views, write one PNG per view plus grid.png (input + views); return the paths.

    out: the folder to write (default `default_out(image)`).
    object_fraction: how large the input is framed (`input.object_fraction`): as the model's
        training views were framed (200/256 for Zero-1-to-3; 0.56 for the shipped toy prior).
    guidance_min_t: guidance only at the DDIM steps with t ≥ this (`sample_views`).
    """
    from sjc3d.image import load_input_view, resize_images, save_png
    from sjc3d.priors.zero123 import load_zero123

    azimuths = parse_azimuths(azimuth)
    if steps < 1:
        raise ConfigError(f"--steps {steps}: must be at least 1")
    if not math.isfinite(guidance):
        raise ConfigError(f"--guidance {guidance}: must be a finite number")
    if not 0 <= guidance_min_t <= 1000:
        raise ConfigError(f"--guidance-min-t {guidance_min_t}: must be in [0, 1000] (0 guides every step)")
    radius = CameraConfig().radius
    if radius + radius_delta <= 0:
        raise ConfigError(f"--radius-delta {radius_delta}: the camera would be at radius {radius + radius_delta:g} <= 0")
    out = Path(out) if out is not None else default_out(image)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    torch_device = resolve_device(device or "auto", setting="--device")

    if not 0 < object_fraction <= 1:
        raise ConfigError(f"--object-fraction {object_fraction}: must be in (0, 1]")
    view = load_input_view(image, InputConfig(elevation=input_elevation, object_fraction=object_fraction))
    prior = load_zero123(model or DEFAULT_MODEL, device=torch_device)
    prior.condition(view.rgb, input_elevation, radius)
    poses = target_poses(azimuths, input_elevation, elevation_delta, radius, radius_delta)

    bar = ProgressBar(steps, f"views ({len(azimuths)}×{steps} DDIM steps)")
    try:
        images = sample_views(prior, poses, steps, guidance, torch.Generator().manual_seed(seed), progress=bar.advance,
                              guidance_min_t=guidance_min_t).cpu()
    finally:
        bar.close()

    written = []
    for az, rgb in zip(azimuths, images):
        path = out / f"{view_name(az, elevation_delta, radius_delta)}.png"
        save_png(path, rgb)
        written.append(path)
    size = images.shape[1]
    input_rgb = resize_images(view.rgb[None], size)[0]
    save_png(out / "grid.png", grid([input_rgb, *images]))
    written.append(out / "grid.png")
    print(f"wrote {len(azimuths)} views and grid.png to {out}")
    return written
