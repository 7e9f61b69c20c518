"""Stable Diffusion VAE as used by the priors: images ↔ scaled latents.

Convention: images are channels-last [B, H, W, 3] in [0, 1] at the interface; the VAE sees
[B, 3, H, W] in [−1, 1].  Latents handed to the U-Net (renders, noisy samples) are multiplied by
`vae.config.scaling_factor` (0.18215); Zero-1-to-3's *concat* latent is not (priors/zero123.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_vae_input(rgb: Tensor) -> Tensor:
    """[B, H, W, 3] in [0, 1] → [B, 3, H, W] in [−1, 1]."""
    return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0


def from_vae_output(x: Tensor) -> Tensor:
    """[B, 3, H, W] in [−1, 1] → [B, H, W, 3] in [0, 1]."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)


def encode_scaled(vae: torch.nn.Module, rgb: Tensor) -> Tensor:
    """Scaled latent of the posterior mean (differentiable): [B, H, W, 3] → [B, 4, H/8, W/8]."""
    x = to_vae_input(rgb).to(vae.dtype)
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


@torch.no_grad()
def decode_scaled(vae: torch.nn.Module, z: Tensor) -> Tensor:
    """Scaled latents [B, 4, h, w] → images [B, 8h, 8w, 3] in [0, 1]."""
    x = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample
    return from_vae_output(x)
