"""What a volume render returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass
class RenderOutput:
    """A render of rays (flat, [N, ...]) or of images ([B, H, W, ...]).

    features: [..., C] colour or latent, already blended over the background.
    opacity:  [..., 1] accumulated opacity (alpha) along each ray, in [0, 1].
    depth:    [..., 1] expected distance along the ray, Σ w_i t_i (not divided by opacity).
    weights:  [M] compositing weight w_i of every sample, flat (dense path: the [N, S] batch
              flattened; occupancy grid: nerfacc's packed samples).  Kept by renders with
              gradients, for per-sample regularisers (`losses.emptiness_loss`); None otherwise.
    """

    features: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Optional[Tensor] = None

    def reshape(self, *shape: int) -> "RenderOutput":
        """Reshape every per-ray tensor's leading dims to `shape`, keeping the channel dim."""
        per_ray = (x.reshape(*shape, x.shape[-1]) for x in (self.features, self.opacity, self.depth))
        return RenderOutput(*per_ray, weights=self.weights)
