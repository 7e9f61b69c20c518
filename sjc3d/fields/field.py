"""The radiance field: hash-grid encoding + a small MLP with a density head and a feature head.

    p ∈ [-bound, bound]³ ──(p + bound) / 2·bound──► encoding ──► MLP trunk ──┬─► density head ─► σ
                                                                              └─► feature head ─► c

σ = act(raw + density_shift + blob(p)), act ∈ {exp, softplus}; `blob(p) = blob_density ·
(1 − |p|² / blob_radius²)` is the centred blob of DreamFusion/threestudio: a pre-activation
bias that makes early renders see a soft ball, so the prior has an object to sharpen.  It goes
negative far from the centre, which also keeps the corners of the box empty.
Points outside the box have σ = 0 exactly (renderers and the mesh exporter rely on it).
Features are a linear 4-channel Stable Diffusion latent, or RGB through a sigmoid.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from sjc3d.config import FieldConfig
from sjc3d.fields.base import FieldOutput

EXP_MAX = 15.0  # exp(15) ≈ 3.3e6: dense enough for any step size; beyond that only overflow


def exp_density(raw: Tensor) -> Tensor:
    return torch.exp(raw.clamp(max=EXP_MAX))


def softplus_density(raw: Tensor) -> Tensor:
    return nn.functional.softplus(raw)


DENSITY_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"exp": exp_density, "softplus": softplus_density}


def blob_bias(points: Tensor, density: float, radius: float) -> Tensor:
    """points [N, 3] → [N]: density · (1 − |p|² / radius²)."""
    return density * (1.0 - points.square().sum(-1) / radius**2)


def inside_box(points: Tensor, bound: float) -> Tensor:
    """points [N, 3] → bool [N], True inside the closed box [-bound, bound]³."""
    return (points.abs() <= bound).all(dim=-1)


def mlp(n_in: int, hidden: int, n_hidden_layers: int) -> nn.Sequential:
    """n_hidden_layers × (Linear + ReLU): the shared trunk of the two heads."""
    layers: list[nn.Module] = []
    for i in range(n_hidden_layers):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RadianceField(nn.Module):
    """Density and features at points of the box [-bound, bound]³ (interface: docs/INTERFACES.md)."""

    def __init__(self, cfg: FieldConfig, encoding: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.bound = float(cfg.bound)
        self.n_channels = 4 if cfg.output == "latent" else 3
        self.encoding = encoding
        n_enc = encoding.n_output_dims
        self.trunk = mlp(n_enc, cfg.hidden_dim, cfg.n_hidden_layers)
        n_trunk = cfg.hidden_dim if cfg.n_hidden_layers > 0 else n_enc
        self.density_head = nn.Linear(n_trunk, 1)
        self.feature_head = nn.Linear(n_trunk, self.n_channels)
        self.activation = DENSITY_ACTIVATIONS[cfg.density_activation]

    def _trunk(self, points: Tensor) -> Tensor:
        x = (points + self.bound) / (2 * self.bound)  # box → [0, 1]³
        return self.trunk(self.encoding(x))

    def _density(self, points: Tensor, h: Tensor) -> Tensor:
        raw = self.density_head(h).squeeze(-1) + self.cfg.density_shift
        if self.cfg.density_bias == "blob":
            raw = raw + blob_bias(points, self.cfg.blob_density, self.cfg.blob_radius)
        sigma = self.activation(raw)
        return torch.where(inside_box(points, self.bound), sigma, torch.zeros_like(sigma))

    def density(self, points: Tensor) -> Tensor:
        """points [N, 3] → σ [N] ≥ 0 (0 outside the box)."""
        return self._density(points, self._trunk(points))

    def forward(self, points: Tensor) -> FieldOutput:
        """points [N, 3] → FieldOutput(density [N], features [N, C])."""
        h = self._trunk(points)
        features = self.feature_head(h)
        if self.n_channels == 3:
            features = torch.sigmoid(features)
        return FieldOutput(self._density(points, h), features)
