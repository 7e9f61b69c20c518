"""The app's bundled example inputs: images the project makes itself.

assets/example.png is the held-out procedural object the shipped toy prior is demonstrated on
(made by assets/make_example.py); assets/examples/ holds the app's own.  `python -m
sjc3d.app.examples` renders the toy object the project ships (assets/toy.obj) from
the input camera with the ground-truth oracle's rasteriser and writes it as an RGBA PNG (the
object's coverage as alpha), the same kind of input a user would upload.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sjc3d.config import CONFIGS_DIR

ASSETS = CONFIGS_DIR.parent / "assets"
PROJECT_EXAMPLE = ASSETS / "example.png"
EXAMPLES_DIR = ASSETS / "examples"
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def example_images(folder: Path = EXAMPLES_DIR) -> list[Path]:
    """assets/example.png first (when present), then the images in `folder`, sorted by name."""
    own = sorted(p for p in folder.glob("*") if p.suffix.lower() in SUFFIXES) if folder.is_dir() else []
    return ([PROJECT_EXAMPLE] if PROJECT_EXAMPLE.is_file() else []) + own


def render_toy_example(path: Path, size: int = 256, fov_deg: float = 49.1) -> Path:
    """The shipped toy seen from the input camera (elevation 0°, radius 2), as an RGBA PNG."""
    import torch

    from sjc3d.image import save_png
    from sjc3d.priors import resolve_project_path
    from sjc3d.priors.oracle import OraclePrior, load_world_mesh

    oracle = OraclePrior(load_world_mesh(resolve_project_path("assets/toy.obj")), fov_deg)
    oracle.condition(torch.ones(size, size, 3), elevation_deg=0.0, radius=2.0)
    view = oracle.input_view(size)
    return save_png(path, torch.cat([view.rgb, view.mask[..., None]], dim=-1))


if __name__ == "__main__":  # pragma: no cover
    print(render_toy_example(EXAMPLES_DIR / "toy.png"))
    sys.exit(0)
