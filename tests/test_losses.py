"""The loss terms against values worked out by hand, and their gradients' directions."""

from __future__ import annotations

import math

import pytest
import torch

from sjc3d import losses
from sjc3d.config import RenderConfig
from sjc3d.render.volume import VolumeRenderer


def image(rows: list[list[float]]) -> torch.Tensor:
    """A [1, H, W, 1] image from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, :, :, None]


def test_rgb_loss_is_the_mse_on_the_minus_one_one_scale():
    render, target = torch.full((1, 2, 2, 3), 0.75), torch.full((1, 2, 2, 3), 0.25)
    # On [-1, 1] the two images are 0.5 and -0.5: every squared difference is 1.
    assert losses.rgb_loss(render, target).item() == pytest.approx(1.0)


def test_depth_smoothness_l1_by_hand():
    ramp = image([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])  # |∂x| = 1 everywhere, ∂y = 0
    assert losses.depth_smoothness_l1(ramp).item() == pytest.approx(0.5)
    step = image([[0.0, 0.0], [4.0, 4.0]])  # ∂x = 0, |∂y| = 4
    assert losses.depth_smoothness_l1(step).item() == pytest.approx(2.0)


def test_depth_over_background_makes_the_silhouette_count():
    depth = image([[0.0, 0.0, 0.0], [0.0, 1.8, 0.0], [0.0, 0.0, 0.0]])  # Σ w t of one opaque pixel at t = 1.8
    opacity = image([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    full = losses.depth_over_background(depth, opacity, 10.0)
    assert full[0, 1, 1, 0].item() == pytest.approx(1.8) and full[0, 0, 0, 0].item() == pytest.approx(10.0)
    # Each direction: 2 of the 6 neighbour pairs jump by 8.2 → mean 2.733; the loss averages x and y.
    assert losses.depth_smoothness_l1(full).item() == pytest.approx(2 * 8.2 / 6)
    # The squared variant counts covered pairs only: a lone covered pixel has none.
    assert losses.depth_smoothness_squared(depth, opacity).item() == 0.0


def test_near_view_l1_trains_both_renders_and_mse_only_the_near_one():
    a = torch.tensor([[0.2, 0.4]], requires_grad=True)
    b = torch.tensor([[0.5, 0.1]], requires_grad=True)
    da = torch.tensor([[2.0]], requires_grad=True)
    db = torch.tensor([[2.5]], requires_grad=True)
    loss = losses.near_view_l1(a, b, da, db)
    assert loss.item() == pytest.approx((0.3 + 0.3) / 2 + 0.5)
    loss.backward()
    assert torch.equal(a.grad, -b.grad) and a.grad.abs().sum() > 0 and da.grad.item() == -db.grad.item() == -1.0
    a.grad = b.grad = None
    losses.near_view_mse(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad is None


def test_emptiness_forms_by_hand_and_their_pull():
    w = torch.tensor([0.5, 0.0, 0.0, 0.1], requires_grad=True)  # two rays' samples, packed
    zero123 = losses.emptiness_loss(w, n_rays=2, scale=10.0, form="zero123")
    expected = (-0.25 * math.log(6.0) - 0.05 * math.log(2.0)) / 2
    assert zero123.item() == pytest.approx(expected)
    zero123.backward()
    assert (w.grad[[0, 3]] < 0).all()  # 3drec's "negative emptiness": descending it grows weights
    w.grad = None
    sjc_form = losses.emptiness_loss(w, n_rays=2, scale=10.0, form="sjc")
    assert sjc_form.item() == pytest.approx((math.log(6.0) + math.log(2.0)) / 2)
    sjc_form.backward()
    assert (w.grad > 0).all()  # SJC's: descending it empties space
    # Padding a ray with empty samples changes nothing (a sum along rays, not a mean over samples).
    padded = torch.cat([w.detach(), torch.zeros(5)])
    assert losses.emptiness_loss(padded, 2, 10.0, "sjc").item() == pytest.approx(sjc_form.item())


def test_emptiness_schedules():
    assert losses.emptiness_factor(0, 100, 20.0, 0.5, "ramp") == 1.0
    assert losses.emptiness_factor(50, 100, 20.0, 0.5, "ramp") == pytest.approx(11.0)
    assert losses.emptiness_factor(49, 100, 20.0, 0.5, "step") == 1.0
    assert losses.emptiness_factor(50, 100, 20.0, 0.5, "step") == 20.0


class Slab(torch.nn.Module):
    """A field that is a slab of constant density for |x| < 0.3, empty elsewhere (RGB grey)."""

    bound, n_channels = 1.0, 3

    def __init__(self):
        super().__init__()
        self.sigma = torch.nn.Parameter(torch.tensor(4.0))

    def density(self, points):
        return torch.where(points[:, 0].abs() < 0.3, self.sigma, torch.zeros(()))

    def forward(self, points):
        from sjc3d.fields.base import FieldOutput

        return FieldOutput(self.density(points), torch.full((points.shape[0], 3), 0.5))


def test_renderer_per_sample_weights_sum_to_the_opacity():
    renderer = VolumeRenderer(Slab(), RenderConfig(estimator="dense", n_samples=64, skip_empty=False))
    rays_o = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.5, 0.0], [2.0, 3.0, 3.0]])  # through, through, misses the box
    rays_d = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    out = renderer.render_rays(rays_o, rays_d, torch.ones(3))
    assert out.weights.shape == (3 * 64,)
    per_ray = out.weights.view(3, 64).sum(-1)
    assert torch.allclose(per_ray, out.opacity[:, 0], atol=1e-6)
    assert out.opacity[0, 0].item() == pytest.approx(1 - math.exp(-4.0 * 0.6), abs=0.05)
    assert out.opacity[2, 0].item() == 0.0 and torch.equal(out.features[2], torch.ones(3))
    with torch.no_grad():
        assert renderer.render_rays(rays_o, rays_d, torch.ones(3)).weights is None
