"""Stable Diffusion VAE as used by the priors: images ↔ scaled latents.

Convention: images are channels-last [B, H, W, 3] in [0, 1] at the interface; the VAE sees
[B, 3, H, W] in [−1, 1].  Latents handed to the U-Net (renders, noisy samples) are multiplied by
`vae.config.scaling_factor` (0.18215); Zero-1-to-3's *concat* latent is not (priors/zero123.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def latent_factor(vae: torch.nn.Module) -> int:
    """Image pixels per latent pixel along a side: 2^(levels − 1) (8 for SD, 4 for a 3-level VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_vae_input(rgb: Tensor) -> Tensor:
    """[B, H, W, 3] in [0, 1] → [B, 3, H, W] in [−1, 1]."""
    return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0


def from_vae_output(x: Tensor) -> Tensor:
    """[B, 3, H, W] in [−1, 1] → [B, H, W, 3] in [0, 1]."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)


def encode_scaled(vae: torch.nn.Module, rgb: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Scaled latents (differentiable): [B, H, W, 3] → [B, c, H/f, W/f] float32 (f = latent_factor).

    The posterior mean by default (deterministic, lower-variance gradients for the RGB render
    mode); `sample=True` draws from the posterior as the original's `get_first_stage_encoding`
    does — SD's posterior std is tiny, so they barely differ.
    """
    x = to_vae_input(rgb.to(vae.device)).to(vae.dtype)
    posterior = vae.encode(x).latent_dist
    latent = posterior.sample(generator) if sample else posterior.mean
    return latent.float() * vae.config.scaling_factor


def decode_scaled(vae: torch.nn.Module, z: Tensor, clamp: bool = True) -> Tensor:
    """Scaled latents [B, c, h, w] → images [B, f·h, f·w, 3], in [0, 1] when `clamp`.

    Differentiable (wrap in torch.no_grad() for previews); `clamp=False` keeps gradients of
    pixels the decoder pushes slightly outside [0, 1] (e.g. a white background).
    """
    x = vae.decode((z.to(vae.device) / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    x = (x + 1.0) / 2.0
    return (x.clamp(0.0, 1.0) if clamp else x).permute(0, 2, 3, 1)
