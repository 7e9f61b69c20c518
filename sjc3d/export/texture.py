"""Baking a colour texture: every texel of the atlas takes the colour of its surface point.

    1. Rasterise the atlas in texture space (`rasterize_uv`): for each texel centre, the face
       whose chart covers it and its barycentric weights there.
    2. The texel's surface point and normal are the barycentric blends of that face's vertices
       and smooth vertex normals (`texel_points`).
    3. A colour function gives the colour there — the same ones vertex colouring uses
       (color.py: the normal-ray query for RGB fields, decoded views projected with the
       z-buffer visibility test for latent fields), so texture and vertex colours agree wherever
       they sample the same point.
    4. Empty texels (the gutter between charts, and texels whose centre falls just outside their
       chart) take the colour of the nearest covered texel (`fill_gutter`): bilinear filtering
       and mipmapping at a chart's edge then blend the chart with itself, never with the
       background or a neighbouring chart, so seams do not show.

Colours are display colours: sRGB-encoded values, like the input photo and the renders the field
was fitted to. A PNG texture (glTF baseColorTexture, OBJ map_Kd) holds sRGB-encoded values by
definition, so the texture stores them as they are; only glTF's COLOR_0 is linear (writers.py).

uv conventions are atlas.py's: v up from the image's bottom row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from sjc3d.export.atlas import Atlas
from sjc3d.mesh_raster import rasterize

ColorFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # points [N, 3], normals [N, 3] → rgb [N, 3]

_MAX_PAIRS = 1 << 22  # (face, texel) pairs tested at once


@dataclass
class TexelHits:
    """The texels whose centre lies in a face of the atlas; all arrays have length N."""

    row: np.ndarray  # [N] image row (0 = top)
    col: np.ndarray  # [N] image column
    face: np.ndarray  # [N] covering face
    bary: np.ndarray  # [N, 3] barycentric weights of the face's three corners at the centre


def uv_to_pixel(uv: np.ndarray, size: int) -> np.ndarray:
    """uv [.., 2] (v up) → continuous (column, row) image coordinates; texel centres at k + ½."""
    return np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> TexelHits:
    """Which face covers each texel centre of an S×S texture, and where (barycentrics).

    A texel centre on an edge shared by two faces is given to one of them (charts never overlap
    in an atlas, so no other conflict arises). Degenerate faces (zero uv area) cover nothing.
    """
    tri = uv_to_pixel(uv, size)[faces]  # [F, 3, 2] (column, row)
    lo = np.ceil(tri.min(1) - 0.5).astype(np.int64).clip(0, size)
    hi = np.floor(tri.max(1) - 0.5).astype(np.int64).clip(-1, size - 1)
    span = (hi - lo + 1).clip(0)  # [F, 2]
    area2 = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (
        tri[:, 1, 1] - tri[:, 0, 1]
    )
    count = span[:, 0] * span[:, 1]
    keep = np.nonzero((count > 0) & (np.abs(area2) > 1e-12))[0]
    bounds = np.cumsum(count[keep])
    rows, cols, owners, barys = [], [], [], []
    start = 0
    while start < len(keep):  # chunks of faces with a bounded number of (face, texel) pairs
        base = bounds[start - 1] if start > 0 else 0
        stop = max(int(np.searchsorted(bounds, base + _MAX_PAIRS, side="right")), start + 1)
        f = keep[start:stop]
        n = count[f]
        owner = np.repeat(f, n)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        width = span[owner, 0]
        col = lo[owner, 0] + offset % width
        row = lo[owner, 1] + offset // width
        p = np.stack([col + 0.5, row + 0.5], axis=-1)
        a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]

        def edge(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            return (y[:, 0] - x[:, 0]) * (z[:, 1] - x[:, 1]) - (z[:, 0] - x[:, 0]) * (y[:, 1] - x[:, 1])

        total = area2[owner]
        bary = np.stack([edge(b, c, p), edge(c, a, p), edge(a, b, p)], axis=-1) / total[:, None]
        inside = (bary >= -1e-9).all(-1)
        rows.append(row[inside])
        cols.append(col[inside])
        owners.append(owner[inside])
        barys.append(bary[inside])
        start = stop
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return TexelHits(empty, empty, empty, np.zeros((0, 3)))
    row, col, face, bary = (np.concatenate(x) for x in (rows, cols, owners, barys))
    _, first = np.unique(row * size + col, return_index=True)  # one face per texel
    return TexelHits(row[first], col[first], face[first], bary[first])


def seam_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V, 3] unit vertex normals, area-weighted, shared by all vertices at the same position.

    An atlas duplicates seam vertices; normals computed per duplicate would differ on either
    side of a seam (a visible crease in lit viewers). Summing face normals per *position*
    gives every copy the normal the unsplit mesh would have.
    """
    _, position = np.unique(np.round(vertices, 9), axis=0, return_inverse=True)
    position = position.reshape(-1)
    tri = vertices[faces]
    face_area_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [F, 3], |n| = 2·area
    summed = np.zeros((position.max() + 1, 3))
    for k in range(3):
        np.add.at(summed, position[faces[:, k]], face_area_normal)
    normals = summed[position]
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    fallback = np.array([0.0, 0.0, 1.0])  # isolated or degenerate-only vertices: any unit vector
    return np.where(length > 1e-20, normals / np.maximum(length, 1e-20), fallback)


def texel_points(
    hits: TexelHits, vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 3], unit normals [N, 3]) on the surface at the texel centres of `hits`."""
    corners = faces[hits.face]  # [N, 3]
    points = np.einsum("nk,nkd->nd", hits.bary, vertices[corners])
    blended = np.einsum("nk,nkd->nd", hits.bary, normals[corners])
    length = np.linalg.norm(blended, axis=1, keepdims=True)
    return points, blended / np.maximum(length, 1e-12)


def fill_gutter(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel of image [S, S, C] takes the value of its nearest covered texel."""
    if covered.all() or not covered.any():
        return image
    nearest = distance_transform_edt(~covered, return_distances=False, return_indices=True)  # [2, S, S]
    return image[nearest[0], nearest[1]]


@dataclass
class BakedTexture:
    image: np.ndarray  # [S, S, 3] float in [0, 1], display (sRGB-encoded) colours, gutter filled
    covered: np.ndarray  # [S, S] bool, texels whose centre lies on the surface


def bake_texture(atlas: Atlas, vertices: np.ndarray, normals: np.ndarray, color: ColorFn) -> BakedTexture:
    """Colour every texel of `atlas` with `color` at its surface point (module docstring).

    Args:
        atlas: the unwrapped mesh (faces over atlas vertices, `vertex_map` to the source).
        vertices, normals: [V, 3] the *source* mesh's vertices and unit vertex normals.
        color: points [N, 3], normals [N, 3] → rgb [N, 3] in [0, 1].
    """
    size = atlas.size
    hits = rasterize_uv(atlas.uv, atlas.faces, size)
    source_faces = atlas.vertex_map[atlas.faces]  # the same faces over the source vertices
    points, point_normals = texel_points(hits, vertices, normals, source_faces)
    image = np.zeros((size, size, 3))
    covered = np.zeros((size, size), dtype=bool)
    if len(points):
        image[hits.row, hits.col] = np.clip(color(points, point_normals), 0.0, 1.0)
        covered[hits.row, hits.col] = True
    else:
        image[:] = 0.5
    return BakedTexture(fill_gutter(image, covered), covered)


def textured_mesh(vertices: np.ndarray, atlas: Atlas, texture: np.ndarray) -> trimesh.Trimesh:
    """A trimesh over the atlas vertices with uv and the texture as its PBR baseColorTexture.

    texture: [S, S, 3] float in [0, 1] (sRGB-encoded), quantised to 8 bits here.
    """
    image = Image.fromarray((np.clip(texture, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=atlas.uv, material=material)
    return trimesh.Trimesh(vertices[atlas.vertex_map], atlas.faces, visual=visual, process=False)


def texture_array(mesh: trimesh.Trimesh) -> np.ndarray:
    """The baseColorTexture of a textured trimesh as float RGB [S, S, 3] in [0, 1]."""
    material = mesh.visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None:
        raise ValueError("the mesh's material has no texture image")
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of texture [S, S, 3] at uv [N, 2] (v up), as a viewer samples it → [N, 3]."""
    grid = torch.stack([uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0], dim=-1)[None, None]  # [1, 1, N, 2]
    image = texture.permute(2, 0, 1)[None].float()  # [1, 3, S, S]
    out = F.grid_sample(image, grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


@torch.no_grad()
def render_textured_mesh(
    vertices: Tensor,
    faces: Tensor,
    uv: Tensor,
    texture: Tensor,
    c2w: Tensor,
    fov_deg: float,
    resolution: int,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """Unlit render of a textured mesh: (rgb [H, W, 3] in [0, 1], mask [H, W] bool).

    uv is interpolated with the rasteriser's perspective-correct barycentrics and the texture
    sampled bilinearly — what a viewer does with an unlit textured material. There is no
    mipmapping: where the texture is minified (texels smaller than pixels), render at a
    multiple of the resolution and average down, as benchmarks/export_quality.py does.
    """
    raster = rasterize(vertices, faces, c2w, fov_deg, resolution)
    image = torch.tensor(background, dtype=torch.float32, device=vertices.device).expand(resolution, resolution, 3).clone()
    mask = raster.mask
    corner = faces[raster.face[mask]]  # [P, 3]
    texel_uv = (uv.float()[corner] * raster.bary[mask][..., None]).sum(1)  # [P, 2]
    image[mask] = sample_texture(texture.to(vertices.device), texel_uv)
    return image, mask
