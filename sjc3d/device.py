"""Choosing the torch device from a config string or a `--device` flag."""

from __future__ import annotations

import torch

from sjc3d.errors import ConfigError


def resolve_device(name: str, fallback_to_cpu: bool = False, setting: str = "train.device") -> torch.device:
    """`auto` is CUDA when available, else the CPU; `cuda[:i]` must be available unless
    `fallback_to_cpu` (reading a run trained on a GPU on a machine without one).  `setting`
    names the option in error messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting}={name!r}: expected auto, cpu, cuda, cuda:1 ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        if fallback_to_cpu:
            return torch.device("cpu")
        raise ConfigError(f"{setting}={name!r} but CUDA is not available here; use cpu")
    return device
