"""Each Zero-1-to-3 conditioning fact (DESIGN.md §4), checked numerically on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sjc3d.priors.zero123 import (
    CLIP_MEAN,
    CLIP_STD,
    alphas_cumprod_from_config,
    clip_preprocess,
    load_zero123,
    nearest_timestep,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def prior(tiny_zero123_prior):
    torch.manual_seed(0)
    image = torch.rand(64, 64, 3)
    tiny_zero123_prior.condition(image, 15.0, 2.0)
    tiny_zero123_prior.test_image = image
    return tiny_zero123_prior


def _model_input(image: torch.Tensor) -> torch.Tensor:
    return image.permute(2, 0, 1)[None] * 2 - 1


def _poses() -> torch.Tensor:
    return torch.tensor([[0.3, 0.5, math.sqrt(0.75), 0.0], [-0.2, -1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]])


def test_concat_latent_is_the_unscaled_posterior_mode(prior):
    posterior = prior.vae.encode(_model_input(prior.test_image)).latent_dist
    torch.testing.assert_close(prior.concat_latent, posterior.mode(), rtol=0, atol=0)
    assert not torch.allclose(posterior.mode(), posterior.mode() * prior.scaling_factor)
    assert prior.concat_latent.shape == (1, 4, 8, 8)


def test_clip_preprocessing_is_bicubic_224_without_crop_then_mean_std(prior):
    x = _model_input(prior.test_image)
    expected = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    expected = ((expected + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip_preprocess(x), expected, rtol=0, atol=0)
    embeds = prior.image_encoder(pixel_values=expected).image_embeds
    torch.testing.assert_close(prior.clip_embedding, embeds, rtol=0, atol=1e-6)
    # no crop: the image's corners survive the resize (align_corners keeps them exactly)
    corners = clip_preprocess(x)[0, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    x_corners = ((x[0, :, [0, 0, -1, -1], [0, -1, 0, -1]] + 1) / 2 - torch.tensor(CLIP_MEAN)[:, None]) / torch.tensor(CLIP_STD)[:, None]
    torch.testing.assert_close(corners, x_corners, rtol=0, atol=1e-5)


def test_context_is_the_saved_projection_of_embedding_then_pose(prior, tiny_zero123):
    """context = W·[CLIP embedding ‖ T] + b with W, b as the file on disk holds them (not the loaded module)."""
    from safetensors.torch import load_file

    saved = load_file(str(tiny_zero123["ccp"] / "clip_camera_projection" / "diffusion_pytorch_model.safetensors"))
    weight, bias = saved["proj.weight"], saved["proj.bias"]  # [768, 772], [768]
    assert weight.shape == (768, 772)
    pose = _poses()
    # The first 768 inputs see the embedding, the last 4 the pose [Δpolar, sin Δaz, cos Δaz, Δradius].
    expected = prior.clip_embedding @ weight[:, :768].T + pose @ weight[:, 768:].T + bias
    context = prior.context(pose)
    assert context.shape == (3, 1, 768)
    torch.testing.assert_close(context[:, 0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(context[0], context[1])


def _eps(prior, x, t, context, concat):
    return prior.unet(torch.cat([x, concat], dim=1), t, encoder_hidden_states=context).sample


def test_guidance_uses_zero_context_and_zero_concat_for_the_unconditional_branch(prior):
    torch.manual_seed(1)
    x, t, pose, s = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990]), _poses(), 7.5
    context = prior.context(pose)
    concat = prior.concat_latent.expand(3, -1, -1, -1)
    with torch.no_grad():
        eps_c = _eps(prior, x, t, context, concat)
        eps_u = _eps(prior, x, t, torch.zeros_like(context), torch.zeros_like(concat))
    expected = eps_u + s * (eps_c - eps_u)
    # (batch 2B vs two calls of B: float32 convolution order differs by ~1e-5)
    torch.testing.assert_close(prior.predict_noise(x, t, pose, s), expected, rtol=1e-4, atol=1e-4)
    wrong = eps_c + s * (eps_c - eps_u)  # the other common formula must not be what we do
    assert not torch.allclose(prior.predict_noise(x, t, pose, s), wrong, atol=1e-3)
    # s = 1 is exactly the conditional prediction
    torch.testing.assert_close(prior.predict_noise(x, t, pose, 1.0), eps_c, rtol=0, atol=0)


def test_guidance_rescale_gives_the_guided_prediction_the_conditional_spread(prior):
    from sjc3d.priors.zero123 import rescale_guidance

    torch.manual_seed(5)
    x, t, pose, s = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990]), _poses(), 10.0
    eps_c = prior.predict_noise(x, t, pose, 1.0)
    guided = prior.predict_noise(x, t, pose, s)
    full = rescale_guidance(guided, eps_c, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), eps_c.std(dim=(1, 2, 3)))  # per sample
    torch.testing.assert_close(full / full.std(dim=(1, 2, 3), keepdim=True),
                               guided / guided.std(dim=(1, 2, 3), keepdim=True))  # only the scale changes
    assert rescale_guidance(guided, eps_c, 0.0) is guided
    torch.testing.assert_close(prior.predict_noise(x, t, pose, s, guidance_rescale=0.7),
                               0.7 * full + 0.3 * guided, rtol=1e-4, atol=1e-4)


def test_guidance_below_its_min_t_is_the_conditional_prediction(prior):
    """guidance_min_t: rows with t ≥ it are guided, the others are the conditional ε alone."""
    torch.manual_seed(6)
    x, t, pose, s = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990]), _poses(), 7.0
    eps_c = prior.predict_noise(x, t, pose, 1.0)
    guided = prior.predict_noise(x, t, pose, s)
    limited = prior.predict_noise(x, t, pose, s, guidance_min_t=500)
    torch.testing.assert_close(limited[0], eps_c[0], rtol=1e-4, atol=1e-4)  # t = 10 < 500
    torch.testing.assert_close(limited[1:], guided[1:], rtol=1e-4, atol=1e-4)  # t = 500, 990
    assert not torch.allclose(guided[0], eps_c[0], atol=1e-3)  # so the first check can fail
    torch.testing.assert_close(prior.predict_noise(x, t, pose, s, guidance_min_t=0), guided, rtol=0, atol=0)
    # no row guided: the unconditional branch is not even run, exactly the s = 1 prediction
    torch.testing.assert_close(prior.predict_noise(x, t, pose, s, guidance_min_t=1000), eps_c, rtol=0, atol=0)
    # the VE denoiser passes it on
    sigma = prior.sigmas[t]
    torch.testing.assert_close(prior.denoise(x, sigma, pose, s, guidance_min_t=1000), prior.denoise(x, sigma, pose, 1.0),
                               rtol=0, atol=0)


def test_denoiser_is_the_ve_form_of_the_guided_prediction(prior):
    torch.manual_seed(2)
    z, pose, s = torch.randn(3, 4, 8, 8) * 3, _poses(), 3.0
    t = torch.tensor([20, 300, 900])
    sigma = prior.sigmas[t]
    eps = prior.predict_noise(z / torch.sqrt(1 + sigma**2).view(3, 1, 1, 1), t, pose, s)
    expected = z - sigma.view(3, 1, 1, 1) * eps
    torch.testing.assert_close(prior.denoise(z, sigma, pose, s), expected, rtol=1e-5, atol=1e-5)
    # σ between two levels snaps to the nearest one (as the original 3drec code does)
    nudged = sigma * (1 + 1e-4)
    torch.testing.assert_close(prior.denoise(z, nudged, pose, s), expected, rtol=1e-5, atol=1e-5)
    # batching over poses changes nothing
    single = torch.cat([prior.denoise(z[i : i + 1], sigma[i : i + 1], pose[i : i + 1], s) for i in range(3)])
    torch.testing.assert_close(prior.denoise(z, sigma, pose, s), single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_a_v_prediction_model_is_turned_into_epsilon(prior, scale):
    """The same UNet read as a v-model: predict_noise returns √ᾱ·v̂ + √(1−ᾱ)·x, guided, for SJC and DDIM alike."""
    from sjc3d.priors.zero123 import Zero123Prior

    v_prior = Zero123Prior(prior.unet, prior.vae, prior.image_encoder, prior.projection,
                           {**prior.scheduler_config, "prediction_type": "v_prediction"})
    v_prior.condition(prior.test_image, 15.0, 2.0)
    torch.manual_seed(4)
    x, t, pose = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990]), _poses()
    v = prior.predict_noise(x, t, pose, scale)  # the ε-configured prior returns the UNet's raw (guided) output
    a = prior.alphas_cumprod[t].float().view(3, 1, 1, 1)
    torch.testing.assert_close(v_prior.predict_noise(x, t, pose, scale), a.sqrt() * v + (1 - a).sqrt() * x,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        Zero123Prior(prior.unet, prior.vae, prior.image_encoder, prior.projection,
                     {**prior.scheduler_config, "prediction_type": "sample"})


def test_sigmas_are_those_of_the_ddpm_schedule(prior):
    import numpy as np
    from diffusers import DDPMScheduler

    # the original 3drec code: float64 numpy, betas = linspace(√β0, √β1)²
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1 - betas)
    expected = torch.from_numpy(np.sqrt((1 - alphas) / alphas)).float()
    assert prior.sigmas.shape == (1000,)
    torch.testing.assert_close(prior.sigmas, expected, rtol=1e-7, atol=0)
    # and diffusers' own (float32) schedule agrees to its precision
    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    torch.testing.assert_close(prior.sigmas, ((1 - reference) / reference).sqrt(), rtol=1e-4, atol=0)
    assert torch.all(prior.sigmas[1:] > prior.sigmas[:-1])
    alphas = alphas_cumprod_from_config(prior.scheduler_config)
    assert alphas.dtype == torch.float64
    assert nearest_timestep(torch.tensor([0.0, 1e9, float(prior.sigmas[123])]), prior.sigmas).tolist() == [0, 999, 123]


def test_stable_zero123_puts_the_input_polar_in_the_fourth_entry(tiny_zero123, prior):
    stable = load_zero123(str(tiny_zero123["stable"]))
    assert stable.stable and not prior.stable
    elevation = 15.0
    stable.condition(prior.test_image, elevation, 2.0)
    polar = math.radians(90 - elevation)
    assert stable.input_polar == pytest.approx(polar)
    pose = _poses()
    replaced = pose.clone()
    replaced[:, 3] = polar
    torch.testing.assert_close(stable.context(pose), prior.context(replaced), rtol=0, atol=1e-6)
    assert not torch.allclose(prior.context(pose), prior.context(replaced))


def test_encode_is_differentiable_and_decode_returns_images(prior):
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    z = prior.encode(rgb)
    assert z.shape == (2, 4, 8, 8)
    posterior = prior.vae.encode(rgb.detach().permute(0, 3, 1, 2) * 2 - 1).latent_dist
    torch.testing.assert_close(z.detach(), posterior.mean * prior.scaling_factor, rtol=1e-5, atol=1e-6)
    z.square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    images = prior.decode(z.detach())
    assert images.shape == (2, 64, 64, 3) and images.min() >= 0 and images.max() <= 1
    raw = prior.decode(z.detach(), clamp=False)
    torch.testing.assert_close(images, raw.clamp(0, 1))


def test_condition_resizes_other_sizes_to_the_training_size(prior):
    prior.condition(torch.rand(96, 96, 3), 0.0, 2.0)
    assert prior.concat_latent.shape == (1, 4, 8, 8)
    assert prior.input_polar == pytest.approx(math.pi / 2)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 0.015), (torch.bfloat16, 0.06)])
def test_reduced_precision_denoise_at_guidance_100_stays_close_to_float32(tiny_zero123, prior, dtype, tolerance):
    """fp16 (what CUDA runs) and bf16 against fp32 at the reference guidance 100, on the CPU.

    Guidance multiplies the difference of two predictions by 100, so precision matters here.
    Measured on this tiny model, largest relative error of D over 4 noise levels: fp16 0.0049,
    bf16 0.035 (cosine to fp32 > 0.9993); a model that drops the zero concat of the
    unconditional branch in its reduced-precision path is off by 0.95.
    """
    half = load_zero123(str(tiny_zero123["ccp"]), dtype=dtype)
    assert half.dtype == dtype and next(half.unet.parameters()).dtype == dtype
    half.condition(prior.test_image, 15.0, 2.0)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([20, 200, 500, 900])
    sigma = prior.sigmas[t].view(4, 1, 1, 1)
    y = torch.randn(4, 4, 8, 8, generator=g)
    z = y + sigma * torch.randn(4, 4, 8, 8, generator=g)
    pose = torch.cat([_poses(), torch.tensor([[0.5, 0.0, -1.0, 0.1]])])
    full, low = prior.denoise(z, sigma, pose, 100.0), half.denoise(z, sigma, pose, 100.0)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    error = (low - full).flatten(1).norm(dim=1) / full.flatten(1).norm(dim=1)
    assert error.max() < tolerance, f"{dtype}: relative error {error.tolist()}"
    score_full, score_low = (full - y) / sigma, (low - y) / sigma  # the gradient SJC chains
    assert F.cosine_similarity(score_low.flatten(1), score_full.flatten(1)).min() > 0.998


@pytest.mark.cuda
def test_fp16_on_cuda(tiny_zero123):
    prior = load_zero123(str(tiny_zero123["ccp"]), device="cuda")
    assert prior.dtype == torch.float16
    prior.condition(torch.rand(64, 64, 3), 0.0, 2.0)
    out = prior.denoise(torch.randn(4, 4, 8, 8), prior.sigmas[[10, 200, 500, 900]], _poses()[[0, 1, 2, 0]], 100.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
