"""Make `assets/toy.obj`, the demo object sjc3d ships: a small coloured snowman.

Built as a signed distance field (smooth union of spheres, a cone and a cylinder) and meshed
with marching cubes, so it is one watertight surface — volume IoU against it is well defined.
Written y-up with the front (the carrot nose) toward +z, the usual OBJ convention; vertex
colours are stored as `v x y z r g b`.  Run: python assets/make_toy.py
"""

from __future__ import annotations

from pathlib import Path

import mcubes
import numpy as np
import trimesh

RESOLUTION = 72
HERE = Path(__file__).resolve().parent


def sphere(p: np.ndarray, centre, radius: float) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(centre), axis=-1) - radius


def capped_cylinder_y(p: np.ndarray, centre, radius: float, half_height: float) -> np.ndarray:
    q = p - np.asarray(centre)
    d = np.stack([np.hypot(q[..., 0], q[..., 2]) - radius, np.abs(q[..., 1]) - half_height], -1)
    outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
    return outside + np.minimum(d.max(-1), 0.0)


def cone_z(p: np.ndarray, tip, base_z: float, radius: float) -> np.ndarray:
    """A cone along +z from base (z = base_z) to its tip; approximate but continuous distance."""
    q = p - np.asarray(tip)
    length = tip[2] - base_z
    t = np.clip(-q[..., 2] / length, 0.0, 1.0)  # 0 at the tip, 1 at the base
    r = np.hypot(q[..., 0], q[..., 1])
    side = (r - radius * t) * np.cos(np.arctan2(radius, length))
    return np.maximum(side, np.maximum(q[..., 2], -q[..., 2] - length))


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


PARTS = {  # name: (signed distance function, colour)
    "body": (lambda p: sphere(p, (0, -0.30, 0), 0.36), (0.55, 0.75, 0.95)),
    "head": (lambda p: sphere(p, (0, 0.16, 0), 0.24), (0.95, 0.70, 0.75)),
    "nose": (lambda p: cone_z(p, (0, 0.17, 0.42), 0.18, 0.06), (1.00, 0.50, 0.10)),
    "hat": (lambda p: capped_cylinder_y(p, (0, 0.44, 0), 0.15, 0.10), (0.15, 0.15, 0.20)),
    "brim": (lambda p: capped_cylinder_y(p, (0, 0.35, 0), 0.24, 0.02), (0.15, 0.15, 0.20)),
}


def make_toy() -> trimesh.Trimesh:
    axis = np.linspace(-0.75, 0.75, RESOLUTION)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    distances = {name: f(grid) for name, (f, _) in PARTS.items()}
    sdf = smooth_union(distances["body"], distances["head"], 0.06)
    for name in ("nose", "hat", "brim"):
        sdf = np.minimum(sdf, distances[name])
    vertices, faces = mcubes.marching_cubes(-sdf, 0.0)
    vertices = vertices / (RESOLUTION - 1) * 1.5 - 0.75
    at_vertex = {name: f(vertices) for name, (f, _) in PARTS.items()}
    nearest = np.argmin(np.stack(list(at_vertex.values()), -1), axis=-1)
    palette = np.array([c for _, c in PARTS.values()])
    colors = (palette[nearest] * 255).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=True)
    return mesh


if __name__ == "__main__":
    mesh = make_toy()
    out = HERE / "toy.obj"
    out.write_text(
        "# sjc3d demo object (assets/make_toy.py): y-up, vertex colours\n"
        + "".join(f"v {x:.4f} {y:.4f} {z:.4f} {r / 255:.3f} {g / 255:.3f} {b / 255:.3f}\n"
                  for (x, y, z), (r, g, b) in zip(mesh.vertices, mesh.visual.vertex_colors[:, :3]))
        + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in mesh.faces)
    )
    print(f"wrote {out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, watertight={mesh.is_watertight}")
