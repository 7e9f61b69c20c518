"""The interface the SJC engine uses for a score prior (Zero-1-to-3 or the oracle).

Variance-exploding (VE) view of a DDPM (SJC §3): a clean sample y is perturbed as
z = y + σ·n, and a denoiser D(z, σ) estimates y.  The score of the σ-smoothed data density is
(D(z, σ) − z)/σ².  Everything here is in the prior's *model space*: scaled SD latents
[B, 4, h, w] for Zero-1-to-3; for the RGB oracle, images in [−1, 1] as [B, 3, H, W].
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Prior(Protocol):
    n_channels: int
    """Channels of the model space (4 for SD latents, 3 for the RGB oracle)."""

    sigmas: Tensor
    """[T] VE noise levels σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) of the model's schedule, t = 0..T-1."""

    def condition(self, image: Tensor, elevation_deg: float, radius: float) -> None:
        """Encode the input view once.

        image: [H, W, 3] float in [0, 1] (white background, recentred, usually 256²).
        elevation_deg, radius: the input camera (azimuth 0 by convention).
        """

    def denoise(self, z: Tensor, sigma: Tensor, pose: Tensor, guidance_scale: float, guidance_min_t: int = 0) -> Tensor:
        """D(z, σ) for a batch of target views.

        z:     [B, C, h, w] noisy sample in model space.
        sigma: [B] VE noise levels (each one of `sigmas`, or in their range).
        pose:  [B, 4] `cameras.zero123_pose(input_c2w, target_c2w)` of each target view.
        guidance_min_t: guidance only at timesteps t ≥ this (0: at every t).
        Returns [B, C, h, w]; no gradient flows through it.
        """

    def encode(self, rgb: Tensor) -> Tensor:
        """Images [B, H, W, 3] in [0, 1] → model space [B, C, h, w], differentiable."""

    def decode(self, z: Tensor) -> Tensor:
        """Model space [B, C, h, w] → images [B, H, W, 3] in [0, 1]."""
