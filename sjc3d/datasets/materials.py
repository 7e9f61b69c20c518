"""Surface materials of procedural parts: a base colour, optionally a two-colour 3-D pattern.

A pattern is a function of the point in the part's *local* frame (before its rotation,
translation and scale), so it moves and scales with the part, like a texture painted on it.
Patterns are solid (defined in 3-D, not on a UV map): any surface cutting through them shows
them, without seams.  Colours are albedos in [0, 1]; shading is the renderer's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PATTERNS = ("plain", "stripes", "checker", "split", "dots")
DOT_RADIUS = 0.3  # dot radius, in lattice cells


@dataclass(frozen=True)
class Material:
    """`color` everywhere, except where the pattern selects `color2`.

    pattern    plain | stripes (slabs across local axis `axis`) | checker (3-D cells) |
               split (the half with positive local coordinate `axis`) | dots (balls on a lattice)
    frequency  stripes, checker and dots: pattern periods per local unit.
    """

    color: tuple[float, float, float]
    pattern: str = "plain"
    color2: tuple[float, float, float] = (1.0, 1.0, 1.0)
    frequency: float = 1.0
    axis: int = 2

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {PATTERNS}")
        if self.axis not in (0, 1, 2) or not self.frequency > 0:
            raise ValueError(f"pattern axis must be 0, 1 or 2 and frequency positive, got {self.axis}, {self.frequency}")
        for c in (self.color, self.color2):
            if len(c) != 3 or not all(0.0 <= float(v) <= 1.0 for v in c):
                raise ValueError(f"colours are three values in [0, 1], got {c}")

    def second_color_mask(self, p: Tensor) -> Tensor:
        """[N] bool: where the pattern shows `color2`, for local points p [N, 3]."""
        if self.pattern == "plain":
            return torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        if self.pattern == "split":
            return p[:, self.axis] > 0
        cells = p * self.frequency
        if self.pattern == "stripes":
            return torch.floor(2 * cells[:, self.axis]).remainder(2) == 1  # half a period each
        if self.pattern == "checker":
            return torch.floor(cells).sum(dim=-1).remainder(2) == 1
        offset = cells - torch.round(cells)  # dots: position within the nearest lattice cell
        return torch.linalg.vector_norm(offset, dim=-1) < DOT_RADIUS

    def albedo(self, p: Tensor) -> Tensor:
        """[N, 3] albedo at local points p [N, 3]."""
        c1 = torch.tensor(self.color, dtype=p.dtype, device=p.device)
        c2 = torch.tensor(self.color2, dtype=p.dtype, device=p.device)
        return torch.where(self.second_color_mask(p)[:, None], c2, c1)

    def to_dict(self) -> dict:
        return {"color": list(self.color), "pattern": self.pattern, "color2": list(self.color2),
                "frequency": self.frequency, "axis": self.axis}

    @classmethod
    def from_dict(cls, data: dict) -> "Material":
        return cls(color=tuple(float(v) for v in data["color"]), pattern=str(data.get("pattern", "plain")),
                   color2=tuple(float(v) for v in data.get("color2", (1.0, 1.0, 1.0))),
                   frequency=float(data.get("frequency", 1.0)), axis=int(data.get("axis", 2)))
