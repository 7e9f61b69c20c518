"""Procedural objects: unions of 1–4 placed primitives, each with its own material.

A `Part` is a primitive (sjc3d/datasets/primitives.py) placed in the world by a similarity:
x_world = translation + scale · rotation · x_local.  Its signed distance is therefore
sdf_world(x) = scale · sdf_local(rotationᵀ (x − translation) / scale) — still exact, because a
similarity scales every distance by the same factor.

A `ProceduralObject` is the union of its parts: sdf = min over parts.  The minimum of exact
distances is the exact distance *outside* the union (what sphere tracing needs) and has the
right sign everywhere; inside, where parts overlap, it can underestimate the depth, which no
consumer here relies on.  A surface point takes the material of the part whose surface it is:
the part with the smallest distance there.

World conventions follow sjc3d (DESIGN.md §3): z up, objects normalised like Objaverse ones and
like `priors.oracle.load_world_mesh` — bounding box centred at the origin, longest side 1.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from sjc3d.datasets.materials import Material
from sjc3d.datasets.primitives import (
    Box, Capsule, Cone, Cylinder, Primitive, Sphere, Torus, primitive_from_dict, primitive_to_dict,
)

FORMAT = "sjc3d.procedural_object"
FORMAT_VERSION = 1
OBJECT_SIZE = 1.0  # longest side of the bounding box (priors/oracle.py ORACLE_SIZE)
_CHUNK = 1 << 20  # points per SDF evaluation in `mesh` / `contains`
_AXES = np.eye(3)


Coordinates = tuple[Tensor, Tensor, Tensor]  # x, y, z of N points, each [N]


def coordinates(points: Tensor) -> Coordinates:
    """Points [N, 3] → (x, y, z), each contiguous [N] (free when `points` is a transposed [3, N])."""
    return tuple(points.T.contiguous().unbind(0))  # type: ignore[return-value]


@dataclass(frozen=True)
class Part:
    """A primitive placed by x_world = translation + scale · rotation · x_local."""

    shape: Primitive
    material: Material
    rotation: tuple[tuple[float, float, float], ...]  # 3×3, local → world, rows
    translation: tuple[float, float, float]
    scale: float = 1.0

    @functools.cached_property
    def _inverse(self) -> tuple[list[list[float]], list[float]]:
        """(A, b) of the world → local map x_local = A·x + b, as floats: A = Rᵀ/s, b = −Rᵀt/s."""
        rotation_t = np.asarray(self.rotation).T
        return (rotation_t / self.scale).tolist(), (-(rotation_t @ np.asarray(self.translation)) / self.scale).tolist()

    def local_coordinates(self, xyz: Coordinates) -> Coordinates:
        """World coordinates (x, y, z), each [N], → local ones.

        Written out as scalar multiply-adds, skipping zero coefficients: for 3×3 matrices that
        is faster than a matrix product on CPU, and upright parts have four zeros out of nine.
        """
        a, b = self._inverse
        local = []
        for row, offset in zip(a, b):
            terms = [(c, v) for c, v in zip(row, xyz) if c != 0.0]
            acc = terms[0][1] * terms[0][0]
            for c, v in terms[1:]:
                acc.add_(v, alpha=c)
            local.append(acc.add_(offset))
        return tuple(local)

    def distance(self, xyz: Coordinates) -> Tensor:
        """[N] exact signed distance at world coordinates (x, y, z), each [N]."""
        return self.shape.distance(*self.local_coordinates(xyz)).mul_(self.scale)

    def sdf(self, points: Tensor) -> Tensor:
        """[N] exact signed distance of world points [N, 3]."""
        return self.distance(coordinates(points))

    def to_local(self, points: Tensor) -> Tensor:
        """World points [N, 3] → local points [N, 3]."""
        return torch.stack(self.local_coordinates(coordinates(points)), dim=-1)

    def support(self, u: np.ndarray) -> np.ndarray:
        """Support function along world unit vectors u [..., 3] (see primitives.py)."""
        rotation = np.asarray(self.rotation)
        return self.scale * self.shape.support(u @ rotation) + u @ np.asarray(self.translation)

    def moved(self, offset: np.ndarray, factor: float) -> "Part":
        """This part after the world map x → (x + offset) · factor."""
        t = (np.asarray(self.translation) + offset) * factor
        return Part(self.shape, self.material, self.rotation, _vec(t), self.scale * factor)

    def to_dict(self) -> dict:
        return {"shape": primitive_to_dict(self.shape), "material": self.material.to_dict(),
                "rotation": [list(row) for row in self.rotation], "translation": list(self.translation),
                "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> "Part":
        rotation = np.asarray(data["rotation"], dtype=np.float64)
        if rotation.shape != (3, 3) or not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) \
                or np.linalg.det(rotation) < 0:
            raise ValueError("a part's rotation must be a 3x3 rotation matrix")
        translation = np.asarray(data["translation"], dtype=np.float64)
        scale = float(data["scale"])
        if translation.shape != (3,) or not np.isfinite(translation).all() or not (np.isfinite(scale) and scale > 0):
            raise ValueError("a part needs a finite translation [3] and a positive scale")
        return cls(primitive_from_dict(data["shape"]), Material.from_dict(data["material"]), _mat(rotation),
                   _vec(translation), scale)


def _vec(v) -> tuple[float, float, float]:
    return tuple(float(x) for x in v)  # type: ignore[return-value]


def _mat(m) -> tuple[tuple[float, float, float], ...]:
    return tuple(_vec(row) for row in np.asarray(m))


@dataclass(frozen=True)
class ProceduralObject:
    """The union of `parts` (world frame, z up)."""

    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("an object needs at least one part")

    # ---------------------------------------------------------------- geometry

    def part_sdfs(self, points: Tensor) -> Tensor:
        """[N, P] signed distance of world points [N, 3] to each part."""
        xyz = coordinates(points)
        return torch.stack([part.distance(xyz) for part in self.parts], dim=-1)

    def sdf(self, points: Tensor) -> Tensor:
        """[N] signed distance to the union (exact outside, correctly signed everywhere)."""
        xyz = coordinates(points)
        distance = self.parts[0].distance(xyz)
        for part in self.parts[1:]:
            distance = torch.minimum(distance, part.distance(xyz))
        return distance

    @torch.no_grad()
    def contains(self, points: Tensor) -> Tensor:
        """[N] bool occupancy of world points [N, 3] (sdf < 0)."""
        return torch.cat([self.sdf(chunk) < 0 for chunk in points.split(_CHUNK)]) if len(points) else \
            torch.zeros(0, dtype=torch.bool)

    def surface(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Albedo [N, 3] and material label [N] (long) at world points [N, 3] on the surface.

        A point takes the material of the nearest part.  The label tells materials apart:
        2·part + 1 where the part's pattern shows its second colour, 2·part elsewhere.
        """
        owner = self.part_sdfs(points).argmin(dim=-1)
        colors = torch.empty(points.shape[0], 3, dtype=points.dtype, device=points.device)
        labels = 2 * owner
        for index, part in enumerate(self.parts):
            mine = owner == index
            if mine.any():
                local = part.to_local(points[mine])
                colors[mine] = part.material.albedo(local)
                labels[mine] += part.material.second_color_mask(local).long()
        return colors, labels

    def albedo(self, points: Tensor) -> Tensor:
        """[N, 3] albedo at world points [N, 3] on (or near) the surface: the nearest part's material."""
        return self.surface(points)[0]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact axis-aligned box (lo [3], hi [3]) of the union, from the parts' support functions."""
        hi = np.max([part.support(_AXES) for part in self.parts], axis=0)
        lo = -np.max([part.support(-_AXES) for part in self.parts], axis=0)
        return lo, hi

    def normalized(self, size: float = OBJECT_SIZE) -> "ProceduralObject":
        """The object moved and scaled so that its box is centred at the origin, longest side `size`."""
        lo, hi = self.bounds()
        factor = size / float((hi - lo).max())
        return ProceduralObject(tuple(part.moved(-(lo + hi) / 2, factor) for part in self.parts))

    # ---------------------------------------------------------------- truth mesh

    @torch.no_grad()
    def mesh(self, resolution: int = 128) -> trimesh.Trimesh:
        """Marching-cubes mesh of the union's outer surface, vertex colours = albedo (world frame).

        The grid has `resolution` cells across the box's longest side and two cells of margin on
        every side, so the surface never touches the grid's border and the mesh is closed.
        """
        import mcubes

        lo, hi = self.bounds()
        step = float((hi - lo).max()) / resolution
        counts = np.ceil((hi - lo) / step).astype(int) + 5  # + 2 cells margin each side, + 1 corner
        origin = (lo + hi) / 2 - step * (counts - 1) / 2
        axes = [torch.from_numpy(origin[k] + step * np.arange(counts[k])).float() for k in range(3)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        distance = torch.cat([self.sdf(chunk) for chunk in grid.split(_CHUNK)]).reshape(*counts)
        # mcubes orients faces so that larger values are inside: feed it −sdf.
        vertices, faces = mcubes.marching_cubes(-distance.numpy().astype(np.float64), 0.0)
        vertices = origin + vertices * step
        colors = self.albedo(torch.from_numpy(vertices).float()).clamp(0, 1).numpy()
        rgba = np.concatenate([np.round(colors * 255), np.full((len(vertices), 1), 255)], axis=1).astype(np.uint8)
        return trimesh.Trimesh(vertices, faces.astype(np.int64), vertex_colors=rgba, process=False)

    # ---------------------------------------------------------------- description

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "parts": [part.to_dict() for part in self.parts]}

    @classmethod
    def from_dict(cls, data: dict) -> "ProceduralObject":
        """Rebuild an object from `to_dict` output; ValueError/KeyError on a malformed description."""
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} version {FORMAT_VERSION} description")
        return cls(tuple(Part.from_dict(part) for part in data["parts"]))


# =============================================================================== sampling
#
# The sampler builds an object part by part: the first part sits at the origin; each further
# part is attached to a random earlier one at a point of its surface, pushed part-way in along
# the surface normal, so that parts overlap (never float apart) yet stick out (never vanish
# inside the others).  Both properties are checked by Monte Carlo and a candidate that fails is
# drawn again.  Objaverse objects mostly stand upright, so parts are upright or lying on their
# side more often than freely rotated, and stacking along z is favoured.

PART_COUNT_WEIGHTS = {1: 0.25, 2: 0.3, 3: 0.25, 4: 0.2}  # single primitives and 2–4-part compositions
PATTERN_WEIGHTS = {"plain": 0.45, "stripes": 0.15, "checker": 0.1, "split": 0.15, "dots": 0.15}
CHILD_SCALE = (0.35, 0.8)  # an attached part's scale relative to the first part
MIN_OVERLAP = 0.03  # share of a new part's volume that must lie inside its parent
MIN_EXPOSED = 0.5  # share of a new part's volume that must lie outside the object so far
_ATTEMPTS = 24  # candidates per attached part before settling for fewer parts
_MC_POINTS = 2048


def sample_primitive(rng: np.random.Generator) -> Primitive:
    """A random primitive, about one unit across (its part's scale sets the final size)."""
    u = rng.uniform
    kind = str(rng.choice(["sphere", "box", "cylinder", "cone", "torus", "capsule"]))
    if kind == "sphere":
        return Sphere(u(0.35, 0.5))
    if kind == "box":
        h = u(0.15, 0.5, size=3)
        rounding = u(0.1, 0.9) * h.min() if rng.random() < 0.5 else 0.0
        return Box(*map(float, h), rounding=float(rounding))
    if kind == "cylinder":
        return Cylinder(u(0.15, 0.5), u(0.1, 0.5))
    if kind == "cone":
        bottom = u(0.25, 0.5)
        return Cone(bottom, 0.0 if rng.random() < 0.4 else bottom * u(0.2, 0.7), u(0.2, 0.5))
    if kind == "torus":
        major = u(0.28, 0.4)
        return Torus(major, major * u(0.25, 0.5))
    return Capsule(u(0.12, 0.3), u(0.1, 0.4))


def sample_color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated enough albedo: never close to the white background."""
    return _vec(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.45, 0.95)))


def sample_material(rng: np.random.Generator, color: tuple[float, float, float] | None = None) -> Material:
    color = sample_color(rng) if color is None else color
    pattern = str(rng.choice(list(PATTERN_WEIGHTS), p=list(PATTERN_WEIGHTS.values())))
    if pattern == "plain":
        return Material(color)
    h, s, v = colorsys.rgb_to_hsv(*color)  # second colour: another hue, or the same hue darker
    if rng.random() < 0.6:
        color2 = colorsys.hsv_to_rgb((h + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.3, 0.9), rng.uniform(0.45, 0.95))
    else:
        color2 = colorsys.hsv_to_rgb(h, s, v * rng.uniform(0.3, 0.55))
    frequency = {"stripes": rng.uniform(1.5, 3.5), "checker": rng.uniform(2.0, 3.5), "dots": rng.uniform(3.0, 5.0)}
    return Material(color, pattern, _vec(color2), float(frequency.get(pattern, 1.0)), int(rng.integers(3)))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """[3, 3] rotation uniform on SO(3) (a normalised Gaussian quaternion)."""
    w, x, y, z = rng.standard_normal(4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_taking_z_to(direction: np.ndarray, roll: float) -> np.ndarray:
    """[3, 3] rotation mapping local +z onto the unit `direction`, turned by `roll` about it."""
    z = direction / np.linalg.norm(direction)
    helper = _AXES[np.argmin(np.abs(z))]  # the world axis least parallel to z
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1) @ rotation_z(roll)


def sample_orientation(rng: np.random.Generator, axis: np.ndarray | None = None) -> np.ndarray:
    """Upright (spun about z), lying on its side, along `axis` (a surface normal) or free."""
    roll = rng.uniform(0, 2 * np.pi)
    r = rng.random()
    if axis is not None and r < 0.5:
        return rotation_taking_z_to(axis, roll)
    if r < 0.75:
        return rotation_z(roll)
    if r < 0.9:
        return rotation_z(roll) @ rotation_taking_z_to(_AXES[0], 0.0)
    return random_rotation(rng)


def _gradient(part: Part, x: Tensor, h: float = 1e-4) -> Tensor:
    """[N, 3] unit gradient of a part's SDF at points [N, 3], by central differences."""
    offsets = torch.eye(3, dtype=x.dtype) * h
    g = torch.stack([part.sdf(x + o) - part.sdf(x - o) for o in offsets], dim=-1)
    return torch.nn.functional.normalize(g, dim=-1)


def surface_point(part: Part, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A point of `part`'s surface roughly in `direction` from its centre, and the normal there.

    Start on the convex hull in that direction and step to the nearest surface point
    (x ← x − sdf(x)·∇sdf(x); one step is exact for an exact SDF away from its medial axis).
    """
    centre = np.asarray(part.translation)
    reach = float(part.support(direction)) - float(direction @ centre)  # hull extent from the centre
    x = torch.tensor(centre + direction * reach, dtype=torch.float64)[None]
    for _ in range(3):
        x = x - part.sdf(x)[:, None] * _gradient(part, x)
    return x[0].numpy(), _gradient(part, x)[0].numpy()


def _attach(rng: np.random.Generator, parts: list[Part], base_scale: float) -> Part | None:
    """One candidate part attached to a random earlier part, or None when it fails the checks."""
    parent = parts[int(rng.integers(len(parts)))]
    if rng.random() < 0.4:
        direction = np.array([0.0, 0.0, 1.0 if rng.random() < 0.75 else -1.0])  # stacking
    else:
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
    anchor, normal = surface_point(parent, direction)
    shape, rotation = sample_primitive(rng), sample_orientation(rng, normal)
    scale = base_scale * rng.uniform(*CHILD_SCALE)
    probe = Part(shape, sample_material(rng), _mat(rotation), (0.0, 0.0, 0.0), scale)
    depth = float(probe.support(-normal))  # the part's extent behind its centre, along −normal
    centre = anchor + normal * depth * rng.uniform(0.1, 0.7)
    child = Part(shape, probe.material, probe.rotation, _vec(centre), scale)
    return child if _overlaps_and_shows(rng, child, parent, parts) else None


def _overlaps_and_shows(rng: np.random.Generator, child: Part, parent: Part, parts: list[Part]) -> bool:
    """Monte Carlo over the child's box: enough of it inside the parent, enough of it outside all."""
    hi, lo = child.support(_AXES), -child.support(-_AXES)
    points = torch.from_numpy(rng.uniform(lo, hi, size=(_MC_POINTS, 3))).float()
    inside = child.sdf(points) < 0
    n_inside = int(inside.sum())
    if n_inside < 64:
        return False
    in_parent = (parent.sdf(points) < 0) & inside
    outside_all = ProceduralObject(tuple(parts)).sdf(points) > 0
    return in_parent.sum() >= MIN_OVERLAP * n_inside and (outside_all & inside).sum() >= MIN_EXPOSED * n_inside


def sample_object(rng: np.random.Generator, n_parts: int | None = None) -> ProceduralObject:
    """A random object of `n_parts` (default: 1–4 by PART_COUNT_WEIGHTS), normalised to unit size.

    Deterministic for a given generator state.  If no valid place is found for a part within
    a number of attempts, the object keeps the parts it has.
    """
    if n_parts is None:
        n_parts = int(rng.choice(list(PART_COUNT_WEIGHTS), p=list(PART_COUNT_WEIGHTS.values())))
    same_color = rng.random() < 0.25  # some objects are one colour throughout
    first = Part(sample_primitive(rng), sample_material(rng), _mat(sample_orientation(rng)), (0.0, 0.0, 0.0), 1.0)
    parts = [first]
    while len(parts) < n_parts:
        for _ in range(_ATTEMPTS):
            child = _attach(rng, parts, first.scale)
            if child is not None:
                if same_color:
                    child = Part(child.shape, Material(first.material.color), child.rotation, child.translation,
                                 child.scale)
                parts.append(child)
                break
        else:
            break
    return ProceduralObject(tuple(parts)).normalized()
