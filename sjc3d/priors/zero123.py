"""The Zero-1-to-3 prior: a view-conditioned latent diffusion model used as a VE denoiser.

Conditioning, exactly as the original code (DESIGN.md §4; zero123/3drec/run_zero123.py):

* CLIP branch.  The input view in [−1, 1] is resized to 224² with bicubic interpolation and
  no crop, mapped back to [0, 1] and normalised with CLIP's mean/std (`clip_preprocess`); the
  projected CLIP image embedding [B, 768] is concatenated with the pose embedding T [B, 4]
  and passed through the 772 → 768 projection: the cross-attention context [B, 1, 768].
  The original resizes with `kornia.geometry.resize(..., 'bicubic', align_corners=True,
  antialias=False)`, which is `F.interpolate(mode="bicubic", align_corners=True)`; we call
  that directly.  (HF's CLIPImageProcessor would resize the short side and centre-crop.)
* Concat branch.  The VAE posterior *mode* of the input view, *not* multiplied by the
  scaling factor 0.18215, is concatenated to the (scaled) noisy latent: 8 UNet channels.
* Unconditional branch (classifier-free guidance): a zero context *after* the projection and
  a zero concat latent; ε̂ = ε_u + s·(ε_c − ε_u).
* What the UNet predicts is the scheduler config's `prediction_type`: "epsilon" (every public
  Zero-1-to-3) or "v_prediction" (v = √ᾱ·ε − √(1−ᾱ)·z0, which a model trained by `sjc3d
  train-prior` may use); `predict_noise` always returns ε, so SJC and the samplers see one thing.

VE view for SJC (DESIGN.md §5): σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) and
D(z, σ) = z − σ·ε̂(z / sqrt(1 + σ²), t(σ)).  t(σ) is the discrete step whose σ_t is nearest
to σ, and — as the original 3drec code does — that snapped σ_t is the σ used in the formula,
so D is exact for every noise level of the schedule and a close approximation between them.

Stable Zero123 replaces the 4th pose entry (Δradius) by the input view's absolute polar
angle in radians; `condition()` records that angle and `denoise()` substitutes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sjc3d.config import DEFAULT_MODEL
from sjc3d.priors import vae as vae_io
from sjc3d.priors.loading import Zero123Parts, load_parts, load_vae, prediction_type_of  # noqa: F401  (re-exported)
from sjc3d.sjc import ddpm_alphas_cumprod, nearest_timestep, ve_sigmas  # noqa: F401  (re-exported)

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ----------------------------------------------------------------------------- pure functions


def clip_preprocess(images: Tensor, size: int = CLIP_SIZE) -> Tensor:
    """[B, 3, H, W] in [−1, 1] → [B, 3, size, size] CLIP input (bicubic, no crop, mean/std).

    `size` is the encoder's `config.image_size`: 224 for the real ViT-L/14.
    """
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def alphas_cumprod_from_config(config: dict) -> Tensor:
    """ᾱ_t [T] (float64) of a diffusers scheduler config (scaled_linear or linear betas)."""
    return ddpm_alphas_cumprod(
        float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012)),
        int(config.get("num_train_timesteps", 1000)), config.get("beta_schedule", "scaled_linear"),
    )


def epsilon_from_velocity(v: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = √ᾱ·v + √(1 − ᾱ)·x_t for v = √ᾱ·ε − √(1 − ᾱ)·z0 and x_t = √ᾱ·z0 + √(1 − ᾱ)·ε.

    v, x_t: [B, c, h, w]; alpha_bar: ᾱ_t per sample, [B] (or broadcastable).  Exact: the z0 terms cancel.
    """
    a = alpha_bar.to(v).reshape(-1, *([1] * (v.dim() - 1)))
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def guide(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance ε_u + s·(ε_c − ε_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def rescale_guidance(guided: Tensor, conditional: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4): blend the guided prediction with itself scaled to
    the conditional prediction's standard deviation, per sample: φ·guided·(std_c/std_g) + (1−φ)·guided.

    A large guidance scale inflates the prediction's spread, which over-saturates samples; φ = 0
    leaves the guided prediction as it is.  guided, conditional: [B, c, h, w].
    """
    if phi <= 0:
        return guided
    dims = tuple(range(1, guided.dim()))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def limit_guidance(guided: Tensor, conditional: Tensor, keep: Tensor) -> Tensor:
    """The guided prediction where `keep` [B] is true, the conditional one elsewhere.

    Guidance in a limited interval (Kynkäänniemi et al. 2024): at low noise the difference ε_c − ε_u
    is fine detail, and s times it paints speckle on a flat background and over-saturates
    colours; the shape is set at high noise, where guidance is kept (README, "Guidance interval").
    guided, conditional: [B, c, h, w].
    """
    return torch.where(keep.view(-1, *([1] * (guided.dim() - 1))), guided, conditional)


def stable_pose(pose: Tensor, input_polar: float) -> Tensor:
    """Stable Zero123 embedding: the 4th entry becomes the input view's polar angle (radians)."""
    pose = pose.clone()
    pose[..., 3] = input_polar
    return pose


# ----------------------------------------------------------------------------- the prior


class Zero123Prior:
    """Zero-1-to-3 behind the `Prior` protocol (sjc3d/priors/base.py).

    Components are injected (see `load_zero123`); they are frozen.  Model space: latents
    scaled by `vae.config.scaling_factor`, [B, c, h, w] with c = vae.config.latent_channels and
    h = H/f, f = `latent_factor` (4 channels, f = 8, 32² latents for 256² views in the real
    model).  Everything about sizes is read from the components' configs, never assumed.
    fp16 on CUDA by default; everything returned is float32.
    """

    def __init__(self, unet, vae, image_encoder, projection, scheduler_config: dict, stable: bool = False) -> None:
        self.unet, self.vae, self.image_encoder, self.projection = unet, vae, image_encoder, projection
        self.scheduler_config = dict(scheduler_config)
        self.stable = stable
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.scaling_factor = float(vae.config.scaling_factor)
        self.n_channels = int(vae.config.latent_channels)
        self.latent_factor = vae_io.latent_factor(vae)
        self.clip_size = int(image_encoder.config.image_size)
        # Side of the views the model was trained on (256; a .ckpt does not record it, the
        # published value is used).  condition() resizes the input view to it, and the trainer
        # resizes RGB renders to it before encode() (`encode_size`).
        self.image_size = int(vae.config.sample_size)
        self.alphas_cumprod = alphas_cumprod_from_config(self.scheduler_config)
        self.prediction_type = prediction_type_of(self.scheduler_config)
        self.alpha_bars = self.alphas_cumprod.float().to(self.device)  # [T] ᾱ_t, for v → ε on the device
        self.sigmas = ve_sigmas(self.alphas_cumprod).float().to(self.device)
        self.clip_embedding: Tensor | None = None  # [1, 768]
        self.concat_latent: Tensor | None = None  # [1, 4, h, w], unscaled posterior mode
        self.input_polar = math.pi / 2  # radians; Stable Zero123's 4th pose entry
        self.input_radius = 0.0

    @property
    def encode_size(self) -> int:
        """Side the trainer resizes RGB renders to before `encode` (the training view size)."""
        return self.image_size

    @classmethod
    def from_parts(cls, parts: Zero123Parts) -> "Zero123Prior":
        return cls(parts.unet, parts.vae, parts.image_encoder, parts.projection, parts.scheduler_config, parts.stable)

    # -- conditioning ---------------------------------------------------------------------

    def _to_model_image(self, image: Tensor) -> Tensor:
        """[H, W, 3] in [0, 1] → [1, 3, S, S] in [−1, 1], S = the model's training size."""
        x = image.to(self.device, torch.float32).permute(2, 0, 1)[None] * 2.0 - 1.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            # The concat latent must match the latent renders; Zero-1-to-3 saw 256² views.
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(-1.0, 1.0)  # bicubic overshoots at edges
        return x

    @torch.no_grad()
    def condition(self, image: Tensor, elevation_deg: float, radius: float) -> None:
        """Encode the input view once: CLIP embedding, unscaled concat latent, input polar."""
        x = self._to_model_image(image)
        pixels = clip_preprocess(x, self.clip_size).to(self.dtype)
        self.clip_embedding = self.image_encoder(pixel_values=pixels).image_embeds.float()
        self.concat_latent = self.vae.encode(x.to(self.dtype)).latent_dist.mode().float()
        self.input_polar = math.radians(90.0 - float(elevation_deg))
        self.input_radius = float(radius)

    def context(self, pose: Tensor) -> Tensor:
        """Cross-attention context [B, 1, 768] = projection([CLIP embedding ‖ T]) for poses [B, 4]."""
        if self.clip_embedding is None:
            raise RuntimeError("call condition(image, elevation, radius) before denoising")
        pose = pose.to(self.device, torch.float32).reshape(-1, 4)
        if self.stable:
            pose = stable_pose(pose, self.input_polar)
        embedding = self.clip_embedding.expand(pose.shape[0], -1)
        features = torch.cat([embedding, pose], dim=-1).to(self.projection.weight.dtype)
        return self.projection(features)[:, None, :]

    # -- the network -------------------------------------------------------------------------

    @torch.no_grad()
    def predict_noise(self, x: Tensor, t: Tensor, pose: Tensor, guidance_scale: float,
                      guidance_rescale: float = 0.0, guidance_min_t: int = 0) -> Tensor:
        """Guided ε̂(x, t) [B, 4, h, w] float32 at the DDPM scale (x = √ᾱ·y + √(1−ᾱ)·n).

        x: [B, 4, h, w] scaled latents; t: [B] integer timesteps; pose: [B, 4].
        One UNet call of batch 2B for guidance (B when the scale is 1: ε_u is not needed).
        guidance_rescale: φ of `rescale_guidance`, applied to the model's own output (ε or v) as
            diffusers does; 0 (the default, and Zero-1-to-3's) leaves plain guidance.
        guidance_min_t: guide only the samples with t ≥ this; below it the conditional prediction
            alone (scale 1), see `limit_guidance`.  0 (the default, and Zero-1-to-3's) guides every t.
        """
        context = self.context(pose)
        n = x.shape[0]
        concat = self.concat_latent.to(self.dtype).expand(n, -1, -1, -1)
        x = x.to(self.device, self.dtype)
        t = t.to(self.device).reshape(-1).expand(n)
        # With an interval, the rows to guide ([B] bool); reading it back waits for the device, so
        # the default (every t) neither builds nor reads it.
        guided = t >= guidance_min_t if guidance_min_t > 0 else None
        if guidance_scale == 1.0 or (guided is not None and not bool(guided.any())):
            out = self.unet(torch.cat([x, concat], dim=1), t, encoder_hidden_states=context).sample.float()
        else:
            sample = torch.cat([torch.cat([x, torch.zeros_like(concat)], dim=1), torch.cat([x, concat], dim=1)])
            contexts = torch.cat([torch.zeros_like(context), context])
            out_uncond, out_cond = self.unet(sample, torch.cat([t, t]), encoder_hidden_states=contexts).sample.float().chunk(2)
            out = guide(out_uncond, out_cond, guidance_scale)  # in float32: s = 100 amplifies fp16 error
            out = rescale_guidance(out, out_cond, guidance_rescale)
            if guided is not None:
                out = limit_guidance(out, out_cond, guided)
        if self.prediction_type == "v_prediction":
            # ε is affine in v with weights shared by both branches, so guiding v then converting is
            # guiding ε.
            out = epsilon_from_velocity(out, x.float(), self.alpha_bars[t])
        return out

    @torch.no_grad()
    def denoise(self, z: Tensor, sigma: Tensor, pose: Tensor, guidance_scale: float, guidance_min_t: int = 0) -> Tensor:
        """D(z, σ) = z − σ_t·ε̂(z/sqrt(1+σ_t²), t), σ_t the schedule level nearest to σ.

        z: [B, 4, h, w] noisy scaled latents; sigma: [B] (or a scalar); pose: [B, 4].
        guidance_min_t: as in `predict_noise`, of the snapped timestep t(σ).
        """
        z = z.to(self.device, torch.float32)
        n = z.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1).expand(n)
        t = nearest_timestep(sigma, self.sigmas)
        sigma_t = self.sigmas[t].view(n, 1, 1, 1)
        eps = self.predict_noise(z / torch.sqrt(1.0 + sigma_t**2), t, pose, guidance_scale,
                                 guidance_min_t=guidance_min_t)
        return z - sigma_t * eps

    # -- the autoencoder ---------------------------------------------------------------------

    def encode(self, rgb: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Images [B, H, W, 3] in [0, 1] → scaled latents [B, c, H/f, W/f] (priors/vae.py)."""
        return vae_io.encode_scaled(self.vae, rgb, sample, generator)

    def decode(self, z: Tensor, clamp: bool = True) -> Tensor:
        """Scaled latents [B, c, h, w] → images [B, f·h, f·w, 3] (priors/vae.py)."""
        return vae_io.decode_scaled(self.vae, z, clamp)


def load_zero123(
    source: str = DEFAULT_MODEL,
    *,
    image_encoder: str | None = None,
    stable: str = "auto",
    dtype=None,
    device="cpu",
) -> Zero123Prior:
    """A ready Zero123Prior from a hub id, a local diffusers folder (either layout) or a `.ckpt`.

    image_encoder: CLIP image encoder (hub id or folder) for sources without their own: a
        `.ckpt` (default PriorConfig.image_encoder) or a folder lacking image_encoder/.
    stable: "auto" (the source's name contains "stable"), "yes" or "no".
    dtype: None/"auto" = float16 on CUDA, float32 elsewhere.
    Raises ModelNotFoundError (one line) when the weights cannot be found or read.
    """
    return Zero123Prior.from_parts(load_parts(source, image_encoder=image_encoder, stable=stable, dtype=dtype, device=device))
