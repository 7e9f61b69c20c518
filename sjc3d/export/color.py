"""Colours for an extracted mesh, at its vertices or at any points of its surface.

RGB fields (n_channels == 3)
    Each vertex gets the colour a tiny camera looking straight at it would see: a short ray
    along the inward normal, from 2 voxels outside the vertex to 4 inside, is volume-rendered
    through the field and the weighted features are normalised by the ray's opacity. The iso
    surface sits where density starts to rise, while the colour a view shows is the one just
    behind it, where the rendering weights peak; querying exactly at the vertex would pick the
    barely supervised colour of the thin air in front of the surface.

Latent fields (n_channels == 4)
    There is no colour to query, only Stable Diffusion latents. The field is rendered from
    `n` cameras around the object (the input camera first), each render is decoded to RGB by
    the VAE decoder, and the decoded images are projected onto the vertices (or, for a
    texture, onto the surface point of every texel: the same code with other points). A vertex takes a
    view's colour when it is visible there — its camera depth is within a tolerance of the
    mesh's own z-buffer at its pixel (the rasterised mesh, exact, rather than the field's
    blurry expected depth) — weighted by the cosine between its normal and the direction to
    the camera; the input view counts `input_weight` times (it is the one view the reference
    loss supervises directly), and by the render's opacity⁸ there (silhouette pixels mix in the
    background). Vertices that no view sees well (total weight < 0.05) take the colour of the
    nearest well-seen vertex.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from sjc3d.cameras import spherical_to_c2w
from sjc3d.mesh_raster import project, rasterize

Decoder = Callable[[Tensor], Tensor]  # latents [B, C, h, w] → rgb [B, H, W, 3] in [0, 1]
RenderViews = Callable[..., object]  # renderer.render_views(c2w, fov_deg, resolution, background)

RAY_OUTSIDE = 2.0  # voxels in front of the vertex where the colour ray starts
RAY_INSIDE = 4.0  # voxels behind it where the ray stops
RAY_SAMPLES = 16


@torch.no_grad()
def rgb_vertex_colors(
    field: torch.nn.Module,
    vertices: np.ndarray,
    normals: np.ndarray,
    voxel: float,
    chunk: int = 262144,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Colours [V, 3] in [0, 1] of an RGB field seen along each point's inward normal.

    Args:
        field: has forward(points [N, 3]) → FieldOutput(density [N], features [N, 3]).
        vertices, normals: [V, 3] surface points (mesh vertices or texel points) and unit
            outward normals.
        voxel: grid spacing h; the ray runs from +2h to −4h along the normal.
    """
    offsets = torch.linspace(RAY_OUTSIDE * voxel, -RAY_INSIDE * voxel, RAY_SAMPLES, device=device)  # [S]
    delta = float(offsets[0] - offsets[1])
    verts = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    norms = torch.as_tensor(np.array(normals), dtype=torch.float32, device=device)
    out = torch.empty(len(verts), 3, device=device)
    per_chunk = max(1, chunk // RAY_SAMPLES)
    for start in range(0, len(verts), per_chunk):
        v, n = verts[start : start + per_chunk], norms[start : start + per_chunk]
        points = v[:, None, :] + offsets[None, :, None] * n[:, None, :]  # [B, S, 3]
        result = field(points.reshape(-1, 3))
        sigma = result.density.reshape(len(v), RAY_SAMPLES).float()
        feats = result.features.reshape(len(v), RAY_SAMPLES, -1)[..., :3].float()
        alpha = 1.0 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
        weight = trans * alpha  # [B, S]
        total = weight.sum(1, keepdim=True)
        rendered = (weight[..., None] * feats).sum(1) / total.clamp_min(1e-8)
        at_vertex = feats[:, int(RAY_SAMPLES * RAY_OUTSIDE / (RAY_OUTSIDE + RAY_INSIDE))]
        out[start : start + len(v)] = torch.where(total > 1e-6, rendered, at_vertex)
    return out.clamp(0, 1).cpu().numpy()


def color_view_poses(n: int, input_elevation: float, radius: float) -> Tensor:
    """[n, 4, 4] cameras for colouring: the input camera, then n−1 around the object.

    The others step in azimuth by the golden angle (137.5°, so any prefix is spread evenly)
    and cycle through elevations 0°, 30°, 60°, −20° (tops are seen more often than bottoms).
    """
    elevations, azimuths = [input_elevation], [0.0]
    cycle = (0.0, 30.0, 60.0, -20.0)
    for k in range(1, n):
        elevations.append(cycle[(k - 1) % len(cycle)])
        azimuths.append((k * 137.50776405) % 360.0)
    return spherical_to_c2w(torch.tensor(elevations), torch.tensor(azimuths), torch.full((n,), float(radius)))


@torch.no_grad()
def project_views(
    images: Tensor,
    c2w: Tensor,
    fov_deg: float,
    mesh_vertices: Tensor,
    mesh_faces: Tensor,
    points: Tensor,
    normals: Tensor,
    depth_tolerance: float,
    view_weights: Tensor | None = None,
    opacity: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Blend images [B, H, W, 3] seen by cameras c2w [B, 4, 4] onto points of a mesh's surface.

    The mesh (mesh_vertices [V, 3], mesh_faces [F, 3]) gives the z-buffer of the visibility
    test; the points [N, 3] with unit normals [N, 3] are what gets coloured: the mesh's own
    vertices (vertex colours) or the surface points of texels (texture.py).
    `opacity` [B, h, w] (any resolution), the rendered opacity of each view, further weights
    a view by opacity⁸ at the point: pixels on a render's silhouette mix the object with the
    background (and a latent pixel covers several decoded pixels), so they should not paint it.
    Returns (colours [N, 3], total weight [N]); a point no view sees has weight 0.
    """
    n_views, size = images.shape[0], images.shape[1]
    color_sum = torch.zeros(len(points), 3, device=points.device)
    weight_sum = torch.zeros(len(points), device=points.device)
    for b in range(n_views):
        cam = c2w[b].to(points.device).float()
        raster = rasterize(mesh_vertices, mesh_faces, cam, fov_deg, size)
        pixels, depth = project(points, cam, fov_deg, size)
        col, row = pixels[:, 0].floor().long(), pixels[:, 1].floor().long()
        in_frame = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (depth > 0)
        surface = torch.full_like(depth, float("inf"))
        surface[in_frame] = raster.depth[row[in_frame], col[in_frame]]
        visible = in_frame & (depth <= surface + depth_tolerance)
        to_camera = F.normalize(cam[:3, 3] - points, dim=-1)
        cosine = (normals * to_camera).sum(-1).clamp_min(0.0)
        weight = torch.where(visible, cosine, torch.zeros_like(cosine))
        if view_weights is not None:
            weight = weight * view_weights[b]
        # Bilinear lookup at the projected point (grid_sample's x, y in [−1, 1], pixel centres).
        grid = (pixels / size * 2.0 - 1.0)[None, None]  # [1, 1, N, 2]
        image = images[b].permute(2, 0, 1)[None].float().to(points.device)  # [1, 3, H, W]
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if opacity is not None:
            alpha = opacity[b][None, None].float().to(points.device)  # [1, 1, h, w]
            alpha = F.grid_sample(alpha, grid, mode="bilinear", padding_mode="border", align_corners=False)
            weight = weight * alpha[0, 0, 0].clamp(0, 1) ** 8
        color_sum += weight[:, None] * sampled[0, :, 0].T
        weight_sum += weight
    colors = color_sum / weight_sum.clamp_min(1e-8)[:, None]
    return colors, weight_sum


def fill_unseen(points: np.ndarray, colors: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Give every unseen point the colour of its nearest seen point (grey when none is seen)."""
    if seen.all():
        return colors
    if not seen.any():
        return np.full_like(colors, 0.5)
    _, nearest = cKDTree(points[seen]).query(points[~seen])
    colors = colors.copy()
    colors[~seen] = colors[seen][nearest]
    return colors


@torch.no_grad()
def latent_colors(
    render_views: RenderViews,
    decode: Decoder,
    mesh_vertices: np.ndarray,
    mesh_faces: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray,
    c2w: Tensor,
    fov_deg: float,
    latent_resolution: int,
    background: Tensor,
    depth_tolerance: float,
    input_weight: float = 3.0,
    min_weight: float = 0.05,
    batch: int = 4,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Colours [N, 3] of a latent field at points of the mesh's surface, from decoded renders.

    See the module docstring. The decoded images have whatever size the decoder gives (the
    VAE's factor times `latent_resolution`); nothing here assumes a factor.

    Args:
        render_views: renderer.render_views(c2w [B,4,4], fov_deg, resolution, background) →
            RenderOutput with features [B, h, w, C].
        decode: latents [B, C, h, w] → rgb [B, H, W, 3] in [0, 1].
        mesh_vertices, mesh_faces: the mesh, for the visibility z-buffer.
        points, normals: [N, 3] surface points to colour and their unit outward normals.
        c2w: [n, 4, 4] colour cameras, the input camera first (`color_view_poses`).
    """
    verts = torch.as_tensor(mesh_vertices, dtype=torch.float32, device=device)
    tris = torch.as_tensor(mesh_faces, dtype=torch.long, device=device)
    pts = torch.as_tensor(points, dtype=torch.float32, device=device)
    norms = torch.as_tensor(np.array(normals), dtype=torch.float32, device=device)
    color_sum = torch.zeros(len(pts), 3, device=device)
    weight_sum = torch.zeros(len(pts), device=device)
    for start in range(0, len(c2w), batch):
        cams = c2w[start : start + batch].to(device)
        rendered = render_views(cams, fov_deg, latent_resolution, background)
        latents = rendered.features.permute(0, 3, 1, 2).contiguous()  # [b, C, h, w]
        images = decode(latents).float().clamp(0, 1).to(device)
        weights = torch.ones(len(cams), device=device)
        if start == 0:
            weights[0] = input_weight
        opacity = rendered.opacity[..., 0]  # [b, h, w]
        colors, weight = project_views(
            images, cams, fov_deg, verts, tris, pts, norms, depth_tolerance, weights, opacity
        )
        color_sum += colors * weight[:, None]
        weight_sum += weight
    colors = (color_sum / weight_sum.clamp_min(1e-8)[:, None]).cpu().numpy()
    # A point seen only at grazing angles or through a render's soft silhouette edge has a
    # colour mixed with the background: better to take its best-seen neighbour's.
    return fill_unseen(np.asarray(points), colors, (weight_sum >= min_weight).cpu().numpy())


def latent_vertex_colors(
    render_views: RenderViews,
    decode: Decoder,
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray,
    c2w: Tensor,
    fov_deg: float,
    latent_resolution: int,
    background: Tensor,
    depth_tolerance: float,
    **kwargs,
) -> np.ndarray:
    """Colours [V, 3] of a latent field at the mesh's own vertices (`latent_colors`)."""
    return latent_colors(
        render_views, decode, vertices, faces, vertices, normals, c2w, fov_deg, latent_resolution, background,
        depth_tolerance, **kwargs,
    )
