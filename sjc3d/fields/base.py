"""What every radiance field returns, and the interface the renderer and exporter rely on."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class FieldOutput:
    """Values of a field at N points.

    density:  [N] volume density σ ≥ 0 (exactly 0 outside the field's box).
    features: [N, C] colour (RGB in [0, 1], C = 3) or a Stable Diffusion latent (C = 4).
    """

    density: Tensor
    features: Tensor
