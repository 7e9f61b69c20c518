"""`sjc3d render`: turntable videos and grids of views of a trained run.

Latent runs are rendered at resolution/f and decoded by the prior's VAE (which upsamples f×, f = 8
for Zero-1-to-3, 4 for the shipped toy prior), so the frames have the requested side whatever
the field renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from sjc3d.atomic import atomic_path
from sjc3d.cameras import spherical_to_c2w
from sjc3d.errors import ConfigError, InputError
from sjc3d.image import save_png

VIDEO_SUFFIXES = (".mp4", ".gif")
GRID_VIEWS = 8  # views in a grid PNG (two rows of four)
FPS = 30


def turntable_poses(n: int, elevation: float, radius: float) -> Tensor:
    """[n, 4, 4] cameras at one elevation, azimuth 0°, 360/n°, ... (the input view first)."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return spherical_to_c2w(torch.full((n,), float(elevation)), azimuth, torch.full((n,), float(radius)))


@torch.no_grad()
def render_frames(
    render_views: Callable,
    c2w: Tensor,
    fov_deg: float,
    resolution: int,
    background: Tensor,
    decode: Optional[Callable[[Tensor], Tensor]] = None,
    batch: int = 8,
    latent_factor: int = 8,
) -> np.ndarray:
    """Render (and decode) views: uint8 frames [B, H, W, 3].

    Args:
        render_views: renderer.render_views(c2w, fov_deg, resolution, background) → RenderOutput
            with features [B, h, w, C]; RGB when `decode` is None.
        decode: latents [B, c, h, w] → rgb [B, H, W, 3] for latent fields; the field is then
            rendered at resolution // latent_factor (the VAE decoder's upsampling).
    """
    side = resolution if decode is None else max(resolution // latent_factor, 4)
    frames = []
    for start in range(0, len(c2w), batch):
        out = render_views(c2w[start : start + batch], fov_deg, side, background)
        images = out.features
        if decode is not None:
            images = decode(images.permute(0, 3, 1, 2).contiguous())
        frames.append((images[..., :3].float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    return np.concatenate(frames, 0)


def make_grid(images: np.ndarray, n_cols: int) -> np.ndarray:
    """Tile images [B, H, W, C] into [rows·H, n_cols·W, C], row-major; empty cells are white."""
    b, h, w, c = images.shape
    n_rows = -(-b // n_cols)
    grid = np.full((n_rows * h, n_cols * w, c), 255, dtype=images.dtype)
    for k in range(b):
        r, col = divmod(k, n_cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = images[k]
    return grid


def write_video(frames: np.ndarray, path: Path, fps: int = FPS) -> Path:
    """Write frames [B, H, W, 3] uint8 as .mp4 (ffmpeg) or .gif; atomic. Returns the written path.

    When the mp4 writer is unavailable (no imageio-ffmpeg / ffmpeg binary), a GIF is written
    next to it instead (same name, .gif) and its path is returned, so the caller can say so.
    """
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix.lower() == ".mp4":
        try:
            with atomic_path(path) as tmp:
                # libx264 needs even sides; macro_block_size=1 keeps odd sizes as they are.
                with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
                    for frame in frames:
                        writer.append_data(frame)
            return path
        except (ImportError, RuntimeError, OSError, ValueError):
            path = path.with_suffix(".gif")
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    return path


def render_command(
    run_dir: Optional[Path],
    video: Optional[Path] = None,
    grid: Optional[Path] = None,
    frames: int = 120,
    elevation: float = 15.0,
    resolution: int = 128,
) -> list[Path]:
    """Render a run's turntable video and/or grid PNG; returns the written paths."""
    from rich.console import Console

    from sjc3d.device import resolve_device
    from sjc3d.rundir import load_run, load_run_config, resolve_run_dir

    if video is None and grid is None:
        raise ConfigError("nothing to render: pass --video OUT.mp4 and/or --grid OUT.png")
    if video is not None and Path(video).suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"--video {video}: the video must be .mp4 or .gif")
    if grid is not None and Path(grid).suffix.lower() != ".png":
        raise InputError(f"--grid {grid}: the grid must be a .png")
    if frames < 1:
        raise ConfigError(f"--frames {frames}: must be at least 1")
    if not 8 <= resolution <= 2048:
        raise ConfigError(f"--resolution {resolution}: must be in [8, 2048]")

    paths = resolve_run_dir(run_dir)
    device = resolve_device(load_run_config(paths).train.device, fallback_to_cpu=True)
    run = load_run(paths.root, device)
    decode = None
    if run.field.n_channels != 3:
        from sjc3d.priors import build_decoder

        decode = build_decoder(run.config.prior, device)
    fov, radius = run.config.camera.fov_deg, run.config.camera.radius

    def render(c2w: Tensor) -> np.ndarray:
        return render_frames(run.renderer.render_views, c2w.to(device), fov, resolution, run.background, decode,
                             latent_factor=getattr(decode, "factor", 1))

    console = Console(highlight=False, soft_wrap=True)
    written = []
    if video is not None:
        out = write_video(render(turntable_poses(frames, elevation, radius)), Path(video))
        if out != Path(video):
            console.print("mp4 writer unavailable (imageio-ffmpeg missing?): wrote a GIF instead")
        console.print(f"wrote {out} ({frames} frames, {resolution}px)")
        written.append(out)
    if grid is not None:
        n = min(GRID_VIEWS, frames)
        out = save_png(Path(grid), make_grid(render(turntable_poses(n, elevation, radius)), n_cols=min(4, n)))
        console.print(f"wrote {out} ({n} views)")
        written.append(out)
    return written
