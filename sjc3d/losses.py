"""Reference-view loss and regularisers, as pure functions of renders.

Images are channels-last: colour [B, H, W, C], opacity and depth [B, H, W, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_color_loss(render: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between the render at the input camera and the input view."""
    return F.mse_loss(render, target)


def reference_mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error between rendered opacity and the input's alpha [.., H, W, 1]."""
    return F.mse_loss(opacity, mask)


def near_view_loss(render_near: Tensor, render_ref: Tensor) -> Tensor:
    """Views a few degrees apart should look alike (the reference run's near-view consistency).

    The reference render is held fixed: the nearby view is pulled toward what the input view
    already explains, not the other way round.
    """
    return F.mse_loss(render_near, render_ref.detach())


def depth_smoothness_loss(depth: Tensor, opacity: Tensor) -> Tensor:
    """Squared differences of neighbouring depths, counted where both pixels are covered.

    depth, opacity: [B, H, W, 1].  Weighting by coverage keeps the silhouette edge (where depth
    legitimately jumps to the background) out of the penalty.
    """
    d = depth[..., 0] / opacity[..., 0].clamp_min(1e-3)
    o = opacity[..., 0].detach()
    dx = (d[:, :, 1:] - d[:, :, :-1]) ** 2 * (o[:, :, 1:] * o[:, :, :-1])
    dy = (d[:, 1:, :] - d[:, :-1, :]) ** 2 * (o[:, 1:, :] * o[:, :-1, :])
    return dx.mean() + dy.mean()


def emptiness_loss(opacity: Tensor, scale: float) -> Tensor:
    """log(1 + scale·opacity): a sparsity prior that favours empty space (SJC's emptiness)."""
    return torch.log1p(scale * opacity).mean()


def opacity_entropy_loss(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy of the opacity: pushes every ray to be fully empty or fully opaque."""
    o = opacity.clamp(eps, 1 - eps)
    return -(o * o.log() + (1 - o) * (1 - o).log()).mean()


def ramp(step: int, total: int, start_fraction: float) -> float:
    """1 once `step` reaches start_fraction·total, else 0 (the reference run's switch-on)."""
    return 1.0 if step >= start_fraction * total else 0.0
