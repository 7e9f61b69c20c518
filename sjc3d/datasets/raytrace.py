"""Render procedural objects by sphere tracing their signed distance function.

Cameras follow sjc3d.cameras (OpenGL axes, `fov_deg` across the width, pixel centres at +½).
A pixel is the box-filtered mean of `supersample`² sub-pixel rays (the rays of the same camera
at `supersample`× the resolution), so edges are anti-aliased and alpha is coverage.  By
default the sub-pixel rays are traced only where an edge may cross the pixel (adaptive
supersampling, `render_views`): most pixels of an object lie inside one smooth patch.

Shading is Lambert under a light fixed in the *world*, plus ambient, with the direction and
ambient of the oracle prior (priors/oracle.py): colours do not depend on the viewpoint, which is
what a radiance field without view dependence can represent, and oracle and procedural views
look alike.

Sphere tracing (Hart 1996): from a point at distance d from the surface, a step of d along the
ray cannot cross the surface.  A ray stops when d falls below a fixed share of its sub-pixel
footprint at that depth (a cone-tracing criterion: more precision than that is invisible), or
when it leaves the object's bounding box.  Only rays still marching are evaluated at each step,
and the few still marching after MAX_STEPS are settled by a uniform scan (`scan_for_surface`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sjc3d.cameras import focal_from_fov
from sjc3d.datasets.shapes import ProceduralObject
from sjc3d.priors.oracle import AMBIENT, LIGHT_DIRECTION

FOV_DEG = 49.1  # Zero-1-to-3's training cameras (DESIGN.md §4)
SUPERSAMPLE = 3  # sub-pixel rays per side (README: "Training data" has the measurement)
HIT_FRACTION = 0.1  # a ray has hit when d < this share of its sub-pixel footprint
MAX_STEPS = 48  # sphere-tracing steps; rays still marching then are settled by a scan
SCAN_SAMPLES = 32  # points per ray of that scan (`scan_for_surface`)
NORMAL_STEP = 5e-4  # finite-difference step for normals, in object units (object size 1)
_BOX_MARGIN = 1e-3


def pixel_rays(c2w: Tensor, fov_deg: float, size: int, supersample: int, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """The `supersample`² sub-pixel rays of chosen pixels: rays_o, rays_d [M·k², 3] (k = supersample).

    They are the rays `sjc3d.cameras.camera_rays` casts through the same points at k× the
    resolution (a test holds the two equal): sub-pixel (m, n) of pixel (row i, column j) is
    the fine pixel (i·k + m, j·k + n), centred at +½.  Rays are pixel-major, then row-major
    within a pixel.  Only the chosen pixels are computed, which is what makes adaptive
    supersampling cheap.

    Args:
        c2w: [V, 4, 4] cameras; pixels: [M, 3] long (view, row, column).
    """
    k, fine = supersample, size * supersample
    focal = focal_from_fov(fov_deg, fine)
    sub = torch.arange(k, dtype=torch.float32) + 0.5
    x = ((pixels[:, 2, None, None] * k + sub[None, None, :] - fine / 2) / focal).expand(-1, k, k).reshape(-1)
    y = (-(pixels[:, 1, None, None] * k + sub[None, :, None] - fine / 2) / focal).expand(-1, k, k).reshape(-1)
    view = pixels[:, 0].repeat_interleave(k * k)
    rays_d = torch.empty(len(view), 3)
    for v in range(c2w.shape[0]):  # one rotation per camera, applied coordinate-major ([3, n] rows)
        mine = torch.nonzero(view == v).squeeze(1)
        cam = torch.stack([x[mine], y[mine], -torch.ones(len(mine))])  # OpenGL: the camera looks down −z
        world = c2w[v, :3, :3] @ cam
        rays_d[mine] = (world / torch.sqrt(world[0] ** 2 + world[1] ** 2 + world[2] ** 2)).T
    return c2w[view, :3, 3], rays_d


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
                 max_steps: int) -> tuple[Tensor, Tensor]:
    """March rays [R, 3] (unit directions) to the zero level of `sdf` (points [N, 3] → [N]).

    A ray hits when sdf < hit_slope · t (its footprint) and misses when t > t_far; rays still
    marching after `max_steps` are settled by `scan_for_surface`.  Returns (t [R], hit [R] bool).
    """
    t_out = torch.zeros_like(t_near)
    hit = torch.zeros_like(t_near, dtype=torch.bool)
    index = torch.nonzero(t_near < t_far).squeeze(1)  # the rays still marching
    # Their state, coordinate-major [8, n]: origin (3), direction (3), t, t_far.  One gather per
    # step drops finished rays; the points o + t·d come out as [3, n], which the SDF reads
    # without a copy (see Part.local_coordinates).
    state = torch.cat([rays_o[index].T, rays_d[index].T, t_near[index][None], t_far[index][None]])
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
        index, state = index[keep], state.index_select(1, keep)
    if len(index):
        t_end, found = scan_for_surface(sdf, state[0:3], state[3:6], state[6], state[7])
        t_out[index[found]] = t_end[found]
        hit[index[found]] = True
    return t_out, hit


def scan_for_surface(sdf, origins: Tensor, directions: Tensor, t_start: Tensor, t_end: Tensor,
                     n_samples: int = SCAN_SAMPLES) -> tuple[Tensor, Tensor]:
    """Settle rays that sphere tracing could not: the first sign change on a uniform scan.

    Rays still marching after the step budget creep along a surface they graze (nearly parallel
    to a face, or into a concave crease between two parts), where the distance, and so every
    step, stays small.  One evaluation of `n_samples` points along the rest of each ray's way
    through the box finds the first point inside the object; the hit is interpolated linearly
    between it and the sample before.  A ray with no sample inside is a miss.

    Args:
        origins, directions: [3, n] coordinate-major; t_start, t_end: [n].
    Returns:
        (t [n], found [n] bool).
    """
    n = t_start.shape[0]
    fractions = torch.arange(n_samples + 1, dtype=t_start.dtype) / n_samples  # 0 … 1
    ts = t_start[:, None] + (t_end - t_start)[:, None] * fractions  # [n, J + 1]
    points = origins[:, :, None] + directions[:, :, None] * ts[None]  # [3, n, J + 1]
    values = sdf(points.reshape(3, -1).T).reshape(n, n_samples + 1)
    inside = values < 0
    found = inside.any(dim=1)
    first = inside.float().argmax(dim=1).clamp_min(1)  # index of the first sample inside
    d_out, d_in = values.gather(1, (first - 1)[:, None])[:, 0], values.gather(1, first[:, None])[:, 0]
    t_out, t_in = ts.gather(1, (first - 1)[:, None])[:, 0], ts.gather(1, first[:, None])[:, 0]
    weight = (d_out / (d_out - d_in).clamp_min(1e-12)).clamp(0.0, 1.0)
    return t_out + weight * (t_in - t_out), found


def surface_normals(sdf, points: Tensor, step: float = NORMAL_STEP) -> Tensor:
    """[N, 3] unit normals from the SDF's gradient (differences along a tetrahedron's 4 corners)."""
    corners = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]],
                           dtype=points.dtype, device=points.device)
    values = sdf((points[None] + step * corners[:, None]).reshape(-1, 3)).reshape(4, -1)  # [4, N]
    gradient = corners.T @ values  # [3, N]
    return (gradient / torch.sqrt(gradient[0] ** 2 + gradient[1] ** 2 + gradient[2] ** 2)).T


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
    t, hit = sphere_trace(obj.sdf, rays_o, rays_d, t_near, t_far, hit_slope, MAX_STEPS)
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
    n_views, k = c2w.shape[0], supersample
    pixel_width = 2.0 * math.tan(math.radians(fov_deg) / 2) / size  # per unit depth
    slope = HIT_FRACTION * pixel_width / k  # hit threshold of a sub-pixel ray, per unit depth
    every = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (n_views, size, size)), indexing="ij"), -1)
    every = every.reshape(-1, 3)  # (view, row, column) of every pixel
    if adaptive and k > 1:
        centre = shade_rays(obj, *pixel_rays(c2w, fov_deg, size, 1, every), HIT_FRACTION * pixel_width)
        pixels = centre.premultiplied.reshape(n_views, size, size, 4)
        uneven = uneven_pixels(centre.label.reshape(n_views, size, size))
        sub = shade_rays(obj, *pixel_rays(c2w, fov_deg, size, k, torch.nonzero(uneven)), slope)
        pixels[uneven] = sub.premultiplied.reshape(-1, k * k, 4).mean(dim=1)  # mask order = nonzero order
    else:
        sub = shade_rays(obj, *pixel_rays(c2w, fov_deg, size, k, every), slope)
        pixels = sub.premultiplied.reshape(n_views, size, size, k * k, 4).mean(dim=3)
    alpha = pixels[..., 3:]
    rgb = torch.where(alpha > 0, pixels[..., :3] / alpha.clamp_min(1e-12), torch.ones_like(pixels[..., :3]))
    return torch.cat([rgb.clamp(0.0, 1.0), alpha], dim=-1)


def composite_on_white(rgba: Tensor) -> Tensor:
    """[..., 4] straight RGBA → [..., 3] RGB over a white background (alpha compositing)."""
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)
