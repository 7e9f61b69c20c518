"""Choosing the torch device from a config string."""

from __future__ import annotations

import torch

from sjc3d.errors import ConfigError


def resolve_device(name: str, fallback_to_cpu: bool = False) -> torch.device:
    """`auto` is CUDA when available, else the CPU; `cuda[:i]` must be available unless
    `fallback_to_cpu` (reading a run trained on a GPU on a machine without one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        if fallback_to_cpu:
            return torch.device("cpu")
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu")
    return device
