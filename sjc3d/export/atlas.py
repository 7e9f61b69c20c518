"""UV atlas: cut a mesh into charts and pack them into one square texture (xatlas).

Conventions
    uv       [V', 2] float in [0, 1], OpenGL/OBJ style: u to the right, v *up* from the bottom
             row of the image (trimesh's `TextureVisuals` uses the same). Texel (row i,
             column j) of an S×S image has its centre at u = (j + ½)/S, v = 1 − (i + ½)/S.
             glTF's TEXCOORD_0 has v down; writers.py converts.
    vertices An atlas splits the mesh along chart seams: a source vertex on a seam becomes one
             atlas vertex per chart. `vertex_map` [V'] gives each atlas vertex's source vertex;
             faces keep their order and winding (`vertex_map[faces] == source faces`).

xatlas (the C++ library behind most open texturing pipelines) is known to crash on some meshes
(a segmentation fault that would take the whole `sjc3d export` down with it). It therefore runs
in a child Python process (this file run as a script, `atlas.py IN OUT`): a crash there becomes an
`AtlasError`, a one-line error that says what to try.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sjc3d.errors import UserError

GUTTER = 4  # texels between charts (xatlas `padding`), room for dilation and bilinear filtering


class AtlasError(UserError):
    """The mesh could not be unwrapped into a texture atlas."""


@dataclass
class Atlas:
    vertex_map: np.ndarray  # [V'] int64, source vertex of each atlas vertex
    faces: np.ndarray  # [F, 3] int64, faces over the atlas vertices (source order and winding)
    uv: np.ndarray  # [V', 2] float64 in [0, 1], v up (module docstring)
    size: int  # the square texture's side S the charts were packed for


def _generate(vertices: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """xatlas in this process: (vertex_map, faces, uv normalised per axis, width, height)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)  # xatlas picks a texel density so the charts fill about this size
    pack.padding = GUTTER
    pack.bilinear = True  # keep a texel of clearance around each chart for bilinear lookups
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise AtlasError(f"xatlas packed the mesh into {atlas.atlas_count} atlases, not one")
    vertex_map, atlas_faces, uv = atlas[0]
    return vertex_map, atlas_faces, uv, int(atlas.width), int(atlas.height)


def square_uv(uv: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """xatlas's per-axis normalised uv on a width×height atlas → uv on an S×S texture.

    xatlas only approximates the requested size (e.g. 914×1196 for 1024). Scaling both axes by
    the same factor S/max(width, height) keeps texels square and the gutter ≥ GUTTER·S/max;
    the flip keeps xatlas's row y (counted down, as in its chart images) on the same image row
    while v counts up from the bottom.
    """
    scale = size / max(width, height)
    u = uv[:, 0] * width * scale / size
    v_down = uv[:, 1] * height * scale / size
    return np.stack([u, 1.0 - v_down], axis=1).astype(np.float64)


# The child runs this file as a script: `python -m sjc3d.export.atlas` would first import the
# sjc3d.export package, and with it torch (seconds of start-up for a sub-second job).
_CHILD = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int, timeout: float = 1800.0) -> Atlas:
    """Charts + packing for an S×S texture, computed by xatlas in a child process.

    Args:
        vertices: [V, 3] float; faces: [F, 3] int. size: the texture side S.
    Raises:
        AtlasError when xatlas is missing, crashes, fails or runs past `timeout` seconds.
    """
    with tempfile.TemporaryDirectory(prefix="sjc3d-atlas-") as folder:
        src, dst = Path(folder) / "mesh.npz", Path(folder) / "atlas.npz"
        np.savez(src, vertices=np.asarray(vertices), faces=np.asarray(faces), size=int(size))
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, __file__, str(src), str(dst)],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise AtlasError(
                f"xatlas took over {timeout:.0f} s to unwrap {len(faces)} faces; use --max-faces 20000 or --no-texture"
            ) from None
        if done.returncode != 0 or not dst.is_file():
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            if done.returncode < 0:
                last = f"crashed with signal {-done.returncode}"
            raise AtlasError(
                f"cannot unwrap the {len(faces)}-face mesh into a texture atlas (xatlas: {last}); "
                "try --max-faces 20000 or --no-texture"
            )
        with np.load(dst) as data:
            uv = square_uv(data["uv"], int(data["width"]), int(data["height"]), size)
            return Atlas(data["vertex_map"].astype(np.int64), data["faces"].astype(np.int64), uv, int(size))


def _main(argv: list[str]) -> int:
    """Child process: read mesh.npz, write atlas.npz (see `unwrap`)."""
    src, dst = Path(argv[0]), Path(argv[1])
    with np.load(src) as data:
        vertices, faces, size = data["vertices"], data["faces"], int(data["size"])
    try:
        vertex_map, atlas_faces, uv, width, height = _generate(vertices, faces, size)
    except ModuleNotFoundError:
        print("the xatlas package is not installed (pip install xatlas)", file=sys.stderr)
        return 3
    except AtlasError as e:
        print(str(e), file=sys.stderr)
        return 4
    np.savez(dst, vertex_map=vertex_map, faces=atlas_faces, uv=uv, width=width, height=height)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
