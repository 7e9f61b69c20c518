"""Stage 2: the view-conditioned latent-diffusion objective of Zero-1-to-3, as pure functions.

For a pair of views (x_cond, x_target) of one object with relative pose T (DESIGN.md §4):

    z = E(x_target)·s                        scaled target latent (s = the VAE's scaling factor)
    c_concat = mode E(x_cond)                unscaled, concatenated to the noisy latent
    c_cross  = P([CLIP(x_cond) ‖ T])         one context token, P the (D + 4) → D projection
    min_θ E_{t, ε} ‖ε − ε_θ(√ᾱ_t·z + √(1−ᾱ_t)·ε, t, c_concat, c_cross)‖²

With `prediction_type = "v_prediction"` the network predicts v = √ᾱ_t·ε − √(1−ᾱ_t)·z instead
of ε (Salimans & Ho 2022) and the loss is ‖v − v̂‖².  Near t = T (ᾱ ≈ 0.005 on this schedule) an
ε-model must output almost exactly its input and leaves the clean latent in a ~7 % residual;
v there is ≈ −z, so the coarse shape that the first sampling steps fix is the output itself.

Classifier-free guidance needs the model to also predict without its conditioning.  The
original (zero123 `LatentDiffusion.get_input`, uncond = 0.05) draws r ~ U[0, 1) per sample:

    r < u        drop the image embedding only
    u ≤ r < 2u   drop the image embedding and the concat latent
    2u ≤ r < 3u  drop the concat latent only

A dropped concat latent is zero.  A dropped image embedding is, in the original, a zero CLIP
embedding that is still concatenated with T and projected (`null_context="original"`).  At
sampling time, though, the original and every public pipeline build the unconditional branch
from a zero context *after* the projection (DESIGN.md §4, `Zero123Prior.predict_noise`), which
that training never shows the network.  `null_context="zeros"` (the default) trains exactly the
branch that inference uses: a dropped image makes the whole context zero.

Every random draw of a step comes from one generator seeded by (seed, step) and is made for
the whole global batch; each process then takes its slice.  So the samples, noise and dropout
of step k do not depend on the number of processes, and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sjc3d.cameras import zero123_pose
from sjc3d.priors.zero123 import clip_preprocess


@dataclass
class PairBatch:
    """One step's draws for the global batch (B pairs)."""

    cond: Tensor  # [B] long, view index of the conditioning view
    target: Tensor  # [B] long, view index of the target view
    t: Tensor  # [B] long, diffusion timesteps
    noise: Tensor  # [B, c, h, w] standard normal ε
    r: Tensor  # [B] uniform draws of the classifier-free dropout

    def slice(self, start: int, stop: int) -> "PairBatch":
        return PairBatch(*(x[start:stop] for x in (self.cond, self.target, self.t, self.noise, self.r)))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step `step`: a pure function of (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def draw_pairs(view_offsets: Tensor, objects: Tensor, batch: int, latent_shape: tuple[int, int, int],
               n_timesteps: int, generator: torch.Generator, same_view_fraction: float = 0.0) -> PairBatch:
    """Draw `batch` (cond, target) pairs of views of random training objects: two distinct views
    of one object, but for the `same_view_fraction` of pairs that are one view twice.

    view_offsets: [n_objects + 1] long, object k owns views view_offsets[k] : view_offsets[k + 1].
    objects: [m] long, the objects to draw from (the training split).
    same_view_fraction: the share of pairs (on average) whose target is the conditioning view
        itself (T = 0); the original draws none.  Its draw comes last, so the other draws of a
        step do not depend on it.
    """
    obj = objects[torch.randint(len(objects), (batch,), generator=generator)]
    first, count = view_offsets[obj], view_offsets[obj + 1] - view_offsets[obj]
    a = (torch.rand(batch, generator=generator) * count).long().clamp_max(count - 1)
    # A second, different view: shift by 1 … count−1 (zero123 samples two distinct views too).
    shift = 1 + (torch.rand(batch, generator=generator) * (count - 1)).long().clamp_max(count - 2)
    b = (a + shift) % count
    t = torch.randint(n_timesteps, (batch,), generator=generator)
    noise = torch.randn((batch, *latent_shape), generator=generator)
    r = torch.rand(batch, generator=generator)
    if same_view_fraction > 0:
        b = torch.where(torch.rand(batch, generator=generator) < same_view_fraction, a, b)
    return PairBatch(first + a, first + b, t, noise, r)


def dropout_masks(r: Tensor, uncond: float) -> tuple[Tensor, Tensor]:
    """(drop_image [B] bool, drop_concat [B] bool) from the original's three 5 % cases."""
    drop_image = r < 2 * uncond
    drop_concat = (r >= uncond) & (r < 3 * uncond)
    return drop_image, drop_concat


def relative_poses(c2w: Tensor, cond: Tensor, target: Tensor) -> Tensor:
    """Zero-1-to-3 pose embeddings [B, 4] of the target views seen from the conditioning views."""
    return zero123_pose(c2w[cond], c2w[target])


def cross_attention_context(image_encoder, projection, cond_images: Tensor, pose: Tensor, drop_image: Tensor,
                            null_context: str) -> Tensor:
    """Context [B, 1, D] = P([CLIP(x_cond) ‖ T]) with the dropped rows nulled (see the module doc).

    cond_images: [B, 3, S, S] in [−1, 1]; pose: [B, 4]; drop_image: [B] bool.
    """
    size = int(image_encoder.config.image_size)
    embedding = image_encoder(pixel_values=clip_preprocess(cond_images, size)).image_embeds  # [B, D]
    keep = (~drop_image).to(embedding.dtype)[:, None]
    if null_context == "original":
        return projection(torch.cat([embedding * keep, pose.to(embedding.dtype)], dim=-1))[:, None, :]
    context = projection(torch.cat([embedding, pose.to(embedding.dtype)], dim=-1))
    return (context * keep)[:, None, :]


def noisy_latents(z0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = √ᾱ_t·z0 + √(1 − ᾱ_t)·ε (DDPM forward process); ᾱ [T] float64."""
    a = alphas_cumprod.to(z0.device)[t].float().view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def velocity(z0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """v = √ᾱ_t·ε − √(1 − ᾱ_t)·z0, the v-prediction target [B, c, h, w]."""
    a = alphas_cumprod.to(z0.device)[t].float().view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * z0


def prediction_target(z0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """What the network learns to output: ε itself ("epsilon") or v ("v_prediction")."""
    return noise if prediction_type == "epsilon" else velocity(z0, noise, t, alphas_cumprod)


def min_snr_weights(t: Tensor, alphas_cumprod: Tensor, gamma: float, prediction_type: str = "epsilon") -> Tensor:
    """Per-sample weights [B] of the loss: min(SNR_t, γ)/SNR_t for ε, min(SNR_t, γ)/(SNR_t + 1) for v,
    SNR_t = ᾱ_t / (1 − ᾱ_t).

    Min-SNR-γ (Hang et al. 2023) weighs the clean-latent error ‖z0 − ẑ0‖² by min(SNR_t, γ); the ε
    loss is SNR_t times that error and the v loss (SNR_t + 1) times it, hence the two divisors.
    The ε loss of a nearly clean latent (SNR ≫ γ) is about detail the decoder barely shows, yet
    weighs as much as a noisy one's; capping its share is meant to let a model spend itself on
    coarse structure (on the toy it changed little: README, "recipe A/Bs").  γ ≤ 0: all ones (the
    module doc's objective).
    """
    if gamma <= 0:
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    a = alphas_cumprod.to(t.device)[t].double()
    snr = a / (1 - a)
    divisor = snr if prediction_type == "epsilon" else snr + 1
    return (snr.clamp(max=gamma) / divisor).float()


def prediction_loss(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Σ_b w_b·mean‖target_b − prediction_b‖² / B: the per-sample MSE over latent elements, weighted, averaged.

    prediction, target: [B, c, h, w]; weights: [B] (ones: the plain MSE).
    """
    per_sample = (prediction.float() - target.float()).square().flatten(1).mean(dim=1)
    return (weights.to(per_sample) * per_sample).mean()


# ----------------------------------------------------------------------------- EMA


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay, min(decay, (1 + n)/(10 + n)): early averages forget the random init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(average: list[Tensor], current: list[Tensor], decay: float) -> None:
    """average ← decay·average + (1 − decay)·current, in place, tensor by tensor."""
    torch._foreach_lerp_(average, current, 1.0 - decay)


def learning_rate_scale(step: int, warmup: int, schedule: str = "constant", total: int = 0) -> float:
    """The learning rate's factor at 0-based `step`: linear warm-up to 1 over `warmup` steps, then

    - "constant": 1 (the original's LambdaLinearScheduler);
    - "cosine": ½(1 + cos(π·s)), s = (step − warmup)/(total − 1 − warmup): 1 down to 0 at the last step.

    Why a decay: at a constant rate the weights still move fast when training stops, and an EMA of
    1,000 such steps averages points that denoise well into one that does not (README, "Learning-rate
    decay").
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup + 1:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - 1 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
