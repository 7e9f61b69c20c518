"""The export pipeline as library functions: field → coloured trimesh (no files, no CLI).

    density grid (optionally Gaussian-filtered) → iso level → marching cubes → cleanup
    (floaters, Taubin smoothing, decimation) → colours: per vertex, or a UV atlas and a baked
    texture (`cfg.texture`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import trimesh
from torch import Tensor

from sjc3d.config import ExportConfig
from sjc3d.export.cleanup import clean_mesh
from sjc3d.export.atlas import unwrap
from sjc3d.export.color import Decoder, RenderViews, color_view_poses, latent_colors, rgb_vertex_colors
from sjc3d.export.grid import (
    EmptyFieldError,
    ThresholdChoice,
    choose_threshold,
    close_boundary,
    extract_mesh,
    filter_density,
    sample_density_grid,
)
from sjc3d.export.texture import ColorFn, bake_texture, render_textured_mesh, seam_vertex_normals, texture_array, textured_mesh
from sjc3d.export.writers import colored_mesh, is_textured
from sjc3d.mesh_raster import render_mesh


@dataclass
class ColorViews:
    """How to colour a latent field: render it from cameras and decode the renders."""

    render_views: RenderViews  # renderer.render_views
    decode: Decoder  # latents [B, C, h, w] → rgb [B, H, W, 3] (any VAE factor)
    fov_deg: float
    radius: float
    input_elevation: float
    latent_resolution: int  # side of the latent renders (the decoder upsamples them)
    background: Tensor  # [4] latent background of the renders


@dataclass
class ExportResult:
    mesh: trimesh.Trimesh  # world frame (z-up): RGBA uint8 vertex colours, or uv + a texture
    threshold: ThresholdChoice
    voxel: float  # grid spacing h in world units
    raw_faces: int  # faces straight out of marching cubes, before cleanup
    watertight: bool = False  # of the geometry (a textured mesh is split along its uv seams)


def field_geometry(
    field: torch.nn.Module, cfg: ExportConfig, device: torch.device | str = "cpu"
) -> tuple[trimesh.Trimesh, ThresholdChoice, float, int]:
    """Density grid → iso level → (filter) → marching cubes → cleanup; (mesh, level, voxel, raw faces)."""
    bound = float(field.bound)
    volume = sample_density_grid(field.density, cfg.resolution, bound, cfg.chunk, device)
    close_boundary(volume)
    choice = choose_threshold(volume, bound, cfg.threshold)
    volume, level = filter_density(volume, choice.level, cfg.density_sigma)
    vertices, faces = extract_mesh(volume, level, bound)
    del volume
    if len(faces) == 0:
        raise EmptyFieldError(
            f"no surface at density level {choice.level:.4g} (grid {cfg.resolution}^3 is too coarse for the object?); "
            "try a lower --threshold or a higher --resolution"
        )
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    raw_faces = len(mesh.faces)
    mesh = clean_mesh(mesh, cfg.min_component_fraction, cfg.smooth_iterations, cfg.max_faces, cfg.fit_decimated)
    return mesh, choice, 2.0 * bound / (cfg.resolution - 1), raw_faces


def color_function(
    field: torch.nn.Module,
    mesh: trimesh.Trimesh,
    voxel: float,
    cfg: ExportConfig,
    views: Optional[ColorViews] = None,
    device: torch.device | str = "cpu",
) -> ColorFn:
    """points [N, 3], normals [N, 3] on `mesh`'s surface → colours [N, 3] in [0, 1].

    RGB fields are queried along the inward normal; latent fields are coloured from decoded
    views, with `mesh` as the occluder of the visibility test (color.py).
    """
    if field.n_channels == 3:
        return lambda points, normals: rgb_vertex_colors(field, points, normals, voxel, cfg.chunk, device)
    if views is None:
        raise ValueError("a latent field needs ColorViews (a renderer and a VAE decoder) to be coloured")
    c2w = color_view_poses(cfg.color_views, views.input_elevation, views.radius)
    return lambda points, normals: latent_colors(
        views.render_views, views.decode, mesh.vertices, mesh.faces, points, normals, c2w, views.fov_deg,
        views.latent_resolution, views.background, depth_tolerance=2.5 * voxel, device=device,
    )


def vertex_colors(
    field: torch.nn.Module,
    mesh: trimesh.Trimesh,
    voxel: float,
    cfg: ExportConfig,
    views: Optional[ColorViews] = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """[V, 3] colours in [0, 1]: queried (RGB field) or projected from decoded views (latent)."""
    color = color_function(field, mesh, voxel, cfg, views, device)
    return color(np.asarray(mesh.vertices), seam_vertex_normals(np.asarray(mesh.vertices), np.asarray(mesh.faces)))


def texture_mesh(
    field: torch.nn.Module,
    mesh: trimesh.Trimesh,
    voxel: float,
    cfg: ExportConfig,
    views: Optional[ColorViews] = None,
    device: torch.device | str = "cpu",
) -> trimesh.Trimesh:
    """UV-unwrap `mesh` (xatlas) and bake its colours into a `cfg.texture_size`² texture."""
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    atlas = unwrap(vertices, faces, cfg.texture_size)
    color = color_function(field, mesh, voxel, cfg, views, device)
    baked = bake_texture(atlas, vertices, seam_vertex_normals(vertices, faces), color)
    return textured_mesh(vertices, atlas, baked.image)


def export_field(
    field: torch.nn.Module,
    cfg: ExportConfig,
    views: Optional[ColorViews] = None,
    device: torch.device | str = "cpu",
) -> ExportResult:
    """The whole pipeline: a trained field → a cleaned, coloured world-frame mesh.

    Vertex colours, or (cfg.texture) uv + a baked texture.
    """
    mesh, choice, voxel, raw_faces = field_geometry(field, cfg, device)
    watertight = bool(mesh.is_watertight)
    if cfg.texture:
        out = texture_mesh(field, mesh, voxel, cfg, views, device)
    else:
        out = colored_mesh(mesh.vertices, mesh.faces, vertex_colors(field, mesh, voxel, cfg, views, device))
    return ExportResult(out, choice, voxel, raw_faces, watertight)


def render_colored_mesh(
    mesh: trimesh.Trimesh, c2w: Tensor, fov_deg: float, resolution: int
) -> tuple[Tensor, Tensor]:
    """(rgb [H, W, 3], mask [H, W]) of a coloured world-frame trimesh on white, unlit.

    Vertex colours are interpolated; a textured mesh is sampled at its interpolated uv.
    """
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    if is_textured(mesh):
        uv = torch.as_tensor(np.asarray(mesh.visual.uv), dtype=torch.float32)
        texture = torch.as_tensor(texture_array(mesh))
        return render_textured_mesh(vertices, faces, uv, texture, c2w.float(), fov_deg, resolution)
    colors = torch.as_tensor(mesh.visual.vertex_colors[:, :3], dtype=torch.float32) / 255.0
    return render_mesh(vertices, faces, colors, c2w.float(), fov_deg, resolution)
