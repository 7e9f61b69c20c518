"""The export pipeline as library functions: field → coloured trimesh (no files, no CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import trimesh
from torch import Tensor

from sjc3d.config import ExportConfig
from sjc3d.export.cleanup import clean_mesh
from sjc3d.export.color import Decoder, RenderViews, color_view_poses, latent_vertex_colors, rgb_vertex_colors
from sjc3d.export.grid import (
    EmptyFieldError,
    ThresholdChoice,
    choose_threshold,
    close_boundary,
    extract_mesh,
    sample_density_grid,
)
from sjc3d.mesh_raster import render_mesh
from sjc3d.export.writers import colored_mesh


@dataclass
class ColorViews:
    """How to colour a latent field: render it from cameras and decode the renders."""

    render_views: RenderViews  # renderer.render_views
    decode: Decoder  # latents [B, 4, h, w] → rgb [B, H, W, 3]
    fov_deg: float
    radius: float
    input_elevation: float
    latent_resolution: int  # side of the latent renders (the decoder upsamples them)
    background: Tensor  # [4] latent background of the renders


@dataclass
class ExportResult:
    mesh: trimesh.Trimesh  # world frame (z-up), RGBA uint8 vertex colours
    threshold: ThresholdChoice
    voxel: float  # grid spacing h in world units
    raw_faces: int  # faces straight out of marching cubes, before cleanup


def field_geometry(
    field: torch.nn.Module, cfg: ExportConfig, device: torch.device | str = "cpu"
) -> tuple[trimesh.Trimesh, ThresholdChoice, float, int]:
    """Density grid → iso level → marching cubes → cleanup; (mesh, level, voxel, raw faces)."""
    bound = float(field.bound)
    volume = sample_density_grid(field.density, cfg.resolution, bound, cfg.chunk, device)
    close_boundary(volume)
    choice = choose_threshold(volume, bound, cfg.threshold)
    vertices, faces = extract_mesh(volume, choice.level, bound)
    del volume
    if len(faces) == 0:
        raise EmptyFieldError(
            f"no surface at density level {choice.level:.4g} (grid {cfg.resolution}^3 is too coarse for the object?); "
            "try a lower --threshold or a higher --resolution"
        )
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    raw_faces = len(mesh.faces)
    mesh = clean_mesh(mesh, cfg.min_component_fraction, cfg.smooth_iterations, cfg.max_faces)
    return mesh, choice, 2.0 * bound / (cfg.resolution - 1), raw_faces


def vertex_colors(
    field: torch.nn.Module,
    mesh: trimesh.Trimesh,
    voxel: float,
    cfg: ExportConfig,
    views: Optional[ColorViews] = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """[V, 3] colours in [0, 1]: queried (RGB field) or projected from decoded views (latent)."""
    normals = np.asarray(mesh.vertex_normals)
    if field.n_channels == 3:
        return rgb_vertex_colors(field, mesh.vertices, normals, voxel, cfg.chunk, device)
    if views is None:
        raise ValueError("a latent field needs ColorViews (a renderer and a VAE decoder) to be coloured")
    c2w = color_view_poses(cfg.color_views, views.input_elevation, views.radius)
    return latent_vertex_colors(
        views.render_views, views.decode, mesh.vertices, mesh.faces, normals, c2w, views.fov_deg,
        views.latent_resolution, views.background, depth_tolerance=2.5 * voxel, device=device,
    )


def export_field(
    field: torch.nn.Module,
    cfg: ExportConfig,
    views: Optional[ColorViews] = None,
    device: torch.device | str = "cpu",
) -> ExportResult:
    """The whole pipeline: a trained field → a cleaned, vertex-coloured world-frame mesh."""
    mesh, choice, voxel, raw_faces = field_geometry(field, cfg, device)
    colors = vertex_colors(field, mesh, voxel, cfg, views, device)
    return ExportResult(colored_mesh(mesh.vertices, mesh.faces, colors), choice, voxel, raw_faces)


def render_colored_mesh(
    mesh: trimesh.Trimesh, c2w: Tensor, fov_deg: float, resolution: int
) -> tuple[Tensor, Tensor]:
    """(rgb [H, W, 3], mask [H, W]) of a vertex-coloured world-frame trimesh on white."""
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    colors = torch.as_tensor(mesh.visual.vertex_colors[:, :3], dtype=torch.float32) / 255.0
    return render_mesh(vertices, faces, colors, c2w.float(), fov_deg, resolution)
