"""Stage 1: the KL autoencoder that defines the latent space, as pure functions.

Latent diffusion trains its autoencoder first and freezes it.  The objective here is the
reconstruction error plus a tiny KL term that keeps the posterior close to a unit Gaussian
(Stable Diffusion's autoencoder uses L1 + LPIPS + a patch GAN with KL weight 1e-6; pretrained
perceptual networks cannot be fetched here, and flat-shaded primitives on white need neither):

    L = |D(z) − x|₁ + λ_KL·KL(q(z|x) ‖ N(0, I)),   z = μ(x)   (or z ~ q(z|x), as latent diffusion)

Decoding the posterior mean is the default: the diffusion stage and the engine only use μ, and
sampled latents delay the colour code by thousands of steps (README, "The shipped model").

The autoencoder is fully convolutional (no attention in its mid-block would change that), so it
trains on random crops: a 32² crop costs a quarter of a 64² view.  Crops are centred near the
object so that white background does not dominate.

Afterwards the scaling factor s = 1/std(z) is measured over the training views (SD's 0.18215
was found the same way), so that scaled latents have unit variance as the noise schedule assumes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def object_crops(images: Tensor, crop: int, generator: torch.Generator) -> Tensor:
    """Random crop×crop windows [B, 3, crop, crop] of images [B, 3, S, S] in [−1, 1].

    Each window's centre is drawn around a random non-white pixel (the object), jittered by up
    to half a window, and clamped inside the image.
    """
    b, _, size, _ = images.shape
    if crop <= 0 or crop >= size:
        return images
    ink = (images < 0.98).any(dim=1).flatten(1).float() + 1e-6  # [B, S²], uniform when all white
    pick = torch.multinomial(ink, 1, generator=generator)[:, 0]
    centre = torch.stack([pick // size, pick % size], dim=-1)
    jitter = ((torch.rand(b, 2, generator=generator) - 0.5) * crop).long()
    top_left = (centre + jitter - crop // 2).clamp(0, size - crop)
    rows = top_left[:, 0, None] + torch.arange(crop)  # [B, crop]
    cols = top_left[:, 1, None] + torch.arange(crop)
    batch = torch.arange(b)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def autoencoder_loss(vae, images: Tensor, eps: Optional[Tensor], kl_weight: float) -> tuple[Tensor, Tensor]:
    """(total loss, L1 reconstruction) of images [B, 3, s, s] in [−1, 1].

    eps: [B, c, s/f, s/f] standard normal, the reparameterisation noise z = μ + σ·eps (drawn by
    the caller for the global batch, so that a step does not depend on the number of processes);
    None decodes the posterior mean z = μ (`autoencoder.sample_posterior=false`).
    """
    posterior = vae.encode(images).latent_dist
    z = posterior.mean if eps is None else posterior.mean + posterior.std * eps
    reconstruction = vae.decode(z).sample
    l1 = (reconstruction - images).abs().mean()
    return l1 + kl_weight * posterior.kl().mean(), l1


@torch.no_grad()
def latent_means(vae, images: Tensor, chunk: int = 256) -> Tensor:
    """Posterior means [N, c, h, w] (unscaled; the mode of a diagonal Gaussian) of images in [−1, 1]."""
    out = [vae.encode(images[i : i + chunk]).latent_dist.mean for i in range(0, len(images), chunk)]
    return torch.cat(out).float()


def scaling_factor(latents: Tensor) -> float:
    """1/std of the latents: scaled latents then have unit variance (SD measured 0.18215 so)."""
    return float(1.0 / latents.float().std().clamp_min(1e-6))
