"""The input view: load, check and frame the user's photo the way Zero-1-to-3 was trained.

Zero-1-to-3 saw objects on a white background, centred, the longest side of the object's box
about 200/256 of the frame (DESIGN.md §4).  `load_input_view` reproduces that framing from any
RGBA image: crop a square around the alpha box, scale, composite on white.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from sjc3d.config import InputConfig
from sjc3d.errors import InputError

ALPHA_THRESHOLD = 0.5  # pixels more opaque than this belong to the object's box


@dataclass
class InputView:
    """The conditioning view.

    rgb:  [S, S, 3] float32 in [0, 1], composited on white.
    mask: [S, S] float32 in [0, 1], the object's alpha after framing.
    """

    rgb: torch.Tensor
    mask: torch.Tensor


def read_rgba(path: str | Path, cfg: InputConfig) -> np.ndarray:
    """Read an image file as float RGBA [H, W, 4] in [0, 1], refusing unusable inputs."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input image {path} does not exist")
    if not path.is_file():
        raise InputError(f"input image {path} is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            image = im.convert("RGBA") if has_alpha else im.convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image PIL can read (expected PNG/JPEG/WebP ...)") from None
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    if min(image.size) < cfg.min_size:
        raise InputError(f"input image {path} is {image.size[0]}x{image.size[1]}; need at least {cfg.min_size} pixels a side")
    if not has_alpha:
        image = remove_background(image, path, cfg)
    rgba = np.asarray(image, dtype=np.float32) / 255.0
    if (rgba[..., 3] > ALPHA_THRESHOLD).sum() == 0:
        raise InputError(f"input image {path} is fully transparent: nothing to reconstruct")
    return rgba


def remove_background(image: Image.Image, path: Path, cfg: InputConfig) -> Image.Image:
    """RGB without alpha → RGBA with the object cut out (sjc3d/background.py), or refuse.

    `input.remove_background`: auto = a plain background is flood-filled away, any other goes
    to rembg when it is installed; yes = always rembg; no = refuse RGB inputs.
    """
    from sjc3d.background import plain_background_alpha, rembg_cutout

    if cfg.remove_background == "no":
        raise InputError(f"{path} has no alpha channel: give an RGBA image with a transparent background")
    if cfg.remove_background == "yes":
        return rembg_cutout(image, path, why="input.remove_background=yes asks for rembg")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    alpha = plain_background_alpha(rgb)
    if alpha is None:
        return rembg_cutout(image, path, why="its background is not a plain colour")
    rgba = np.dstack([rgb, alpha])
    return Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8))  # 4 channels: RGBA


def object_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the opaque pixels, bottom/right exclusive."""
    rows = np.flatnonzero((alpha > ALPHA_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((alpha > ALPHA_THRESHOLD).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def frame_object(rgba: np.ndarray, size: int, object_fraction: float) -> torch.Tensor:
    """Crop a square around the object so its box spans `object_fraction` of `size` pixels.

    Returns premultiplied RGBA [size, size, 4]: resampling premultiplied colour keeps the
    background's colour out of the object's anti-aliased edge.
    """
    top, left, bottom, right = object_box(rgba[..., 3])
    side = max(bottom - top, right - left) / object_fraction
    centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
    crop = int(np.ceil(side))
    y0, x0 = int(round(centre_y - crop / 2)), int(round(centre_x - crop / 2))

    canvas = np.zeros((crop, crop, 4), dtype=np.float32)  # transparent outside the photo
    src_y0, src_x0 = max(y0, 0), max(x0, 0)
    src_y1, src_x1 = min(y0 + crop, rgba.shape[0]), min(x0 + crop, rgba.shape[1])
    canvas[src_y0 - y0 : src_y1 - y0, src_x0 - x0 : src_x1 - x0] = rgba[src_y0:src_y1, src_x0:src_x1]
    canvas[..., :3] *= canvas[..., 3:]

    chw = torch.from_numpy(canvas).permute(2, 0, 1)[None]
    resized = F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).clamp(0.0, 1.0)


def load_input_view(path: str | Path, cfg: InputConfig) -> InputView:
    """Load `path`, frame the object (DESIGN.md §4), composite on white: the conditioning view."""
    premultiplied = frame_object(read_rgba(path, cfg), cfg.size, cfg.object_fraction)
    alpha = premultiplied[..., 3]
    rgb = premultiplied[..., :3] + (1.0 - alpha[..., None])
    return InputView(rgb=rgb.clamp(0.0, 1.0).contiguous(), mask=alpha.contiguous())


def save_png(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    """Write an image [H, W, 3|4] (uint8, or float in [0, 1]) as an 8-bit PNG, atomically."""
    from sjc3d.atomic import atomic_path

    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def resize_images(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, C] → [B, size, size, C]: area average when shrinking, bilinear when growing."""
    if rgb.shape[1] == size and rgb.shape[2] == size:
        return rgb
    x = rgb.permute(0, 3, 1, 2)
    if size < x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="area")
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)
