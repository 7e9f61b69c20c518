"""End-to-end quality: fit an RGB field to views of an analytic scene and check a held-out view.

The reference images come from an independent ray tracer written here (exact ray-sphere
intersection, opaque spheres, white background), so a bug shared by the field and the renderer
cannot hide itself.  The scene: two spheres of different colours, shaded by a fixed light (the
shading is view-independent, so a radiance field without view dependence can represent it).
"""

from __future__ import annotations

import math
import time

import torch

from sjc3d.cameras import camera_rays, spherical_to_c2w
from sjc3d.config import FieldConfig, RenderConfig
from sjc3d.fields import build_field
from sjc3d.render import build_renderer

SPHERES = [  # centre, radius, colour
    ((0.30, 0.00, 0.00), 0.30, (0.90, 0.25, 0.20)),
    ((-0.30, 0.10, 0.05), 0.25, (0.20, 0.35, 0.90)),
]
LIGHT = torch.nn.functional.normalize(torch.tensor([0.4, 0.3, 0.85]), dim=0)
FOV, RADIUS, RES = 40.0, 2.7, 32


def trace_spheres(rays_o: torch.Tensor, rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic render: rays [N, 3] → colour [N, 3] over white and hit mask [N] (bool)."""
    best_t = torch.full(rays_o.shape[:1], math.inf)
    colour = torch.ones(rays_o.shape[0], 3)
    for centre, radius, rgb in SPHERES:
        c = torch.tensor(centre)
        oc = rays_o - c
        b = (oc * rays_d).sum(-1)  # |d| = 1: t² + 2bt + (|oc|² − r²) = 0
        disc = b * b - (oc.square().sum(-1) - radius**2)
        t = -b - disc.clamp_min(0).sqrt()
        hit = (disc > 0) & (t > 0) & (t < best_t)
        normal = torch.nn.functional.normalize(rays_o + t[:, None] * rays_d - c, dim=-1)
        shade = 0.45 + 0.55 * (normal @ LIGHT).clamp_min(0)
        colour = torch.where(hit[:, None], torch.tensor(rgb) * shade[:, None], colour)
        best_t = torch.where(hit, t, best_t)
    return colour, torch.isfinite(best_t)


def views(elevations, azimuths):
    c2w = spherical_to_c2w(torch.tensor(elevations, dtype=torch.float32), torch.tensor(azimuths, dtype=torch.float32),
                           torch.full((len(elevations),), RADIUS))
    rays_o, rays_d = camera_rays(c2w, FOV, RES)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    rgb, mask = trace_spheres(rays_o, rays_d)
    return c2w, rays_o, rays_d, rgb, mask


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean()))


def test_analytic_tracer_sanity():
    _, _, _, rgb, mask = views([20.0], [0.0])
    assert 0.05 < mask.float().mean() < 0.6  # both spheres in frame, plenty of background
    assert torch.allclose(rgb[~mask], torch.ones(1, 3))


def test_fit_two_spheres_held_out_psnr():
    torch.manual_seed(0)
    n_views = 20
    golden = math.pi * (3 - math.sqrt(5))  # azimuths on a golden-angle spiral, elevations −20°…60°
    elev = [-20.0 + 80.0 * (i + 0.5) / n_views for i in range(n_views)]
    azim = [math.degrees(i * golden) % 360 - 180 for i in range(n_views)]
    _, rays_o, rays_d, target, _ = views(elev, azim)

    field_cfg = FieldConfig(
        output="rgb", n_levels=12, log2_hashmap_size=15, base_resolution=8,
        per_level_scale=(256 / 8) ** (1 / 11), hidden_dim=32, blob_radius=0.7,
    )
    field = build_field(field_cfg)
    renderer = build_renderer(field, RenderConfig(estimator="dense", n_samples=48))
    n_steps, batch = 160, 1024
    optim = torch.optim.Adam(field.parameters(), lr=2e-2, eps=1e-15)
    decay = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.1 ** (s / n_steps))  # 2e-2 → 2e-3
    background = torch.ones(3)

    start = time.perf_counter()
    renderer.train()
    for step in range(n_steps):
        pick = torch.randint(0, rays_o.shape[0], (batch,))
        out = renderer.render_rays(rays_o[pick], rays_d[pick], background)
        loss = (out.features - target[pick]).square().mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        decay.step()
    fit_seconds = time.perf_counter() - start

    # Held-out view: between training azimuths and above every training elevation but one.
    c2w, _, _, held_rgb, held_mask = views([35.0], [100.0])
    renderer.eval()
    with torch.no_grad():
        render = renderer.render_views(c2w, FOV, RES, background)
    got = render.features.reshape(-1, 3)
    score = psnr(got, held_rgb)
    agreement = float(((render.opacity.reshape(-1) > 0.5) == held_mask).float().mean())
    print(f"fit {fit_seconds:.1f}s, held-out PSNR {score:.2f} dB, mask agreement {agreement:.3f}")
    assert score >= 25.0
    assert agreement >= 0.97
