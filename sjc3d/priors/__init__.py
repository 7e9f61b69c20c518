"""Score priors: Zero-1-to-3 (priors/zero123.py) and the ground-truth oracle (priors/oracle.py).

`build_prior` picks one from `prior.source`: `oracle:MESH` is the oracle, anything else is a
Zero-1-to-3 model (hub id, local diffusers folder or original `.ckpt`).
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass

import torch

from sjc3d.config import CONFIGS_DIR, DEFAULT_MODEL, SHIPPED_MODEL, Config, PriorConfig, is_oracle
from sjc3d.priors.base import Prior


def resolve_project_path(path: str) -> Path:
    """A relative path as given, or else relative to the project root (presets name `assets/...`)."""
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute():
        return candidate
    in_project = CONFIGS_DIR.parent / candidate
    return in_project if in_project.exists() else candidate


def oracle_vae_source(cfg: PriorConfig) -> str:
    """The model whose VAE the oracle encodes with in latent mode: `prior.vae_source`, else the
    shipped toy model when the project has it (so `--model oracle:MESH` runs offline), else the
    default model."""
    if cfg.vae_source:
        return cfg.vae_source
    shipped = resolve_project_path(SHIPPED_MODEL)
    return str(shipped) if shipped.exists() else DEFAULT_MODEL


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on CUDA (the U-Net was trained in mixed precision) and fp32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def build_prior(config: Config, device: torch.device) -> Prior:
    """The prior named by `config.prior.source`, ready for `condition()`."""
    cfg = config.prior
    dtype = resolve_dtype(cfg.dtype, device)
    if is_oracle(cfg.source):
        from sjc3d.priors.oracle import OraclePrior, load_world_mesh

        mesh = load_world_mesh(resolve_project_path(cfg.source.split(":", 1)[1]), y_up=cfg.oracle_up == "y")
        space = config.field.output
        vae = None
        if space == "latent":
            from sjc3d.priors.zero123 import load_vae

            vae = load_vae(str(resolve_project_path(oracle_vae_source(cfg))), dtype=dtype, device=device)
        return OraclePrior(mesh, config.camera.fov_deg, space=space, vae=vae, device=device)

    from sjc3d.priors.zero123 import load_zero123

    source = str(resolve_project_path(cfg.source))  # presets name shipped models as assets/...
    return load_zero123(source, image_encoder=cfg.image_encoder, stable=cfg.stable, dtype=dtype, device=device)


@dataclass
class LatentDecoder:
    """VAE decoder of a latent field's prior: scaled latents [B, c, h, w] → rgb [B, f·h, f·w, 3].

    `factor` (f) is the VAE's upsampling, read from its config: renderers that want frames of a
    given side render the field at side // factor.
    """

    vae: torch.nn.Module
    factor: int

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        from sjc3d.priors import vae as vae_io

        return vae_io.decode_scaled(self.vae, z)


def build_decoder(cfg: PriorConfig, device: torch.device) -> LatentDecoder:
    """The VAE decoder of the prior a latent field was trained with (the oracle's `vae_source`)."""
    from sjc3d.priors import vae as vae_io
    from sjc3d.priors.zero123 import load_vae

    source = oracle_vae_source(cfg) if is_oracle(cfg.source) else cfg.source
    vae = load_vae(str(resolve_project_path(source)), dtype=resolve_dtype(cfg.dtype, device), device=device)
    return LatentDecoder(vae, vae_io.latent_factor(vae))
