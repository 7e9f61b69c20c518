"""Mesh files: GLB, OBJ and PLY with vertex colours or a colour texture, written atomically.

Axes: sjc3d's world is z-up with the input camera on +x (DESIGN.md §3). glTF is y-up with the
asset's front facing +z (glTF 2.0 §3.4), and OBJ/PLY files are read y-up by most tools (Blender's
importer, the ground-truth meshes in shared/data). Every writer therefore maps a world point
(x, y, z) to the file point (y, z, x): world up +z becomes +y, the front (+x, the side the input
photo shows) becomes +z, and world +y becomes +x. It is a rotation (a cyclic permutation of the
axes, determinant +1: handedness and face winding are kept) and the exact inverse of the
mapping `priors.oracle.load_world_mesh` applies when it reads a y-up file, so an exported mesh
and the ground-truth file it was fitted to share one frame (`sjc3d eval` compares them as read).

Colours: display (sRGB-encoded) values in [0, 1] throughout the engine. GLB stores vertex
colours as the linear COLOR_0 attribute and a texture as an sRGB PNG with an unlit material
(gltf.py says why); OBJ stores vertex colours as the common `v x y z r g b` extension and a
texture as `map_Kd` of a material in `<stem>.mtl`, the PNG beside it; PLY stores uchar
red/green/blue/alpha vertex properties (no texture: PLY has no standard for one). Every format
carries vertex normals (`seam_vertex_normals`: continuous across texture seams).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh

from sjc3d.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from sjc3d.errors import InputError
from sjc3d.export.gltf import glb_bytes
from sjc3d.export.texture import seam_vertex_normals, texture_array

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


def is_textured(mesh: trimesh.Trimesh) -> bool:
    """Whether `mesh` carries uv and a texture image (else it has vertex colours)."""
    return mesh.visual.kind == "texture" and getattr(mesh.visual, "uv", None) is not None


def texture_paths(obj_path: Path) -> tuple[Path, Path]:
    """(MTL, PNG) written beside a textured OBJ: `<stem>.mtl` and `<stem>_texture.png`."""
    obj_path = Path(obj_path)
    return obj_path.with_suffix(".mtl"), obj_path.with_name(f"{obj_path.stem}_texture.png")


def _png_bytes(texture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(texture, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _obj_text(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, colors=None, uv=None, mtl=None) -> str:
    """OBJ text (written here so the format is exactly the documented one).

    Vertex colours as `v x y z r g b`; a texture as `vt` lines and `usemtl` of the MTL file.
    Positions, normals and uv share one index per atlas vertex: `f a/a/a b/b/b c/c/c`.
    """
    out = io.StringIO()
    out.write("# sjc3d mesh: y-up, front +z\n")
    if mtl is not None:
        out.write(f"mtllib {mtl}\nusemtl sjc3d\n")
    if colors is not None:
        np.savetxt(out, np.concatenate([vertices, colors], 1), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(out, vertices, fmt="v %.6f %.6f %.6f")
    if uv is not None:
        np.savetxt(out, uv, fmt="vt %.6f %.6f")  # OBJ's v is up, like sjc3d's uv
    np.savetxt(out, normals, fmt="vn %.5f %.5f %.5f")
    index = np.repeat(faces + 1, 3 if uv is not None else 2, axis=1)
    np.savetxt(out, index, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d" if uv is not None else "f %d//%d %d//%d %d//%d")
    return out.getvalue()


def _mtl_text(png_name: str) -> str:
    # illum 0 = "colour on, ambient off": Kd × map_Kd shown as it is, like glTF's unlit material.
    return (
        "# sjc3d material: an unlit colour texture (sRGB PNG)\n"
        "newmtl sjc3d\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 0\n"
        f"map_Kd {png_name}\n"
    )


def write_mesh(mesh: trimesh.Trimesh, path: Path) -> Path:
    """Write a world-frame mesh by `path`'s suffix (.glb, .obj, .ply); atomic.

    The mesh carries either vertex colours (`colored_mesh`) or uv + a texture
    (`texture.textured_mesh`). The file gets file axes (module docstring): (x, y, z) ↦ (y, z, x).
    A textured OBJ also writes `texture_paths(path)`, the PNG and the MTL first, so the OBJ
    never names a file that is not there. Returns `path`.
    """
    path = Path(path)
    suffix = check_mesh_suffix(path)
    textured = is_textured(mesh)
    if textured and suffix == ".ply":
        raise InputError(f"cannot write a texture to {path}: PLY has none; use .glb or .obj, or --no-texture")
    vertices = trimesh.transform_points(np.asarray(mesh.vertices, dtype=np.float64), WORLD_TO_FILE)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    normals = seam_vertex_normals(vertices, faces)
    colors = None if textured else mesh.visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    uv = np.asarray(mesh.visual.uv, dtype=np.float64) if textured else None
    if suffix == ".glb":
        png = _png_bytes(texture_array(mesh)) if textured else None
        atomic_write_bytes(path, glb_bytes(vertices, faces, normals, colors, uv, png))
    elif suffix == ".obj":
        mtl = None
        if textured:
            mtl_path, png_path = texture_paths(path)
            atomic_write_bytes(png_path, _png_bytes(texture_array(mesh)))
            atomic_write_text(mtl_path, _mtl_text(png_path.name))
            mtl = mtl_path.name
        atomic_write_text(path, _obj_text(vertices, faces, normals, colors, uv, mtl))
    else:
        out = trimesh.Trimesh(vertices, faces, vertex_normals=normals, vertex_colors=mesh.visual.vertex_colors, process=False)
        with atomic_path(path) as tmp:
            out.export(tmp, file_type="ply", vertex_normal=True)
    return path
