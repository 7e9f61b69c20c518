"""A small z-buffer rasteriser for triangle meshes (pure PyTorch, any device).

It serves three purposes: the oracle prior's ground-truth views (priors/oracle.py), the
visibility test when decoded views are projected onto a mesh's vertices (export/color.py), and
the check that an exported mesh's colours, seen from the input camera, look like the input image
(`render_mesh` + `metrics.psnr`).  It shares no code with the NeRF renderer or with
`sjc3d.cameras` (the focal length is computed here), so the oracle's truth cannot inherit a bug
of the path it validates.

Cameras follow sjc3d.cameras: OpenGL axes (the camera looks down −z), square pixels, pixel
(row i, column j) centred at (j + ½, i + ½), `fov_deg` across the width. Depth is camera-space
z (distance along the viewing axis, > 0 in front of the camera), not distance along the ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NEAR = 1e-4  # faces with a vertex closer than this to the camera plane are skipped
_MAX_CANDIDATES = 1 << 22  # (face, pixel) pairs tested at once


def project(vertices: Tensor, c2w: Tensor, fov_deg: float, resolution: int) -> tuple[Tensor, Tensor]:
    """World points [N, 3] → (pixel coordinates [N, 2] as (column, row), camera depth [N])."""
    rotation, centre = c2w[:3, :3], c2w[:3, 3]
    cam = (vertices - centre) @ rotation  # rotationᵀ·(v − c), row-vector form
    depth = -cam[:, 2]
    f = 0.5 * resolution / math.tan(math.radians(fov_deg) / 2)  # fov_deg spans the width
    safe = depth.clamp_min(NEAR)
    col = f * cam[:, 0] / safe + resolution / 2
    row = resolution / 2 - f * cam[:, 1] / safe
    return torch.stack([col, row], dim=-1), depth


@dataclass
class Raster:
    """Per-pixel result of rasterising a mesh; all [H, W] (bary [H, W, 3])."""

    depth: Tensor  # camera-space z of the nearest surface, +inf where no face covers the pixel
    face: Tensor  # index of that face, −1 where none
    bary: Tensor  # perspective-correct barycentric weights of the face's three vertices

    @property
    def mask(self) -> Tensor:
        return self.face >= 0


@torch.no_grad()
def rasterize(vertices: Tensor, faces: Tensor, c2w: Tensor, fov_deg: float, resolution: int) -> Raster:
    """Rasterise a triangle mesh seen by one camera.

    Args:
        vertices: [V, 3] float world points; faces: [F, 3] long; c2w: [4, 4].
    Returns:
        Raster with [resolution, resolution] maps. Both windings are drawn (no culling).
    """
    device = vertices.device
    vertices = vertices.float()
    size = resolution
    pixels, depth = project(vertices, c2w.float().to(device), fov_deg, size)
    tri_px = pixels[faces]  # [F, 3, 2]
    tri_z = depth[faces]  # [F, 3]
    lo = torch.ceil(tri_px.amin(1) - 0.5).clamp(0, size).long()  # first covered pixel index
    hi = torch.floor(tri_px.amax(1) - 0.5).clamp(-1, size - 1).long()  # last covered index
    span = (hi - lo + 1).clamp_min(0)  # [F, 2] columns and rows of the bounding box
    area2 = (tri_px[:, 1, 0] - tri_px[:, 0, 0]) * (tri_px[:, 2, 1] - tri_px[:, 0, 1]) - (
        tri_px[:, 2, 0] - tri_px[:, 0, 0]
    ) * (tri_px[:, 1, 1] - tri_px[:, 0, 1])
    valid = (tri_z.amin(1) > NEAR) & (area2.abs() > 1e-12) & (span[:, 0] > 0) & (span[:, 1] > 0)
    face_ids = torch.nonzero(valid).squeeze(1)
    counts = span[face_ids, 0] * span[face_ids, 1]

    zbuf = torch.full((size * size,), float("inf"), device=device)
    hits: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (pixel, face, depth, bary) candidates
    # Chunk faces so that the enumerated (face, pixel) pairs stay bounded.
    bounds = torch.cumsum(counts, 0)
    start = 0
    while start < len(face_ids):
        base = int(bounds[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(bounds, torch.tensor(base + _MAX_CANDIDATES, device=device), right=True))
        stop = max(stop, start + 1)
        f = face_ids[start:stop]
        n = counts[start:stop]
        owner = torch.repeat_interleave(torch.arange(len(f), device=device), n)
        offset = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        width = span[f, 0][owner]
        col = lo[f, 0][owner] + offset % width
        row = lo[f, 1][owner] + offset // width
        p = torch.stack([col + 0.5, row + 0.5], dim=-1).float()
        a, b, c = (tri_px[f, k][owner] for k in range(3))

        def edge(u: Tensor, v: Tensor, w: Tensor) -> Tensor:
            return (v[:, 0] - u[:, 0]) * (w[:, 1] - u[:, 1]) - (w[:, 0] - u[:, 0]) * (v[:, 1] - u[:, 1])

        total = area2[f][owner]
        w0, w1, w2 = edge(b, c, p) / total, edge(c, a, p) / total, edge(a, b, p) / total
        inside = (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6)
        screen = torch.stack([w0, w1, w2], -1)[inside]
        owner_in = owner[inside]
        inv_z = screen / tri_z[f][owner_in]  # perspective correction: 1/z is affine in screen space
        z = 1.0 / inv_z.sum(-1)
        bary = inv_z * z[:, None]
        pix = row[inside] * size + col[inside]
        zbuf.scatter_reduce_(0, pix, z, reduce="amin")
        hits.append((pix, f[owner_in], z, bary))
        start = stop

    face_map = torch.full((size * size,), -1, dtype=torch.long, device=device)
    bary_map = torch.zeros(size * size, 3, device=device)
    for pix, f, z, bary in hits:
        win = z <= zbuf[pix]
        face_map[pix[win]] = f[win]
        bary_map[pix[win]] = bary[win]
    shape = (size, size)
    return Raster(zbuf.reshape(shape), face_map.reshape(shape), bary_map.reshape(*shape, 3))


@torch.no_grad()
def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    colors: Tensor,
    c2w: Tensor,
    fov_deg: float,
    resolution: int,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """Unlit render of a vertex-coloured mesh: (rgb [H, W, 3] in [0, 1], mask [H, W] bool).

    Colours are interpolated with the perspective-correct barycentrics (no shading: the mesh's
    colours are meant to reproduce the field's rendered colours, which already contain shading).
    """
    raster = rasterize(vertices, faces, c2w, fov_deg, resolution)
    image = torch.tensor(background, dtype=torch.float32, device=vertices.device).expand(resolution, resolution, 3).clone()
    mask = raster.mask
    corner = faces[raster.face[mask]]  # [P, 3]
    image[mask] = (colors.float()[corner] * raster.bary[mask][..., None]).sum(1)
    return image, mask
