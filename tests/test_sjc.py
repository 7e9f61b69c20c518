"""SJC math against a denoiser with a closed form: Gaussian data N(μ, s²I).

For that data the ideal denoiser is D(z, σ) = μ + s²/(s² + σ²)·(z − μ), so with z = y + σn
    Eq. 16: (D − y)/σ = σ(μ − y)/(s² + σ²) + s²/(s² + σ²)·n
    Eq. 15: (D − z)/σ = σ(μ − y)/(s² + σ²) − σ²/(s² + σ²)·n
Both point from y toward μ in expectation, with magnitude σ|μ − y|/(s² + σ²).
"""

import pytest
import torch

from sjc3d import sjc

MU, S = 0.7, 0.5


def gaussian_denoiser(z, sigma):
    sigma = sigma.view(-1, *[1] * (z.dim() - 1))
    return MU + S**2 / (S**2 + sigma**2) * (z - MU)


def chained_gradients(y_value, sigma_value, variance_reduction, n=20000, seed=0):
    """θ.grad per draw for the render y = 2θ (so the chain rule contributes a factor 2)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.full((n, 1, 1, 1), y_value / 2, requires_grad=True)
    y = 2 * theta
    sigmas = torch.full((1000,), sigma_value)
    draw = sjc.draw_noise(y, sigmas, 0, 999, g)
    grad = sjc.sjc_gradient(y, draw, gaussian_denoiser(draw.z, draw.sigma), variance_reduction)
    sjc.chain_loss(y, grad).backward()
    return theta.grad.flatten()


@pytest.mark.parametrize("variance_reduction", [True, False])
@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_chained_gradient_sign_and_magnitude(variance_reduction, sigma):
    y = -0.5
    grads = chained_gradients(y, sigma, variance_reduction)
    expected_score = sigma * (MU - y) / (S**2 + sigma**2)  # ascent direction on y
    expected = -2 * expected_score  # θ.grad = −(∂y/∂θ)·g: descent on it moves y toward μ
    standard_error = grads.std() / len(grads) ** 0.5
    assert grads.mean().item() == pytest.approx(expected, abs=5 * standard_error.item())
    assert grads.mean() < 0  # y < μ, so the step must increase θ


@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_noise_variance_of_eq15_and_eq16(sigma):
    for variance_reduction, factor in ((True, S**2), (False, sigma**2)):
        grads = chained_gradients(0.0, sigma, variance_reduction)
        expected_std = 2 * factor / (S**2 + sigma**2)
        assert grads.std().item() == pytest.approx(expected_std, rel=0.05)


def test_eq16_is_lower_variance_at_large_noise():
    assert chained_gradients(0.0, 3.0, True).std() < 0.2 * chained_gradients(0.0, 3.0, False).std()


def test_descent_with_the_chained_score_converges_to_the_mode():
    torch.manual_seed(0)
    theta = torch.zeros(64, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=0.05)
    alphas = sjc.ddpm_alphas_cumprod()
    sigmas = sjc.ve_sigmas(alphas).float()
    for _ in range(400):
        y = theta.view(1, 64)
        draw = sjc.draw_noise(y, sigmas, 300, 900)
        grad = sjc.sjc_gradient(y, draw, gaussian_denoiser(draw.z, draw.sigma))
        optimizer.zero_grad()
        sjc.chain_loss(y, grad).backward()
        optimizer.step()
    # Started 0.7 away; SGD noise leaves each element jittering around the mode.
    assert abs(theta.mean().item() - MU) < 0.05
    assert (theta - MU).abs().mean() < 0.15


def test_ve_sigmas_of_the_stable_diffusion_schedule():
    from diffusers import DDPMScheduler

    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    alphas = sjc.ddpm_alphas_cumprod()
    assert torch.allclose(alphas, reference.double(), rtol=1e-6)
    sigmas = sjc.ve_sigmas(alphas).float()
    assert sigmas[0].item() == pytest.approx((0.00085 / (1 - 0.00085)) ** 0.5, rel=1e-4)
    assert torch.all(sigmas[1:] > sigmas[:-1])
    assert 14 < sigmas[-1].item() < 15.5


def test_draw_noise_and_timestep_lookup():
    sigmas = sjc.ve_sigmas(sjc.ddpm_alphas_cumprod()).float()
    y = torch.zeros(256, 4, 2, 2)
    draw = sjc.draw_noise(y, sigmas, 10, 969, torch.Generator().manual_seed(1))
    assert draw.t.min() >= 10 and draw.t.max() <= 969
    assert torch.equal(draw.sigma, sigmas[draw.t])
    assert torch.allclose(draw.z, draw.sigma.view(-1, 1, 1, 1) * draw.noise)
    assert torch.equal(sjc.nearest_timestep(draw.sigma, sigmas), draw.t)


def test_clip_gradient():
    g = torch.tensor([-5.0, 0.5, 5.0])
    assert torch.equal(sjc.clip_gradient(g, 1.0), torch.tensor([-1.0, 0.5, 1.0]))
    assert torch.equal(sjc.clip_gradient(g, 0.0), g)
