"""Radiance fields: `build_field(cfg, device)` picks the hash-grid backend and builds the field.

A field's state loads on either backend (a tcnn table converts to the torch grid's and back,
sjc3d/fields/portable.py); on a resume, `port_optimizer_state` does the same for the moments.
"""

from __future__ import annotations

import torch

from sjc3d.config import FieldConfig
from sjc3d.errors import ConfigError
from sjc3d.fields.base import FieldOutput
from sjc3d.fields.field import RadianceField
from sjc3d.fields.hashgrid import HashGridEncoding
from sjc3d.fields.portable import port_optimizer_state

__all__ = ["FieldOutput", "RadianceField", "HashGridEncoding", "build_field", "choose_backend", "port_optimizer_state"]


def choose_backend(backend: str, device: torch.device | str) -> str:
    """"torch" or "tcnn": `auto` takes tcnn on CUDA when it imports, the torch grid otherwise."""
    from sjc3d.fields.tcnn_backend import tcnn_available

    on_cuda = torch.device(device).type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "tcnn":
        if not (on_cuda and tcnn_available()):
            raise ConfigError("field.backend='tcnn' needs a CUDA device and the tinycudann package; use 'auto' "
                              "(a run trained with tcnn also loads on the torch backend)")
        return "tcnn"
    return "tcnn" if on_cuda and tcnn_available() else "torch"


def build_field(cfg: FieldConfig, device: torch.device | str = "cpu") -> RadianceField:
    """Hash-grid radiance field of `cfg` on `device` (interface: docs/INTERFACES.md)."""
    grid = dict(
        n_levels=cfg.n_levels,
        n_features_per_level=cfg.n_features_per_level,
        log2_hashmap_size=cfg.log2_hashmap_size,
        base_resolution=cfg.base_resolution,
        per_level_scale=cfg.per_level_scale,
    )
    if choose_backend(cfg.backend, device) == "tcnn":
        from sjc3d.fields.tcnn_backend import TcnnHashGridEncoding

        encoding = TcnnHashGridEncoding(**grid)
    else:
        encoding = HashGridEncoding(**grid)
    return RadianceField(cfg, encoding).to(device)
