"""A small z-buffer rasteriser for triangle meshes, independent of the NeRF renderer.

The oracle prior renders ground truth with this module.  It builds its cameras from spherical
angles with closed-form axes (not `sjc3d.cameras.look_at`) and rasterises triangles instead of
marching rays, so a convention bug in the NeRF path cannot cancel out against the truth.

Camera (same *convention* as DESIGN.md §3, different code): centre
c = r·(sin θ cos φ, sin θ sin φ, cos θ) for polar θ and azimuth φ; right = ∂c/∂φ normalised =
(−sin φ, cos φ, 0); up = −∂c/∂θ normalised = (−cos θ cos φ, −cos θ sin φ, sin θ);
forward = −c/r.  Image rows go down, pixel centres at +0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SphericalCamera:
    polar: float  # radians from +z
    azimuth: float  # radians from +x toward +y
    radius: float

    def axes(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(centre, right, up, forward), each [3] float64."""
        st, ct = math.sin(self.polar), math.cos(self.polar)
        sp, cp = math.sin(self.azimuth), math.cos(self.azimuth)
        centre = torch.tensor([st * cp, st * sp, ct], dtype=torch.float64) * self.radius
        right = torch.tensor([-sp, cp, 0.0], dtype=torch.float64)
        up = torch.tensor([-ct * cp, -ct * sp, st], dtype=torch.float64)
        forward = -centre / self.radius
        return centre, right, up, forward


@dataclass
class Raster:
    """rgb [H, W, 3] over white, alpha [H, W] coverage, depth [H, W] (inf where empty)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


def project(vertices: Tensor, camera: SphericalCamera, fov_deg: float, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel coordinates (u right, v down) and view depth of vertices [V, 3]."""
    centre, right, up, forward = (a.to(vertices) for a in camera.axes())
    rel = vertices - centre
    depth = rel @ forward
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    safe = depth.clamp_min(1e-6)
    u = size / 2 + focal * (rel @ right) / safe
    v = size / 2 - focal * (rel @ up) / safe
    return u, v, depth


def rasterize(
    vertices: Tensor, faces: Tensor, colors: Tensor, camera: SphericalCamera, fov_deg: float, size: int,
    near: float = 1e-2,
) -> Raster:
    """Rasterise one view at `size`² pixels (no anti-aliasing; see `render_mesh`).

    vertices [V, 3], faces [F, 3] long, colors [V, 3] in [0, 1] (interpolated perspective-correctly).
    Each triangle is tested only against the pixel centres inside its screen bounding box.
    """
    vertices = vertices.double()
    u, v, d = project(vertices, camera, fov_deg, size)
    fu, fv, fd = u[faces], v[faces], d[faces]  # [F, 3]
    visible = (fd > near).all(dim=1)
    j0 = torch.ceil(fu.min(1).values - 0.5).clamp(0, size - 1).long()
    j1 = torch.floor(fu.max(1).values - 0.5).clamp(-1, size - 1).long()
    i0 = torch.ceil(fv.min(1).values - 0.5).clamp(0, size - 1).long()
    i1 = torch.floor(fv.max(1).values - 0.5).clamp(-1, size - 1).long()
    width, height = (j1 - j0 + 1).clamp_min(0), (i1 - i0 + 1).clamp_min(0)
    counts = torch.where(visible, width * height, torch.zeros_like(width))

    face = torch.repeat_interleave(torch.arange(faces.shape[0]), counts)  # one row per (face, pixel)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(face.shape[0]) - start[face]
    jj = j0[face] + local % width[face].clamp_min(1)
    ii = i0[face] + local // width[face].clamp_min(1)
    px, py = jj.double() + 0.5, ii.double() + 0.5

    a_u, b_u, c_u = fu[face].unbind(1)
    a_v, b_v, c_v = fv[face].unbind(1)
    area = (b_u - a_u) * (c_v - a_v) - (b_v - a_v) * (c_u - a_u)
    w0 = ((b_u - px) * (c_v - py) - (b_v - py) * (c_u - px)) / area
    w1 = ((c_u - px) * (a_v - py) - (c_v - py) * (a_u - px)) / area
    w2 = 1.0 - w0 - w1
    inside = (area.abs() > 1e-12) & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    face, ii, jj, w = face[inside], ii[inside], jj[inside], torch.stack([w0, w1, w2], 1)[inside]

    inv_depth = (w / fd[face]).sum(1)  # 1/depth is affine in screen space
    depth = 1.0 / inv_depth
    pixel = ii * size + jj
    zbuffer = torch.full((size * size,), math.inf, dtype=torch.float64)
    zbuffer.scatter_reduce_(0, pixel, depth, reduce="amin")
    front = depth <= zbuffer[pixel]
    face, pixel, w, inv_depth = face[front], pixel[front], w[front], inv_depth[front]

    persp = (w / fd[face]) / inv_depth[:, None]  # perspective-correct barycentrics
    color = (persp[:, :, None] * colors.double()[faces[face]]).sum(1)
    image = torch.ones(size * size, 3, dtype=torch.float64)
    alpha = torch.zeros(size * size, dtype=torch.float64)
    image[pixel] = color
    alpha[pixel] = 1.0
    return Raster(image.view(size, size, 3).float(), alpha.view(size, size).float(), zbuffer.view(size, size).float())


def render_mesh(
    vertices: Tensor, faces: Tensor, colors: Tensor, camera: SphericalCamera, fov_deg: float, size: int,
    supersample: int = 4,
) -> Raster:
    """Anti-aliased render: rasterise at `supersample`× and box-filter down to `size`²."""
    hi = rasterize(vertices, faces, colors, camera, fov_deg, size * supersample)
    if supersample == 1:
        return hi
    rgba = torch.cat([hi.rgb, hi.alpha[..., None]], -1).permute(2, 0, 1)[None]
    lo = F.avg_pool2d(rgba, supersample)[0].permute(1, 2, 0)
    depth = -F.max_pool2d(-hi.depth[None, None], supersample)[0, 0]  # nearest surface in the block
    return Raster(lo[..., :3].contiguous(), lo[..., 3].contiguous(), depth)
