"""The camera convention of sjc3d (DESIGN.md §3) — every other module follows this one.

World
    z-up, as Blender/Objaverse (on which Zero-1-to-3 was trained).  The object is centred at
    the origin and about unit size.

Spherical cameras
    elevation  degrees up from the xy-plane; the polar angle is 90° − elevation.
    azimuth    degrees, atan2(y, x): measured from +x toward +y.
    radius     distance from the camera centre to the origin, in scene units.
    Cameras look at the origin with up = +z.  Elevation ±90° is degenerate (up ∥ view) and is
    clamped to ±89.9°.

Camera axes
    OpenGL: +x right, +y up, the camera looks down −z.  A camera-to-world matrix `c2w`
    [..., 4, 4] has columns (right, up, back, centre).

Images
    Square, `width` × `height` pixels, pixel (row i, column j) has its centre at (j + 0.5,
    i + 0.5); row 0 is the top of the image.  `fov_deg` is the full field of view across the
    width.  Channels-last float images in [0, 1] in the engine.

The input view
    The input photo is the view at (elevation_in, azimuth 0, radius R): a camera on the +x axis
    (tilted by elevation_in) looking toward −x, so the object's +y side appears on the right.

Zero-1-to-3 pose embedding
    `zero123_pose(src, dst)` = [Δpolar (radians), sin Δazimuth, cos Δazimuth, Δradius] of the
    destination relative to the source, Δ = destination − source.  With the axes above, a
    positive Δazimuth moves the camera to the source camera's right, and a positive Δpolar
    moves it down.  Identical views give [0, 0, 1, 0].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_ELEVATION = 89.9


@dataclass
class SphericalPoses:
    """A batch of cameras on spheres around the origin; all tensors have shape [B]."""

    elevation: Tensor  # degrees
    azimuth: Tensor  # degrees
    radius: Tensor

    def c2w(self) -> Tensor:
        """Camera-to-world matrices [B, 4, 4]."""
        return spherical_to_c2w(self.elevation, self.azimuth, self.radius)

    def __len__(self) -> int:
        return self.elevation.shape[0]


def camera_centre(elevation_deg: Tensor, azimuth_deg: Tensor, radius: Tensor) -> Tensor:
    """Cartesian camera centre [..., 3] of spherical coordinates (degrees, scene units)."""
    elev = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float32))
    azim = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float32, device=elev.device))
    r = torch.as_tensor(radius, dtype=torch.float32, device=elev.device)
    elev, azim, r = torch.broadcast_tensors(elev, azim, r)
    return torch.stack(
        [r * torch.cos(elev) * torch.cos(azim), r * torch.cos(elev) * torch.sin(azim), r * torch.sin(elev)],
        dim=-1,
    )


def look_at(centre: Tensor, target: Tensor | None = None) -> Tensor:
    """Camera-to-world [..., 4, 4] of cameras at `centre` [..., 3] looking at `target` (origin).

    Up is +z; the camera's −z axis points at the target (OpenGL).
    """
    if target is None:
        target = torch.zeros_like(centre)
    forward = torch.nn.functional.normalize(target - centre, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0], device=centre.device, dtype=centre.dtype).expand_as(forward)
    right = torch.nn.functional.normalize(torch.cross(forward, world_up, dim=-1), dim=-1)
    up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(*centre.shape[:-1], 4, 4, device=centre.device, dtype=centre.dtype)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = up
    c2w[..., :3, 2] = -forward
    c2w[..., :3, 3] = centre
    c2w[..., 3, 3] = 1.0
    return c2w


def spherical_to_c2w(elevation_deg: Tensor, azimuth_deg: Tensor, radius: Tensor) -> Tensor:
    """(elevation°, azimuth°, radius) → camera-to-world [..., 4, 4] looking at the origin."""
    elevation_deg = torch.as_tensor(elevation_deg, dtype=torch.float32).clamp(-MAX_ELEVATION, MAX_ELEVATION)
    return look_at(camera_centre(elevation_deg, azimuth_deg, radius))


def c2w_to_spherical(c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of `spherical_to_c2w` on the camera centre: (elevation°, azimuth°, radius) [...]."""
    centre = c2w[..., :3, 3]
    radius = centre.norm(dim=-1)
    polar = torch.acos((centre[..., 2] / radius.clamp_min(1e-12)).clamp(-1.0, 1.0))
    azimuth = torch.atan2(centre[..., 1], centre[..., 0])
    return 90.0 - torch.rad2deg(polar), torch.rad2deg(azimuth), radius


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Focal length in pixels for a full horizontal field of view `fov_deg` over `width` pixels."""
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2)


def intrinsics(fov_deg: float, width: int, height: int | None = None) -> Tensor:
    """Pinhole matrix K [3, 3] (square pixels, principal point at the image centre)."""
    height = width if height is None else height
    f = focal_from_fov(fov_deg, width)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def camera_rays(c2w: Tensor, fov_deg: float, width: int, height: int | None = None) -> tuple[Tensor, Tensor]:
    """Rays through every pixel centre of each camera.

    Args:
        c2w: [B, 4, 4] camera-to-world matrices.
    Returns:
        rays_o: [B, H, W, 3] ray origins (the camera centre).
        rays_d: [B, H, W, 3] unit directions; depth along a ray is distance.
    """
    height = width if height is None else height
    f = focal_from_fov(fov_deg, width)
    device, dtype = c2w.device, c2w.dtype
    cols = (torch.arange(width, device=device, dtype=dtype) + 0.5 - width / 2) / f
    rows = (torch.arange(height, device=device, dtype=dtype) + 0.5 - height / 2) / f
    y, x = torch.meshgrid(-rows, cols, indexing="ij")  # image rows go down, camera +y goes up
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [H, W, 3]
    rays_d = torch.einsum("bij,hwj->bhwi", c2w[:, :3, :3], dirs_cam)
    rays_d = torch.nn.functional.normalize(rays_d, dim=-1)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def sample_poses(
    n: int,
    elevation_range: tuple[float, float],
    azimuth_range: tuple[float, float],
    radius_range: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    sampling: str = "elevation",
) -> SphericalPoses:
    """Draw `n` cameras in the given elevation (degrees), azimuth (degrees) and radius ranges.

    sampling "elevation": uniform in elevation degrees and azimuth degrees.
    sampling "reference": directions as the reference run's `pose.py` draws them — a point
        uniform in the cube [−1, 1]³, normalised (not uniform on the sphere: denser toward the
        cube's corners), kept when it falls in the elevation and azimuth ranges.
    The radius is uniform in `radius_range` either way.  The draws use `generator` on the CPU
    and reach `device` by a non-blocking copy, so sampling never waits for a GPU.
    """

    def uniform(lo: float, hi: float, shape: tuple[int, ...] = (n,)) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    elevation, azimuth = uniform(*elevation_range), uniform(*azimuth_range)
    radius = uniform(*radius_range)
    if sampling == "reference":
        elevation, azimuth = _reference_directions(n, elevation_range, azimuth_range, generator, elevation, azimuth)
    elif sampling != "elevation":
        raise ValueError(f"unknown camera sampling {sampling!r}")
    return SphericalPoses(*(x.to(device, non_blocking=True) for x in (elevation, azimuth, radius)))


def _reference_directions(
    n: int, elevation_range: tuple[float, float], azimuth_range: tuple[float, float],
    generator: torch.Generator | None, fallback_elevation: Tensor, fallback_azimuth: Tensor, n_candidates: int = 32,
) -> tuple[Tensor, Tensor]:
    """pose.py's rejection sampler, vectorised: the first accepted of `n_candidates` per camera.

    pose.py loops until a draw is accepted; a fixed number of candidates keeps the amount of
    randomness used per step constant (exact resumes).  With the default ranges about 60 % of
    candidates are accepted, so a camera without one (probability ≈ 0.4³²) takes the fallback draw.
    """
    v = torch.rand(n, n_candidates, 3, generator=generator) * 2 - 1
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    elevation = torch.rad2deg(torch.asin(v[..., 2].clamp(-1.0, 1.0)))
    azimuth = torch.rad2deg(torch.atan2(v[..., 1], v[..., 0]))
    (e_lo, e_hi), (a_lo, a_hi) = elevation_range, azimuth_range
    accepted = (elevation >= e_lo) & (elevation <= e_hi) & (((azimuth - a_lo) % 360 <= a_hi - a_lo) | (a_hi - a_lo >= 360))
    first = accepted.to(torch.uint8).argmax(dim=1)  # index of the first accepted candidate (0 if none)
    rows = torch.arange(n)
    found = accepted[rows, first]
    return (torch.where(found, elevation[rows, first], fallback_elevation),
            torch.where(found, azimuth[rows, first], fallback_azimuth))


def near_cameras(c2w: Tensor, offset: float, generator: torch.Generator | None = None) -> Tensor:
    """Cameras [B, 4, 4] whose centres are those of `c2w` moved by `offset` in a random direction.

    Each new camera looks at the origin again (the reference run's `sample_near_eye`: a uniformly
    random direction, norm 0.05 scene units).  The direction is drawn on the CPU from `generator`.
    """
    direction = torch.randn(c2w.shape[0], 3, generator=generator)
    direction = torch.nn.functional.normalize(direction, dim=-1).to(c2w.device, c2w.dtype, non_blocking=True)
    return look_at(c2w[:, :3, 3] + offset * direction)


def zero123_pose(src_c2w: Tensor, dst_c2w: Tensor) -> Tensor:
    """Zero-1-to-3 relative pose embedding of `dst` seen from `src`.

    Args:
        src_c2w, dst_c2w: [..., 4, 4] camera-to-world matrices (broadcast together).
    Returns:
        [..., 4] float tensor [Δpolar (radians), sin Δazimuth, cos Δazimuth, Δradius],
        destination minus source.
    """
    src_c2w, dst_c2w = torch.broadcast_tensors(src_c2w.float(), dst_c2w.float())
    src_elev, src_azim, src_r = c2w_to_spherical(src_c2w)
    dst_elev, dst_azim, dst_r = c2w_to_spherical(dst_c2w)
    d_polar = torch.deg2rad(src_elev - dst_elev)  # polar = 90° − elevation
    d_azim = torch.deg2rad(dst_azim - src_azim)
    return torch.stack([d_polar, torch.sin(d_azim), torch.cos(d_azim), dst_r - src_r], dim=-1)


def input_c2w(elevation_deg: float, radius: float, device: torch.device | str = "cpu") -> Tensor:
    """Camera-to-world [1, 4, 4] of the input view: (elevation_in, azimuth 0, radius R)."""
    return spherical_to_c2w(torch.tensor([elevation_deg]), torch.tensor([0.0]), torch.tensor([radius])).to(device)
