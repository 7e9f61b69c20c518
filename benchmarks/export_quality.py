"""How good are the exported files? Colours (vertex vs texture) and surfaces (smoothing).

    python benchmarks/export_quality.py RUN_DIR [RUN_DIR ...] [--truth MESH ...] [--faces 5000,20000]

For each run directory (any `sjc3d fit` output: RGB or latent field):

Colour table
    The mesh is exported (Taubin smoothing as the library default, `--smooth`) at each face
    budget (`--faces`, 0 = no decimation; `--compare-fit`: decimated with and without
    `export.fit_decimated`, the library default otherwise) with vertex
    colours and with a baked texture (`--texture-size`), then rendered (sjc3d.mesh_raster,
    unlit, 4× supersampled and box-filtered, textures sampled bilinearly) from 8 views around
    the object: azimuths 0°, 45°, …, 315° at elevations alternating 0° and 30°, at the run's
    radius and field of view. Each render is scored by PSNR on the whole image (white
    background) against
      field   the field's own volume render of the same view (decoded by the VAE for a latent
              field), i.e. how faithfully the file keeps what was fitted;
      truth   the ground-truth mesh rendered as the oracle prior renders it (`--truth`, for
              oracle runs), i.e. how close the file is to the real object.
    Figures are means over the 8 views; "(inside)" scores only the pixels that both images
    cover fully (coverage/opacity > 0.999), i.e. the colours without the silhouettes.

Surface table (with `--truth`)
    Geometry alone under smoothing variants — none, Taubin λ|μ passes on the mesh, a Gaussian
    filter on the density grid (σ in voxels, volume-preserving level) — scored against the
    truth with sjc3d.metrics.evaluate_meshes: volume IoU (64³), Chamfer, F-score@0.02 and
    normal consistency.

Run it under the shared CPU lock; it prints tables and a JSON line per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sjc3d.cameras import spherical_to_c2w
from sjc3d.config import ExportConfig
from sjc3d.export import ColorViews, export_field, field_geometry, render_colored_mesh
from sjc3d.metrics import evaluate_meshes, psnr
from sjc3d.rundir import load_run

SUPERSAMPLE = 4
ELEVATIONS = (0.0, 30.0)
SMOOTHING = [  # (name, Taubin passes, density σ in voxels)
    ("none", 0, 0.0),
    ("taubin 10", 10, 0.0),
    ("taubin 30", 30, 0.0),
    ("taubin 60", 60, 0.0),
    ("density σ 0.75", 0, 0.75),
    ("density σ 1.0", 0, 1.0),
    ("density σ 1.5", 0, 1.5),
    ("σ 0.75 + taubin 30", 30, 0.75),
]


def view_cameras(n: int, radius: float) -> torch.Tensor:
    """[n, 4, 4]: azimuths evenly around the object, elevations alternating 0° and 30°."""
    azimuths = torch.arange(n, dtype=torch.float32) * 360.0 / n
    elevations = torch.tensor([ELEVATIONS[k % 2] for k in range(n)])
    return spherical_to_c2w(elevations, azimuths, torch.full((n,), float(radius)))


def render_mesh_views(mesh, c2w: torch.Tensor, fov_deg: float, size: int) -> list[torch.Tensor]:
    """Unlit RGBA renders [size, size, 4] of an exported mesh (alpha: coverage), supersampled
    and box-filtered."""
    out = []
    for cam in c2w:
        rgb, mask = render_colored_mesh(mesh, cam, fov_deg, size * SUPERSAMPLE)
        rgba = torch.cat([rgb, mask[..., None].float()], -1)
        out.append(F.avg_pool2d(rgba.permute(2, 0, 1)[None], SUPERSAMPLE)[0].permute(1, 2, 0))
    return out


@torch.no_grad()
def field_views(run, c2w: torch.Tensor, size: int, decode) -> list[torch.Tensor]:
    """The field's own renders [S, S, 4] (RGB + opacity; latent fields: decoded, S = the decoder's size)."""
    fov = run.config.camera.fov_deg
    out = []
    for cam in c2w:
        rendered = run.renderer.render_views(cam[None], fov, size, run.background)
        if decode is None:
            rgb = rendered.features[0, ..., :3].clamp(0, 1)
        else:
            rgb = decode(rendered.features.permute(0, 3, 1, 2).contiguous())[0].float().clamp(0, 1)
        alpha = F.interpolate(rendered.opacity.permute(0, 3, 1, 2), size=rgb.shape[:2], mode="bilinear")[0, 0]
        out.append(torch.cat([rgb, alpha[..., None]], -1))
    return out


def truth_views(truth_path: Path, up: str, c2w: torch.Tensor, fov_deg: float, size: int) -> list[torch.Tensor]:
    """The ground truth as the oracle prior renders it (shaded albedo, 4× supersampled)."""
    from sjc3d.priors.oracle import SphericalCamera, load_world_mesh, render_truth, shaded_colors

    mesh = load_world_mesh(truth_path, y_up=up == "y")
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    colors = shaded_colors(mesh)
    out = []
    for cam in c2w:
        centre = cam[:3, 3].double()
        radius = float(centre.norm())
        camera = SphericalCamera(float(torch.acos(centre[2] / radius)), float(torch.atan2(centre[1], centre[0])), radius)
        view = render_truth(vertices, faces, colors, camera, fov_deg, size)
        out.append(torch.cat([view.rgb, view.alpha[..., None]], -1))
    return out


def mean_psnr(images: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Mean over views of the whole-image PSNR (RGB; an alpha channel is ignored)."""
    return float(np.mean([psnr(a[..., :3], b[..., :3]) for a, b in zip(images, targets)]))


def mean_inside_psnr(images: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Mean over views of the PSNR over pixels fully covered in both (colour, not silhouette)."""
    values = []
    for a, b in zip(images, targets):
        inside = (a[..., 3] > 0.999) & (b[..., 3] > 0.999)
        if inside.any():
            values.append(psnr(a[inside][:, :3], b[inside][:, :3]))
    return float(np.mean(values)) if values else float("nan")


def colour_rows(run, args, truth_path: Path | None, up: str) -> list[dict]:
    cfg0 = dataclasses.replace(run.config.export, resolution=args.resolution or run.config.export.resolution,
                               smooth_iterations=args.smooth)
    cam = run.config.camera
    c2w = view_cameras(args.views, cam.radius)
    views, decode = None, None
    if run.field.n_channels != 3:
        from sjc3d.priors import build_decoder

        decode = build_decoder(run.config.prior, torch.device("cpu"))
        latent_size = cam.input_resolution or cam.resolution
        views = ColorViews(run.renderer.render_views, decode, cam.fov_deg, cam.radius, run.config.input.elevation,
                           latent_size, run.background)
        targets = field_views(run, c2w, latent_size, decode)
    else:
        targets = field_views(run, c2w, args.size, None)
    size = targets[0].shape[0]  # the decoder's output size for a latent field
    truth = truth_views(truth_path, up, c2w, cam.fov_deg, size) if truth_path is not None else None
    rows = []
    variants = [(faces, fit) for faces in args.faces
                for fit in ([True, False] if faces > 0 and args.compare_fit else [cfg0.fit_decimated])]
    for faces, fit in variants:
        for texture_size in [0, *args.texture_size]:  # 0: vertex colours
            texture = texture_size > 0
            cfg = dataclasses.replace(cfg0, max_faces=faces, texture=texture, texture_size=texture_size or 1024,
                                      fit_decimated=fit)
            start = time.perf_counter()
            result = export_field(run.field, cfg, views)
            seconds = time.perf_counter() - start
            renders = render_mesh_views(result.mesh, c2w, cam.fov_deg, size)
            rows.append({
                "faces": len(result.mesh.faces), "budget": faces,
                "colours": f"tex {texture_size}" if texture else "vertex", "fit_decimated": fit and faces > 0,
                "psnr_field": mean_psnr(renders, targets),
                "psnr_field_inside": mean_inside_psnr(renders, targets),
                "psnr_truth": mean_psnr(renders, truth) if truth is not None else float("nan"),
                "psnr_truth_inside": mean_inside_psnr(renders, truth) if truth is not None else float("nan"),
                "export_s": seconds,
            })
            r = rows[-1]
            print(f"  {r['budget']:>6}{'+fit' if r['fit_decimated'] else '    '} {r['faces']:>7} {r['colours']:<9} {r['psnr_field']:8.2f} {r['psnr_field_inside']:8.2f} "
                  f"{r['psnr_truth']:8.2f} {r['psnr_truth_inside']:8.2f} {seconds:8.1f}", flush=True)
    field_vs_truth = mean_psnr(targets, truth) if truth is not None else float("nan")
    print(f"  (the field's own renders against the truth: {field_vs_truth:.2f} dB)")
    rows.append({"colours": "field itself", "psnr_truth": field_vs_truth})
    return rows


def surface_rows(run, args, truth_mesh) -> list[dict]:
    rows = []
    for name, taubin, sigma in SMOOTHING:
        cfg = dataclasses.replace(run.config.export, resolution=args.resolution or run.config.export.resolution,
                                  smooth_iterations=taubin,
                                  density_sigma=sigma, max_faces=0)
        mesh, _, _, _ = field_geometry(run.field, cfg)
        m = evaluate_meshes(mesh, truth_mesh)
        rows.append({"smoothing": name, "iou": m.iou, "chamfer": m.chamfer, "f_score": m.f_score,
                     "normal_consistency": m.normal_consistency, "faces": len(mesh.faces)})
        print(f"  {name:<20} {m.iou:6.3f} {m.chamfer:8.4f} {m.f_score:7.3f} {m.normal_consistency:7.4f} {len(mesh.faces):7d}",
              flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--truth", nargs="*", type=Path, default=[], help="ground-truth mesh per run (same order)")
    parser.add_argument("--up", nargs="*", default=[], help="up axis of each truth file: y (default) or z")
    parser.add_argument("--faces", default="0,5000,20000", help="face budgets, 0 = no decimation")
    parser.add_argument("--texture-size", default="1024", help="texture sides to try, e.g. 512,1024")
    parser.add_argument("--resolution", type=int, default=None, help="marching-cubes grid (default: the run's)")
    parser.add_argument("--smooth", type=int, default=ExportConfig().smooth_iterations,
                        help="Taubin passes for the colour table (default: the library default)")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="render side for RGB fields")
    parser.add_argument("--no-surface", action="store_true", help="skip the smoothing table")
    parser.add_argument("--no-colour", action="store_true", help="skip the colour table")
    parser.add_argument("--compare-fit", action="store_true",
                        help="decimated budgets with and without fitting the coarse surface to the full one (+fit)")
    args = parser.parse_args()
    args.faces = [int(x) for x in args.faces.split(",")]
    args.texture_size = [int(x) for x in args.texture_size.split(",")]
    torch.set_num_threads(2)
    for k, run_dir in enumerate(args.runs):
        run = load_run(run_dir)
        truth_path = args.truth[k] if k < len(args.truth) else None
        up = args.up[k] if k < len(args.up) else "y"
        grid = args.resolution or run.config.export.resolution
        print(f"\n{run_dir} ({'RGB' if run.field.n_channels == 3 else 'latent'} field, grid {grid}^3)")
        record = {"run": str(run_dir), "truth": str(truth_path) if truth_path else None}
        if not args.no_colour:
            print(f"  {'budget':>10} {'faces':>7} {'colours':<9} {'field':>8} {'(inside)':>8} {'truth':>8} {'(inside)':>8} "
                  f"{'export s':>8}   (8-view mean PSNR, dB)")
            record["colour"] = colour_rows(run, args, truth_path, up)
        if truth_path is not None and not args.no_surface:
            from sjc3d.priors.oracle import load_world_mesh

            print(f"  {'smoothing':<20} {'IoU':>6} {'Chamfer':>8} {'F@0.02':>7} {'normals':>7} {'faces':>7}")
            record["surface"] = surface_rows(run, args, load_world_mesh(truth_path, y_up=up == "y"))
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
