"""Score Jacobian Chaining, as pure functions (Wang et al. 2023, DESIGN.md §5).

A DDPM with cumulative ᾱ_t is read as a variance-exploding (VE) model: x_t/√ᾱ_t = y + σ_t·n with
σ_t = √((1 − ᾱ_t)/ᾱ_t).  Its denoiser D(z, σ) = z − σ·ε̂(z/√(1+σ²), t(σ)) estimates y, and

    ∇_y log p_σ(y) ≈ (D(y + σn, σ) − y) / σ²          (perturb-and-average score, PAAS)

SJC multiplies by σ (so every noise level pushes with similar strength) and chains the result
through the renderer: for a render y = f(θ), the field's update direction is (∂y/∂θ)ᵀ·g with

    g = (D − y)/σ   (Eq. 16, variance-reduced: the injected noise n cancels in expectation)
    g = (D − z)/σ   (Eq. 15, = Eq. 16 − n)

We ascend g, so the chained "loss" is −⟨g, y⟩ with g held constant: `y.backward(-g)`.
The denoiser (a frozen U-Net) is never back-propagated through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def ddpm_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, n_steps: int = 1000, schedule: str = "scaled_linear"
) -> Tensor:
    """ᾱ_t [n_steps] in float64 (as the original's numpy, so σ_t matches to the last digit).

    Stable Diffusion / Zero-1-to-3 use "scaled_linear": β linear in √β from beta_start to beta_end.
    """
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n_steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def ve_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """VE noise levels σ_t = √((1 − ᾱ_t)/ᾱ_t), increasing with t."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def nearest_timestep(sigma: Tensor, sigmas: Tensor) -> Tensor:
    """t(σ): index [B] (long) of the tabulated level closest to each σ [B].

    In float64: far above σ_max, float32 differences would all round to the same value.
    """
    sigma = sigma.reshape(-1, 1).to(sigmas.device, torch.float64)
    return (sigma - sigmas.reshape(1, -1).double()).abs().argmin(dim=1)


@dataclass
class NoiseDraw:
    """One PAAS perturbation of a batch of renders.

    t:     [B] discrete timesteps; sigma: [B] their VE levels;
    noise: [B, C, h, w] standard normal n;  z = y + σ·n.
    """

    t: Tensor
    sigma: Tensor
    noise: Tensor
    z: Tensor


def draw_noise(y: Tensor, sigmas: Tensor, t_min: int, t_max: int, generator: torch.Generator | None = None) -> NoiseDraw:
    """Pick t uniformly in [t_min, t_max] per sample (as the reference run) and perturb y."""
    n = y.shape[0]
    # Drawn on the CPU (the generator's device), copied without waiting for the GPU.
    t = torch.randint(t_min, t_max + 1, (n,), generator=generator).to(y.device, non_blocking=True)
    sigma = sigmas.to(y.device, y.dtype)[t]
    noise = torch.randn(y.shape, generator=generator).to(y.device, y.dtype, non_blocking=True)
    z = y.detach() + sigma.view(-1, *[1] * (y.dim() - 1)) * noise
    return NoiseDraw(t, sigma, noise, z)


def sjc_gradient(y: Tensor, draw: NoiseDraw, denoised: Tensor, variance_reduction: bool = True) -> Tensor:
    """The chained score g (same shape as y): (D − y)/σ (Eq. 16) or (D − z)/σ (Eq. 15)."""
    sigma = draw.sigma.view(-1, *[1] * (y.dim() - 1))
    anchor = y.detach() if variance_reduction else draw.z
    return (denoised - anchor) / sigma


def chain_loss(y: Tensor, grad: Tensor) -> Tensor:
    """Scalar whose gradient w.r.t. y is −grad: adding it to a loss is `y.backward(-grad)`."""
    return -(grad.detach() * y).sum()


def clip_gradient(grad: Tensor, max_norm: float) -> Tensor:
    """Clamp each element of the chained score to [−max_norm, max_norm] (0 = off)."""
    return grad.clamp(-max_norm, max_norm) if max_norm > 0 else grad
