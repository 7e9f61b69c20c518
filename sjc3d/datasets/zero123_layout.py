"""The Zero-1-to-3 training-data layout, read as it is.

Layout
    ROOT/                       one subfolder per object (any name; hidden folders are skipped)
      OBJECT/000.png            the views: 8-bit RGBA, square, any size (the original: 256²)
      OBJECT/000.npy            float [3, 4] world-to-camera [R | t] of that view
      OBJECT/001.png, 001.npy ...   any number of views; other files are ignored

This is what Zero-1-to-3's Objaverse rendering script writes (Blender, 12 views an object):
the .npy is `get_3x4_RT_matrix_from_blender`, i.e. x_cam = R·x_world + t with Blender's camera
axes — OpenGL axes, as in sjc3d.cameras — in Blender's z-up world.  The camera centre is −Rᵀt,
and Zero-1-to-3's `get_T` takes the polar angle (from +z), azimuth (atan2(y, x)) and radius of
the centres, exactly as `sjc3d.cameras.zero123_pose` does on camera-to-world matrices; so
c2w = [[Rᵀ, −Rᵀt], [0, 1]] is all the conversion there is.

Decisions
    RGBA only: an RGB file is refused (the layout's background is transparent, and an RGB
    render's background colour cannot be known).  Views must be square (cameras have square
    pixels and `fov_deg` across the width) but sizes may differ: every view is resized to the
    requested size when loaded (area averaging when shrinking).  Objects may have different
    numbers of views; `ViewDataset` keeps them in one flat list with per-object offsets.

`scan` checks everything that is cheap up front — structure, every .npy, every PNG's header —
and `load_dataset` decodes the pixels, so a truncated PNG stops loading (before any training)
with the same kind of one-line `InputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sjc3d.errors import InputError
from sjc3d.image import resize_images

ROTATION_TOLERANCE = 1e-3  # ‖RᵀR − I‖∞ allowed in a .npy (stored in float32)


# --------------------------------------------------------------------------- pose conventions


def c2w_from_w2c(w2c: np.ndarray | Tensor) -> Tensor:
    """[..., 3|4, 4] world-to-camera [R | t] → camera-to-world [..., 4, 4] float32: [[Rᵀ, −Rᵀt], [0, 1]]."""
    w2c = torch.as_tensor(np.asarray(w2c), dtype=torch.float64)
    rotation_t = w2c[..., :3, :3].transpose(-1, -2)
    c2w = torch.zeros(*w2c.shape[:-2], 4, 4, dtype=torch.float64)
    c2w[..., :3, :3] = rotation_t
    c2w[..., :3, 3] = -(rotation_t @ w2c[..., :3, 3:])[..., 0]
    c2w[..., 3, 3] = 1.0
    return c2w.float()


def w2c_from_c2w(c2w: Tensor) -> np.ndarray:
    """Camera-to-world [..., 4, 4] → the layout's world-to-camera [..., 3, 4] float32 [R | t]."""
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    rotation = c2w[..., :3, :3].transpose(-1, -2)
    t = -(rotation @ c2w[..., :3, 3:])
    return torch.cat([rotation, t], dim=-1).numpy().astype(np.float32)


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class ObjectViews:
    """One object's views: `pngs[i]` pairs with `pngs[i].with_suffix('.npy')`."""

    object_id: str  # the folder's name
    folder: Path
    pngs: tuple[Path, ...]

    @property
    def poses(self) -> tuple[Path, ...]:
        return tuple(p.with_suffix(".npy") for p in self.pngs)


def _is_view(path: Path) -> bool:
    return path.suffix in (".png", ".npy") and path.stem.isdigit() and path.is_file()


def read_pose(path: Path) -> Tensor:
    """The camera-to-world [4, 4] of a view's .npy, refusing anything but a finite 3×4 [R | t]."""
    try:
        w2c = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read camera {path}: {type(e).__name__}") from None
    if w2c.shape != (3, 4) or not np.issubdtype(w2c.dtype, np.floating):
        raise InputError(f"camera {path} holds {w2c.dtype} {w2c.shape}; expected a float 3x4 world-to-camera [R|t]")
    if not np.isfinite(w2c).all():
        raise InputError(f"camera {path} holds non-finite values")
    rotation = w2c[:, :3].astype(np.float64)
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(rotation) < 0:
        raise InputError(f"camera {path}: the left 3x3 of [R|t] is not a rotation")
    return c2w_from_w2c(w2c)


def _check_png_header(path: Path) -> int:
    """The side of a square RGBA PNG, from its header alone (pixels are decoded later)."""
    try:
        with Image.open(path) as im:
            size, mode, fmt = im.size, im.mode, im.format
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read view {path}: {type(e).__name__}") from None
    if fmt != "PNG":
        raise InputError(f"view {path} is a {fmt} file, not a PNG")
    if mode != "RGBA":
        raise InputError(f"view {path} is {mode}; the layout needs RGBA with a transparent background")
    if size[0] != size[1]:
        raise InputError(f"view {path} is {size[0]}x{size[1]}; views must be square")
    return size[0]


def scan(root: str | Path) -> list[ObjectViews]:
    """Every object under `root`, sorted by name, checked up front (one-line InputErrors naming the file)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"data folder {root} is empty: expected one subfolder per object holding 000.png + 000.npy, ...")
    objects = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if _is_view(p))
        pngs = {p.stem: p for p in files if p.suffix == ".png"}
        npys = {p.stem: p for p in files if p.suffix == ".npy"}
        if not files:
            raise InputError(f"object folder {folder} holds no views (expected 000.png + 000.npy, ...)")
        lonely_png, lonely_npy = sorted(pngs.keys() - npys.keys()), sorted(npys.keys() - pngs.keys())
        if lonely_png:
            raise InputError(f"view {pngs[lonely_png[0]]} has no camera file {lonely_png[0]}.npy")
        if lonely_npy:
            raise InputError(f"camera {npys[lonely_npy[0]]} has no image {lonely_npy[0]}.png")
        for stem in sorted(pngs):
            _check_png_header(pngs[stem])
            read_pose(npys[stem])
        objects.append(ObjectViews(folder.name, folder, tuple(pngs[s] for s in sorted(pngs, key=int))))
    return objects


# --------------------------------------------------------------------------- loading


def read_rgba(path: Path) -> np.ndarray:
    """[H, W, 4] uint8 pixels of a view; a truncated or corrupt file is an InputError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGBA":
                raise InputError(f"view {path} is {im.mode}; the layout needs RGBA with a transparent background")
            return np.asarray(im).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"cannot read view {path}: {type(e).__name__}: {e}") from None


def composite_rgba(rgba: np.ndarray, size: int) -> Tensor:
    """uint8 RGBA [H, W, 4] → float RGB [size, size, 3] on white.

    True alpha compositing, c·α + (1 − α), before resizing (compositing is linear, so this equals
    resizing the premultiplied image).  The original loader instead paints only the fully
    transparent pixels white and keeps the RGB of semi-transparent edge pixels as they are.
    """
    x = torch.from_numpy(rgba).float() / 255.0
    rgb = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    return resize_images(rgb[None], size)[0].clamp(0.0, 1.0)


def load_view(path: str | Path, size: int) -> tuple[Tensor, Tensor]:
    """One view: (rgb [size, size, 3] float in [0, 1] on white, c2w [4, 4]) from NNN.png + NNN.npy."""
    path = Path(path)
    return composite_rgba(read_rgba(path), size), read_pose(path.with_suffix(".npy"))


@dataclass
class ViewDataset:
    """A whole dataset in memory, compactly; object i owns views offsets[i]:offsets[i + 1].

    images: [n_views_total, S, S, 3] uint8, composited on white.
    c2w:    [n_views_total, 4, 4] float32 camera-to-world (sjc3d convention).
    """

    images: Tensor
    c2w: Tensor
    offsets: Tensor  # [n_objects + 1] long
    names: list[str]  # the objects' folder names

    def __len__(self) -> int:
        return len(self.names)

    def views_of(self, index: int) -> tuple[Tensor, Tensor]:
        """(images [V, S, S, 3] uint8, c2w [V, 4, 4]) of object `index`."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.images[start:stop], self.c2w[start:stop]


def load_dataset(root: str | Path, size: int, progress: bool = False) -> ViewDataset:
    """Scan `root` and load every view at `size`² (see the module docstring for the checks)."""
    from sjc3d.progress import ProgressBar

    objects = scan(root)
    n_views = [len(o.pngs) for o in objects]
    offsets = torch.tensor([0, *np.cumsum(n_views)], dtype=torch.long)
    images = torch.empty(int(offsets[-1]), size, size, 3, dtype=torch.uint8)
    c2w = torch.empty(int(offsets[-1]), 4, 4)
    bar = ProgressBar(len(objects), "loading views", log_every=max(1, len(objects) // 10), enabled=progress)
    for i, obj in enumerate(objects):
        for j, png in enumerate(obj.pngs):
            rgb, pose = load_view(png, size)
            images[offsets[i] + j] = (rgb * 255.0 + 0.5).to(torch.uint8)
            c2w[offsets[i] + j] = pose
        bar.advance()
    bar.close()
    return ViewDataset(images, c2w, offsets, [o.object_id for o in objects])


# --------------------------------------------------------------------------- writing


def write_view(folder: str | Path, index: int, rgba: Tensor | np.ndarray, c2w: Tensor) -> Path:
    """Write view `index` of an object: NNN.png (8-bit RGBA [S, S, 4]) + NNN.npy (3×4 [R | t]).

    Plain writes: write into a folder no reader sees yet and rename it into place when the
    object is complete, as make-views does (datasets/make_views.py `write_object`).
    """
    folder = Path(folder)
    array = rgba.detach().cpu().numpy() if isinstance(rgba, Tensor) else np.asarray(rgba)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{index:03d}.png"
    Image.fromarray(array, mode="RGBA").save(png, format="PNG")
    np.save(folder / f"{index:03d}.npy", w2c_from_c2w(c2w))
    return png
