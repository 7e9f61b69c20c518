"""Render procedural objects by sphere tracing their signed distance function.

Cameras follow sjc3d.cameras (OpenGL axes, `fov_deg` across the width, pixel centres at +½).
Each pixel is the box-filtered mean of `supersample`² sub-pixel rays (the rays of the same camera
at `supersample`× the resolution), so edges are anti-aliased and alpha is coverage.

Shading is Lambert under a light fixed in the *world*, plus ambient, with the direction and
ambient of the oracle prior (priors/oracle.py): colours do not depend on the viewpoint, which is
what a radiance field without view dependence can represent, and oracle and procedural views
look alike.

Sphere tracing (Hart 1996): from a point at distance d from the surface, a step of d along the
ray cannot cross the surface.  A ray stops when d falls below a fixed share of its sub-pixel
footprint at that depth (a cone-tracing criterion: more precision than that is invisible), or
when it leaves the object's bounding box.  Only rays still marching are evaluated at each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sjc3d.cameras import camera_rays
from sjc3d.datasets.shapes import ProceduralObject
from sjc3d.priors.oracle import AMBIENT, LIGHT_DIRECTION

FOV_DEG = 49.1  # Zero-1-to-3's training cameras (DESIGN.md §4)
SUPERSAMPLE = 3  # sub-pixel rays per side (README: "Training data" has the measurement)
HIT_FRACTION = 0.1  # a ray has hit when d < this share of its sub-pixel footprint
MAX_STEPS = 96
NORMAL_STEP = 5e-4  # finite-difference step for normals, in object units (object size 1)
_BOX_MARGIN = 1e-3


def ray_box(rays_o: Tensor, rays_d: Tensor, lo: np.ndarray, hi: np.ndarray) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (t_near [R], t_far [R]) of rays [R, 3] through the box [lo, hi].

    The slab method; a ray that misses the box gets t_near > t_far.
    """
    lo_t = torch.as_tensor(lo, dtype=rays_o.dtype, device=rays_o.device)
    hi_t = torch.as_tensor(hi, dtype=rays_o.dtype, device=rays_o.device)
    inv = 1.0 / torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0, t1 = (lo_t - rays_o) * inv, (hi_t - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


@torch.no_grad()
def sphere_trace(sdf, rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, hit_slope: float,
                 max_steps: int = MAX_STEPS) -> tuple[Tensor, Tensor]:
    """March rays [R, 3] (unit directions) to the zero level of `sdf` (points [N, 3] → [N]).

    A ray hits when sdf < hit_slope · t (its footprint) and misses when t > t_far; a ray still
    marching after `max_steps` (it grazes a surface) counts as a hit if it is within a few
    footprints.  Returns (t [R], hit [R] bool).
    """
    t_out = torch.zeros_like(t_near)
    hit = torch.zeros_like(t_near, dtype=torch.bool)
    index = torch.nonzero(t_near < t_far).squeeze(1)  # the rays still marching
    # Their state, coordinate-major [8, n]: origin (3), direction (3), t, t_far.  One gather per
    # step drops finished rays; the points o + t·d come out as [3, n], which the SDF reads
    # without a copy (see Part.local_coordinates).
    state = torch.cat([rays_o[index].T, rays_d[index].T, t_near[index][None], t_far[index][None]])
    distance = torch.zeros(len(index))
    for _ in range(max_steps):
        if len(index) == 0:
            break
        t = state[6]
        distance = sdf(torch.addcmul(state[0:3], state[3:6], t).T)
        converged = distance < hit_slope * t
        if converged.any():
            t_out[index[converged]] = t[converged]
            hit[index[converged]] = True
        t += distance
        keep = torch.nonzero(~converged & (t <= state[7])).squeeze(1)
        index, state, distance = index[keep], state.index_select(1, keep), distance[keep]
    grazing = distance < 4 * hit_slope * state[6]  # rays that ran out of steps
    t_out[index[grazing]] = state[6][grazing]
    hit[index[grazing]] = True
    return t_out, hit


def surface_normals(sdf, points: Tensor, step: float = NORMAL_STEP) -> Tensor:
    """[N, 3] unit normals from the SDF's gradient (differences along a tetrahedron's 4 corners)."""
    corners = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]],
                           dtype=points.dtype, device=points.device)
    values = sdf((points[None] + step * corners[:, None]).reshape(-1, 3)).reshape(4, -1)  # [4, N]
    return torch.nn.functional.normalize(values.T @ corners, dim=-1)


def lambert(albedo: Tensor, normals: Tensor) -> Tensor:
    """[N, 3] colour: albedo × (ambient + (1 − ambient)·max(0, n·l)), l fixed in the world."""
    light = torch.as_tensor(LIGHT_DIRECTION / np.linalg.norm(LIGHT_DIRECTION), dtype=normals.dtype,
                            device=normals.device)
    diffuse = (normals @ light).clamp(0.0, 1.0)
    return albedo * (AMBIENT + (1.0 - AMBIENT) * diffuse)[:, None]


@dataclass
class RaySamples:
    """Shaded rays: `premultiplied` [R, 4] = (colour·hit, hit); `label` [R] long, 0 for a miss,
    1 + the material label of the surface hit (ProceduralObject.surface) otherwise."""

    premultiplied: Tensor
    label: Tensor


def shade_rays(obj: ProceduralObject, rays_o: Tensor, rays_d: Tensor, hit_slope: float) -> RaySamples:
    """Trace rays [R, 3] against `obj` and shade the hits (Lambert, world-fixed light)."""
    lo, hi = obj.bounds()
    t_near, t_far = ray_box(rays_o, rays_d, lo - _BOX_MARGIN, hi + _BOX_MARGIN)
    t, hit = sphere_trace(obj.sdf, rays_o, rays_d, t_near, t_far, hit_slope)
    points = torch.addcmul(rays_o[hit], rays_d[hit], t[hit, None])
    albedo, label = obj.surface(points)
    premultiplied = torch.zeros(rays_o.shape[0], 4)
    premultiplied[hit, :3] = lambert(albedo, surface_normals(obj.sdf, points)).clamp(0.0, 1.0)
    premultiplied[hit, 3] = 1.0
    labels = torch.zeros(rays_o.shape[0], dtype=torch.long)
    labels[hit] = label + 1
    return RaySamples(premultiplied, labels)


def uneven_pixels(label: Tensor) -> Tensor:
    """[V, S, S] bool: pixels whose 3×3 neighbourhood holds more than one label [V, S, S].

    Those are the pixels an edge may cross — the silhouette, a border between parts or between
    a pattern's two colours.  Elsewhere the pixel's colour varies only with smooth shading.
    """
    padded = torch.nn.functional.pad(label[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    size = label.shape[-1]
    uneven = torch.zeros_like(label, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            uneven |= padded[:, dy:dy + size, dx:dx + size] != label
    return uneven


@torch.no_grad()
def render_views(obj: ProceduralObject, c2w: Tensor, size: int, fov_deg: float = FOV_DEG,
                 supersample: int = SUPERSAMPLE, adaptive: bool = True) -> Tensor:
    """Views of `obj` from cameras c2w [V, 4, 4]: RGBA [V, size, size, 4] float32 in [0, 1].

    RGB is straight (not premultiplied): the mean colour of the sub-pixel rays that hit; white
    where none does.  Alpha is the share of sub-pixel rays that hit (coverage).  Composite with
    `composite_on_white`.  All views are traced together (per-step overheads are shared).

    adaptive: trace one ray through each pixel centre first and the `supersample`² sub-pixel
        rays only where an edge may cross the pixel (`uneven_pixels`); elsewhere the centre ray
        stands for the pixel.  Off: every pixel is the mean of its sub-pixel rays.
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float32)
    n_views, fine = c2w.shape[0], size * supersample
    slope = HIT_FRACTION * 2.0 * math.tan(math.radians(fov_deg) / 2) / fine  # share of a sub-pixel per unit depth
    fine_o, fine_d = camera_rays(c2w, fov_deg, fine)
    # [V, S, S, k², 3]: the k × k sub-pixel rays of each pixel (k = supersample), pixel-major.
    blocks = [x.reshape(n_views, size, supersample, size, supersample, 3).permute(0, 1, 3, 2, 4, 5)
              .reshape(n_views, size, size, supersample**2, 3) for x in (fine_o, fine_d)]
    if adaptive and supersample > 1:
        centre_o, centre_d = (x.reshape(-1, 3) for x in camera_rays(c2w, fov_deg, size))
        centre = shade_rays(obj, centre_o, centre_d, slope * supersample)
        pixels = centre.premultiplied.reshape(n_views, size, size, 4)
        uneven = uneven_pixels(centre.label.reshape(n_views, size, size))
        sub = shade_rays(obj, blocks[0][uneven].reshape(-1, 3), blocks[1][uneven].reshape(-1, 3), slope)
        pixels[uneven] = sub.premultiplied.reshape(-1, supersample**2, 4).mean(dim=1)
    else:
        sub = shade_rays(obj, blocks[0].reshape(-1, 3), blocks[1].reshape(-1, 3), slope)
        pixels = sub.premultiplied.reshape(n_views, size, size, supersample**2, 4).mean(dim=3)
    alpha = pixels[..., 3:]
    rgb = torch.where(alpha > 0, pixels[..., :3] / alpha.clamp_min(1e-12), torch.ones_like(pixels[..., :3]))
    return torch.cat([rgb.clamp(0.0, 1.0), alpha], dim=-1)


def composite_on_white(rgba: Tensor) -> Tensor:
    """[..., 4] straight RGBA → [..., 3] RGB over a white background (alpha compositing)."""
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)
