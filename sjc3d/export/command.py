"""`sjc3d export`: a run directory in, a coloured mesh file out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from sjc3d.cameras import input_c2w
from sjc3d.errors import ConfigError
from sjc3d.export.pipeline import ColorViews, ExportResult, export_field, render_colored_mesh
from sjc3d.device import resolve_device
from sjc3d.export.writers import check_mesh_suffix, texture_paths, write_mesh


def read_rgb(path: Path) -> Optional[np.ndarray]:
    """A run's input.png as float RGB [H, W, 3] in [0, 1], or None if unreadable.

    The trainer stores the view already composited on white in RGB, with the mask as alpha
    (rundir.py), so the colour channels are taken as they are — compositing them again would
    darken the object's anti-aliased edge.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError:
        return None


def input_view_psnr(result: ExportResult, image: np.ndarray, elevation: float, radius: float, fov_deg: float) -> float:
    """PSNR (dB) of the coloured mesh rendered from the input camera against the input view."""
    from sjc3d.metrics import psnr

    rendered, _ = render_colored_mesh(result.mesh, input_c2w(elevation, radius)[0], fov_deg, image.shape[0])
    return psnr(rendered.numpy(), image)


def export_command(
    run_dir: Optional[Path],
    mesh: Path,
    resolution: Optional[int] = None,
    threshold: Optional[float] = None,
    max_faces: Optional[int] = None,
    smooth: Optional[int] = None,
    texture: Optional[bool] = None,
    texture_size: Optional[int] = None,
) -> ExportResult:
    """Export the run's field as a coloured .glb/.obj/.ply (flags override config.export).

    Colours are a baked texture or vertex colours (`texture`, default `export.texture`); a PLY
    has no texture, so it gets vertex colours unless --texture is asked for explicitly (an error).
    """
    from rich.console import Console

    from sjc3d.rundir import load_run, load_run_config, resolve_run_dir

    suffix = check_mesh_suffix(mesh)  # fail before any work
    if texture and suffix == ".ply":
        raise ConfigError(f"--texture: {mesh} is a PLY file, which holds no texture; use .glb or .obj, or --no-texture")
    if texture_size is not None and not 16 <= texture_size <= 8192:
        raise ConfigError(f"--texture-size {texture_size}: must be in [16, 8192]")
    if resolution is not None and not 8 <= resolution <= 1024:
        raise ConfigError(f"--resolution {resolution}: must be in [8, 1024]")
    if max_faces is not None and max_faces < 0:
        raise ConfigError(f"--max-faces {max_faces}: must be >= 0")
    if smooth is not None and smooth < 0:
        raise ConfigError(f"--smooth {smooth}: must be >= 0")
    if threshold is not None and not threshold > 0:
        raise ConfigError(f"--threshold {threshold}: must be a positive density")

    paths = resolve_run_dir(run_dir)
    device = resolve_device(load_run_config(paths).train.device, fallback_to_cpu=True)
    run = load_run(paths.root, device)
    flags = {"resolution": resolution, "threshold": threshold, "max_faces": max_faces, "smooth_iterations": smooth,
             "texture": texture, "texture_size": texture_size}
    cfg = dataclasses.replace(run.config.export, **{k: v for k, v in flags.items() if v is not None})
    if suffix == ".ply":
        cfg = dataclasses.replace(cfg, texture=False)

    views = None
    if run.field.n_channels != 3:
        from sjc3d.priors import build_decoder

        cam = run.config.camera
        views = ColorViews(
            render_views=run.renderer.render_views,
            decode=build_decoder(run.config.prior, device),
            fov_deg=cam.fov_deg,
            radius=cam.radius,
            input_elevation=run.config.input.elevation,
            latent_resolution=cam.input_resolution or cam.resolution,
            background=run.background,
        )
    result = export_field(run.field, cfg, views, device)
    write_mesh(result.mesh, mesh)

    console = Console(highlight=False, soft_wrap=True)
    choice = result.threshold
    colours = f"a {cfg.texture_size}² texture" if cfg.texture else "vertex colours"
    console.print(
        f"wrote {mesh}: {len(result.mesh.faces)} faces ({result.raw_faces} before cleanup), {colours}, "
        f"watertight={result.watertight}"
    )
    if cfg.texture and suffix == ".obj":
        console.print(f"  with {', '.join(str(p) for p in texture_paths(mesh))}")
    console.print(
        f"density level {choice.level:.4g} ({choice.rule}), occupancy {100 * choice.occupancy:.2f}% of the box, "
        f"silhouette IoU {choice.silhouette_iou:.3f}, grid {cfg.resolution}^3"
    )
    image = read_rgb(run.paths.input_image) if run.paths.input_image.is_file() else None
    if image is not None:
        value = input_view_psnr(result, image, run.config.input.elevation, run.config.camera.radius, run.config.camera.fov_deg)
        console.print(f"input-view PSNR of the coloured mesh: {value:.2f} dB")
    return result
