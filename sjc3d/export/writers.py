"""Mesh files: GLB, OBJ and PLY with per-vertex colours, written atomically.

Axes: sjc3d's world is z-up with the input camera on +x (DESIGN.md §3). glTF is y-up with the
asset's front facing +z (glTF 2.0 §3.4), and OBJ/PLY files are read y-up by most tools (Blender's
importer, the ground-truth meshes in shared/data). Every writer therefore maps a world point
(x, y, z) to the file point (y, z, x): world up +z becomes +y, the front (+x, the side the input
photo shows) becomes +z, and world +y becomes +x. It is a rotation (a cyclic permutation of the
axes, determinant +1: handedness and face winding are kept) and the exact inverse of the
mapping `priors.oracle.load_world_mesh` applies when it reads a y-up file, so an exported mesh
and the ground-truth file it was fitted to share one frame (`sjc3d eval` compares them as read).

Colours: GLB stores them as the COLOR_0 vertex attribute (unsigned bytes, normalised), OBJ as
the common `v x y z r g b` extension (floats in [0, 1]), PLY as uchar red/green/blue/alpha
vertex properties.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh

from sjc3d.atomic import atomic_path, atomic_write_text
from sjc3d.errors import InputError

MESH_SUFFIXES = (".glb", ".obj", ".ply")

# World (z-up, front +x) → file (y-up, front +z): (x, y, z) ↦ (y, z, x), homogeneous [4, 4].
WORLD_TO_FILE = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
FILE_TO_WORLD = WORLD_TO_FILE.T  # the inverse of a rotation is its transpose


def check_mesh_suffix(path: Path) -> str:
    """The lower-case suffix of `path`, or an InputError when it is not a supported format."""
    suffix = Path(path).suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"cannot write {path}: the mesh format must be one of {', '.join(MESH_SUFFIXES)}")
    return suffix


def colored_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> trimesh.Trimesh:
    """A trimesh with RGBA uint8 vertex colours from float colours [V, 3] in [0, 1]."""
    rgba = np.concatenate([np.clip(colors, 0, 1) * 255.0 + 0.5, np.full((len(colors), 1), 255.0)], 1)
    return trimesh.Trimesh(vertices, faces, vertex_colors=rgba.astype(np.uint8), process=False)


def _obj_text(mesh: trimesh.Trimesh) -> str:
    """OBJ with `v x y z r g b` lines; written here so the format is exactly the documented one."""
    colors = mesh.visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    out = io.StringIO()
    out.write("# sjc3d mesh: y-up, front +z; vertex colours as v x y z r g b\n")
    np.savetxt(out, np.concatenate([mesh.vertices, colors], 1), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    np.savetxt(out, mesh.faces + 1, fmt="f %d %d %d")
    return out.getvalue()


def write_mesh(mesh: trimesh.Trimesh, path: Path) -> Path:
    """Write a world-frame vertex-coloured mesh by `path`'s suffix (.glb, .obj, .ply); atomic.

    The file gets file axes (module docstring): (x, y, z) ↦ (y, z, x).
    """
    path = Path(path)
    suffix = check_mesh_suffix(path)
    out = mesh.copy()
    out.apply_transform(WORLD_TO_FILE)
    if suffix == ".obj":
        atomic_write_text(path, _obj_text(out))
        return path
    with atomic_path(path) as tmp:
        out.export(tmp, file_type=suffix[1:])
    return path
