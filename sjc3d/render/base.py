"""What a volume render returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RenderOutput:
    """A render of rays (flat, [N, ...]) or of images ([B, H, W, ...]).

    features: [..., C] colour or latent, already blended over the background.
    opacity:  [..., 1] accumulated opacity (alpha) along each ray, in [0, 1].
    depth:    [..., 1] expected distance along the ray, Σ w_i t_i (not divided by opacity).
    """

    features: Tensor
    opacity: Tensor
    depth: Tensor

    def reshape(self, *shape: int) -> "RenderOutput":
        """Reshape every tensor's leading dims to `shape`, keeping the channel dim."""
        return RenderOutput(*(x.reshape(*shape, x.shape[-1]) for x in (self.features, self.opacity, self.depth)))
