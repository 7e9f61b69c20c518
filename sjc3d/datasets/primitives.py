"""Primitive solids as exact signed distance functions, in their own local frame.

Conventions
    Every primitive is centred at the local origin; the solids of revolution (cylinder, cone,
    torus, capsule) have their axis along local +z.  `distance(x, y, z)` takes the coordinates
    of N points as three tensors [N] and returns [N]: negative inside, positive outside, and
    equal to the Euclidean distance to the surface on both sides ("exact"), which is what
    sphere tracing needs in order to step safely and what makes `|∇sdf| = 1` usable for normals.
    Separate coordinate tensors keep every operation on contiguous memory (a column of an
    [N, 3] tensor is strided, and element-wise kernels on strided views are several times
    slower); `sdf(p)` is the same function on points [N, 3].

    `support(u)` is the support function h(u) = max_{x ∈ solid} ⟨u, x⟩ for unit vectors
    u [..., 3] (numpy): the extent of the solid's convex hull along u.  Evaluated at ±e_i it gives
    the exact axis-aligned box of a rotated primitive, which objects use to normalise
    themselves.  Each solid is a Minkowski sum of simple pieces (a box or segment, a disc, a
    ball), and the support of a Minkowski sum is the sum of the supports, which is how each
    formula below reads.

The solids of revolution are written as 2-D distances in the half-plane (ρ, z), ρ = √(x² + y²):
the nearest surface point of a point lies in the same half-plane through the axis.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor


def _axial(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|u_z|, √(1 − u_z²)) of unit vectors: the axial and radial parts of a direction."""
    uz = np.abs(u[..., 2])
    return uz, np.sqrt(np.clip(1.0 - uz**2, 0.0, None))


def _length(a: Tensor, b: Tensor) -> Tensor:
    """√(a² + b²) element-wise (torch.hypot is the careful version, and ~8× slower on CPU)."""
    return torch.sqrt(a * a + b * b)


def _rectangle(q0: Tensor, q1: Tensor) -> Tensor:
    """Exact distance to a centred rectangle from the folded offsets q = |coordinate| − half side.

    Outside, the distance is the length of the positive parts; inside, it is the largest
    (least negative) offset: the distance to the nearest side.
    """
    return _length(q0.clamp_min(0), q1.clamp_min(0)) + torch.maximum(q0, q1).clamp_max(0)


class _Shape:
    """Shared by the primitives: `sdf` on points [N, 3] from `distance` on coordinates."""

    def sdf(self, p: Tensor) -> Tensor:
        return self.distance(p[:, 0], p[:, 1], p[:, 2])


@dataclass(frozen=True)
class Sphere(_Shape):
    radius: float
    kind: ClassVar[str] = "sphere"

    def distance(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return torch.sqrt(x * x + y * y + z * z) - self.radius

    def support(self, u: np.ndarray) -> np.ndarray:
        return np.full(u.shape[:-1], self.radius)


@dataclass(frozen=True)
class Box(_Shape):
    """Axis-aligned box of half extents (hx, hy, hz), its edges rounded with radius `rounding`.

    The rounded box is the inner box (half extents − rounding) grown by a ball of radius
    `rounding`, so its outer half extents stay (hx, hy, hz).
    """

    hx: float
    hy: float
    hz: float
    rounding: float = 0.0
    kind: ClassVar[str] = "box"

    def distance(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        # The inner box's distance (as for a rectangle, in 3-D), minus the rounding radius.
        r = self.rounding
        qx, qy, qz = x.abs() - (self.hx - r), y.abs() - (self.hy - r), z.abs() - (self.hz - r)
        outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2 + qz.clamp_min(0) ** 2)
        inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
        return outside + inside - r

    def support(self, u: np.ndarray) -> np.ndarray:
        r = self.rounding
        inner = np.array([self.hx - r, self.hy - r, self.hz - r])
        return np.abs(u) @ inner + r


@dataclass(frozen=True)
class Cylinder(_Shape):
    """Capped cylinder of `radius` around z, from z = −half_height to +half_height."""

    radius: float
    half_height: float
    kind: ClassVar[str] = "cylinder"

    def distance(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return _rectangle(_length(x, y) - self.radius, z.abs() - self.half_height)  # a rectangle in (ρ, z)

    def support(self, u: np.ndarray) -> np.ndarray:
        uz, ur = _axial(u)
        return self.half_height * uz + self.radius * ur  # segment ⊕ disc


@dataclass(frozen=True)
class Cone(_Shape):
    """Capped cone (a frustum) around z: radius `bottom` at z = −half_height, `top` at +half_height.

    In the (ρ, z) half-plane it is a trapezoid: two cap segments and one slanted side.  The
    distance is the smallest distance to those three segments, negative when inside.
    """

    bottom: float
    top: float
    half_height: float
    kind: ClassVar[str] = "cone"

    def distance(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        rho, h = _length(x, y), self.half_height
        # Caps: segments from the axis to (bottom, −h) and (top, +h).
        d_bottom = _length((rho - self.bottom).clamp_min(0), z + h)
        d_top = _length((rho - self.top).clamp_min(0), z - h)
        # Side: the segment from a = (bottom, −h) to b = (top, +h); s is the projection parameter.
        ab_rho, ab_z = self.top - self.bottom, 2 * h
        s = (((rho - self.bottom) * ab_rho + (z + h) * ab_z) / (ab_rho**2 + ab_z**2)).clamp(0, 1)
        d_side = _length(rho - self.bottom - s * ab_rho, z + h - s * ab_z)
        unsigned = torch.minimum(torch.minimum(d_bottom, d_top), d_side)
        radius_at_z = self.bottom + (z + h) / (2 * h) * ab_rho
        inside = (z.abs() <= h) & (rho <= radius_at_z)
        return torch.where(inside, -unsigned, unsigned)

    def support(self, u: np.ndarray) -> np.ndarray:
        # The hull of the two cap discs: the larger of the two discs' supports.
        _, ur = _axial(u)
        h_uz = self.half_height * u[..., 2]
        return np.maximum(-h_uz + self.bottom * ur, h_uz + self.top * ur)


@dataclass(frozen=True)
class Torus(_Shape):
    """Torus around z: a tube of radius `minor` swept along a circle of radius `major` in z = 0."""

    major: float
    minor: float
    kind: ClassVar[str] = "torus"

    def distance(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return _length(_length(x, y) - self.major, z) - self.minor  # a disc in (ρ, z)

    def support(self, u: np.ndarray) -> np.ndarray:
        _, ur = _axial(u)
        return self.major * ur + self.minor  # its hull is a disc ⊕ a ball


@dataclass(frozen=True)
class Capsule(_Shape):
    """Segment from z = −half_length to +half_length along z, grown by `radius`."""

    radius: float
    half_length: float
    kind: ClassVar[str] = "capsule"

    def distance(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        # Distance to the nearest point of the segment, minus the radius.
        axial = z - z.clamp(-self.half_length, self.half_length)
        return torch.sqrt(x * x + y * y + axial * axial) - self.radius

    def support(self, u: np.ndarray) -> np.ndarray:
        uz, _ = _axial(u)
        return self.half_length * uz + self.radius  # segment ⊕ ball


Primitive = Sphere | Box | Cylinder | Cone | Torus | Capsule
PRIMITIVES: dict[str, type] = {cls.kind: cls for cls in (Sphere, Box, Cylinder, Cone, Torus, Capsule)}


def primitive_to_dict(shape: Primitive) -> dict:
    return {"kind": shape.kind, **asdict(shape)}


def primitive_from_dict(data: dict) -> Primitive:
    """Inverse of `primitive_to_dict`; raises ValueError on a bad kind, field or size."""
    data = dict(data)
    cls = PRIMITIVES.get(data.pop("kind", None))
    if cls is None:
        raise ValueError(f"unknown primitive kind; expected one of {sorted(PRIMITIVES)}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    if not required <= set(data) <= names:
        raise ValueError(f"{cls.kind} expects fields {sorted(names)}, got {sorted(data)}")
    values = {k: float(v) for k, v in data.items()}
    if not all(np.isfinite(v) and v >= 0 for v in values.values()):
        raise ValueError(f"{cls.kind} sizes must be finite and non-negative, got {values}")
    return cls(**values)
