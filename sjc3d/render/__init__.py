"""Volume rendering: `build_renderer(field, cfg, device)` → VolumeRenderer (docs/INTERFACES.md)."""

from __future__ import annotations

import torch
from torch import nn

from sjc3d.config import RenderConfig
from sjc3d.render.base import RenderOutput

__all__ = ["RenderOutput", "build_renderer"]


def build_renderer(field: nn.Module, cfg: RenderConfig, device: torch.device | str = "cpu"):
    """The nerfacc renderer of `field`: occupancy-grid sampling on CUDA, dense sampling elsewhere."""
    from sjc3d.render.volume import build_volume_renderer  # nerfacc is imported here, lazily

    return build_volume_renderer(field, cfg, device)
