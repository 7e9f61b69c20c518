"""Reference-view loss and regularisers, as pure functions of renders.

Images are channels-last: colour or latent [B, H, W, C], opacity and depth [B, H, W, 1].
Per-sample weights are flat [M] (any packing; see `render.base.RenderOutput.weights`).

Two families live side by side, each selected by a config switch (`LossConfig`):

* the reference run's terms (Zero-1-to-3's `3drec/run_zero123.py`, `my3d.py`), which are the
  defaults: L1 depth smoothness on the depth composited over a far background, near-view
  consistency in L1 around every random view, emptiness on per-sample weights;
* sjc3d's earlier variants (squared, coverage-weighted smoothness; a near view around the input
  camera only), kept for the measurements in the README.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- input view


def rgb_loss(render: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of two images in [0, 1], measured on the [−1, 1] scale (= 4 × MSE).

    The reference compares its decoded render with the input image in [−1, 1]
    (`((y_ − input_image) ** 2).mean()`, weight 1e4); measuring on that scale keeps
    `loss.ref_rgb` meaning the same thing whatever the field renders.
    """
    return 4.0 * F.mse_loss(render, target)


def latent_loss(render: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between a latent render and the encoded input view (no reference analogue)."""
    return F.mse_loss(render, target)


def reference_mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error between rendered opacity and the input's alpha [.., H, W, 1]."""
    return F.mse_loss(opacity, mask)


# --------------------------------------------------------------------------- depth


def depth_over_background(depth: Tensor, opacity: Tensor, background_depth: float) -> Tensor:
    """Σ wᵢtᵢ + (1 − Σ wᵢ)·d_bg: the depth of a ray whose leftover transmittance hits a far wall.

    The reference renderer returns this depth (voxnerf/render.py, `bg_dist = 10`), so its
    depth terms also see the silhouette: an edge pixel jumps from the surface to d_bg.
    """
    return depth + (1.0 - opacity) * background_depth


def depth_smoothness_l1(depth: Tensor) -> Tensor:
    """(mean |∂ₓd| + mean |∂ᵧd|) / 2 over neighbouring pixels of depth [B, H, W, 1].

    The reference's `my3d.depth_smooth_loss`.  Applied to `depth_over_background`, the L1 of the
    silhouette jump is proportional to the silhouette's length: besides flattening the surface it
    discourages ragged outlines and floaters.
    """
    d = depth[..., 0]
    return ((d[:, :, 1:] - d[:, :, :-1]).abs().mean() + (d[:, 1:, :] - d[:, :-1, :]).abs().mean()) / 2


def depth_smoothness_squared(depth: Tensor, opacity: Tensor) -> Tensor:
    """Squared neighbour differences of the surface depth, counted where both pixels are covered.

    sjc3d's earlier variant: depth [B, H, W, 1] is normalised by opacity (the surface's distance,
    not Σ wᵢtᵢ) and each difference is weighted by the coverage of the two pixels, so the
    silhouette edge is left out of the penalty.
    """
    d = depth[..., 0] / opacity[..., 0].clamp_min(1e-3)
    o = opacity[..., 0].detach()
    dx = (d[:, :, 1:] - d[:, :, :-1]) ** 2 * (o[:, :, 1:] * o[:, :, :-1])
    dy = (d[:, 1:, :] - d[:, :-1, :]) ** 2 * (o[:, 1:, :] * o[:, :-1, :])
    return dx.mean() + dy.mean()


# --------------------------------------------------------------------------- near views


def near_view_l1(features_near: Tensor, features: Tensor, depth_near: Tensor, depth: Tensor) -> Tensor:
    """|y_near − y|.mean + |depth_near − depth|.mean, both renders trainable (the reference's form).

    Two cameras a few hundredths of the radius apart see nearly the same image: the term
    penalises view-dependent flicker (floaters that only explain one camera) in both directions.
    """
    return (features_near - features).abs().mean() + (depth_near - depth).abs().mean()


def near_view_mse(render_near: Tensor, render_ref: Tensor) -> Tensor:
    """Mean squared difference to a render held fixed (sjc3d's earlier input-view variant).

    The input-view render is detached: the nearby view is pulled toward what the input view
    already explains, not the other way round.
    """
    return F.mse_loss(render_near, render_ref.detach())


# --------------------------------------------------------------------------- sparsity


def emptiness_loss(weights: Tensor, n_rays: int, scale: float, form: str = "zero123") -> Tensor:
    """Per-sample sparsity of the compositing weights wᵢ [M], summed along rays, averaged over rays.

    form "zero123": −wᵢ/2 · log(1 + s·wᵢ), Zero-1-to-3's 3drec ("negative emptiness loss");
         minimised by few, large weights: it sharpens surfaces rather than removing matter.
    form "sjc":     log(1 + s·wᵢ), the SJC paper's emptiness; concave, so it prefers empty space
         and concentrated weights.
    Both originals take `.mean()` over their dense [samples, rays] weight array; summing along
    each ray instead makes the value independent of how many samples the renderer takes
    (the originals' weight corresponds to ours × their samples per ray).
    """
    if form == "zero123":
        per_sample = -0.5 * weights * torch.log1p(scale * weights)
    elif form == "sjc":
        per_sample = torch.log1p(scale * weights)
    else:
        raise ValueError(f"unknown emptiness form {form!r}")
    return per_sample.sum() / max(n_rays, 1)


def emptiness_factor(step: int, total: int, multiplier: float, start_fraction: float, schedule: str) -> float:
    """Schedule of the emptiness weight at 1-based `step` of `total`.

    "ramp": 1 + multiplier·step/total (Zero-1-to-3's 3drec); "step": ×multiplier once the
    fraction `start_fraction` of the run is reached (the SJC paper's code).
    """
    if schedule == "ramp":
        return 1.0 + multiplier * step / max(total, 1)
    return multiplier if step >= start_fraction * total else 1.0


def opacity_entropy_loss(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy of the opacity: pushes every ray to be fully empty or fully opaque."""
    o = opacity.clamp(eps, 1 - eps)
    return -(o * o.log() + (1 - o) * (1 - o).log()).mean()


def ramp(step: int, total: int, start_fraction: float) -> float:
    """1 once `step` reaches start_fraction·total, else 0 (the reference run's switch-on)."""
    return 1.0 if step >= start_fraction * total else 0.0
