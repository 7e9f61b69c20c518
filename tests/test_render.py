"""Volume renderer: box clipping, quadrature against closed forms, views, chunking, fallbacks."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from sjc3d.cameras import spherical_to_c2w
from sjc3d.config import FieldConfig, RenderConfig
from sjc3d.fields import build_field
from sjc3d.fields.base import FieldOutput
from sjc3d.render import build_renderer
from sjc3d.render.volume import ray_box_intersect, stratified_intervals


class ConstantField(nn.Module):
    """σ constant inside the box, a fixed colour; a parameter so gradients can be checked."""

    def __init__(self, sigma: float, colour=(0.2, 0.4, 0.6), bound: float = 1.0):
        super().__init__()
        self.bound = bound
        self.n_channels = len(colour)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.colour = nn.Parameter(torch.tensor(colour))

    def density(self, points):
        inside = (points.abs() <= self.bound).all(-1)
        return torch.where(inside, self.log_sigma.exp().expand(points.shape[0]), torch.zeros(()))

    def forward(self, points):
        return FieldOutput(self.density(points), self.colour.expand(points.shape[0], -1))


def test_ray_box_intersect():
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 2.0, 0.0], [-3.0, 0.5, 0.5]])
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), dim=-1)
    near, far = ray_box_intersect(o, d, 1.0)
    assert torch.allclose(near[[0, 1, 3]], torch.tensor([2.0, 0.0, 2.0]))
    assert torch.allclose(far[[0, 1, 3]], torch.tensor([4.0, 1.0, 4.0]))
    assert far[2] <= near[2]  # passes above the box
    diag = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 1.0]]), dim=-1)
    n2, f2 = ray_box_intersect(-3 * diag, diag, 1.0)
    assert torch.allclose(f2 - n2, torch.tensor([2 * math.sqrt(3)]))


def test_stratified_intervals_tile_the_segment():
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.5])
    s, e, t = stratified_intervals(near, far, 8, jitter=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s[:, 0], near) and torch.allclose(e[:, -1], far)
    assert torch.allclose(s[:, 1:], e[:, :-1])
    assert ((t >= s) & (t <= e)).all()
    _, _, mid = stratified_intervals(near, far, 8, jitter=False)
    assert torch.allclose(mid, (s + e) / 2)


@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_constant_density_matches_closed_form(sigma):
    """Opacity through a homogeneous box is 1 − exp(−σ·chord); colour blends with the background."""
    field = ConstantField(sigma)
    renderer = build_renderer(field, RenderConfig(estimator="dense", n_samples=64)).eval()
    torch.manual_seed(0)
    o = torch.tensor([[-3.0, 0.0, 0.0], [-2.5, 0.3, -0.2], [0.0, -4.0, 0.5]])
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, -0.1, 0.05], [0.1, 1.0, 0.0]]), dim=-1)
    near, far = ray_box_intersect(o, d, 1.0)
    chord = far - near
    bg = torch.tensor([1.0, 1.0, 1.0])
    out = renderer.render_rays(o, d, bg)
    alpha = 1 - torch.exp(-sigma * chord)
    assert torch.allclose(out.opacity.squeeze(-1), alpha, atol=1e-5)
    assert torch.allclose(out.features, alpha[:, None] * field.colour + (1 - alpha[:, None]) * bg, atol=1e-5)
    # E[t] of an exponential entry distribution truncated to the chord (midpoint rule: O(δ²)).
    expected = near * alpha + (1 - torch.exp(-sigma * chord) * (1 + sigma * chord)) / sigma
    assert torch.allclose(out.depth.squeeze(-1), expected, rtol=1e-3)


def test_missed_rays_show_the_background():
    field = ConstantField(5.0)
    renderer = build_renderer(field, RenderConfig(estimator="dense", n_samples=16))
    o = torch.tensor([[-3.0, 2.0, 0.0], [-3.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.9, 0.9]])  # per-ray background
    out = renderer.render_rays(o, d, bg)
    assert out.opacity[0] == 0 and out.depth[0] == 0 and torch.equal(out.features[0], bg[0])
    assert out.opacity[1] > 0.99


def test_near_far_clip():
    field = ConstantField(1.0)
    renderer = build_renderer(field, RenderConfig(estimator="dense", n_samples=32, near=2.5, far=3.0)).eval()
    out = renderer.render_rays(torch.tensor([[-3.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(3))
    assert torch.allclose(out.opacity, torch.tensor([[1 - math.exp(-0.5)]]), atol=1e-5)


def test_training_mode_jitters_eval_mode_does_not():
    torch.manual_seed(0)
    field = build_field(FieldConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, hidden_dim=16))
    renderer = build_renderer(field, RenderConfig(estimator="dense", n_samples=24))
    o, d = torch.tensor([[-3.0, 0.1, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    renderer.eval()
    a, b = renderer.render_rays(o, d, torch.ones(4)), renderer.render_rays(o, d, torch.ones(4))
    assert torch.equal(a.depth, b.depth)
    renderer.train()
    c = renderer.render_rays(o, d, torch.ones(4))
    assert not torch.equal(a.depth, c.depth)
    assert torch.allclose(a.depth, c.depth, rtol=0.1)


def test_render_views_shapes_chunking_and_gradients():
    torch.manual_seed(0)
    field = build_field(FieldConfig(output="rgb", n_levels=4, log2_hashmap_size=10, base_resolution=4, hidden_dim=16))
    c2w = spherical_to_c2w(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.tensor([2.0, 2.5]))
    whole = build_renderer(field, RenderConfig(estimator="dense", n_samples=16)).eval()
    chunked = build_renderer(field, RenderConfig(estimator="dense", n_samples=16, chunk=100)).eval()
    with torch.no_grad():
        a = whole.render_views(c2w, 49.1, 12, torch.ones(3))
        b = chunked.render_views(c2w, 49.1, 12, torch.ones(3))
    assert a.features.shape == (2, 12, 12, 3) and a.opacity.shape == (2, 12, 12, 1) and a.depth.shape == (2, 12, 12, 1)
    assert torch.allclose(a.features, b.features, atol=1e-6) and torch.allclose(a.depth, b.depth, atol=1e-5)
    assert (a.opacity[:, 6, 6] > 0.5).all()  # the blob in the middle of the frame
    assert (a.opacity[:, 0, 0] < a.opacity[:, 6, 6]).all()
    out = whole.render_views(c2w[:1], 49.1, 8, torch.ones(3))  # grad enabled: one pass
    out.features.sum().backward()
    assert field.encoding.planes.grad.abs().sum() > 0


def test_cpu_render_never_loads_nerfacc_cuda():
    field = ConstantField(1.0)
    with pytest.warns(UserWarning, match="dense"):
        renderer = build_renderer(field, RenderConfig(estimator="occgrid"))
    assert not renderer.uses_occgrid
    renderer.update(0)  # a no-op on the dense path
    renderer.render_rays(torch.tensor([[-3.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(3))
    assert "nerfacc.cuda._backend" not in sys.modules


def test_state_dict_from_an_occgrid_run_loads_on_the_dense_path():
    """An occupancy-grid run (CUDA) saves the dense `occupied` grid and nerfacc's estimator buffers; the
    dense path takes the occupancy over bit for bit and skips the estimator.  Bad states still refuse."""
    cfg = RenderConfig(estimator="dense", occ_resolution=16)
    renderer = build_renderer(ConstantField(1.0), cfg)
    assert set(renderer.state_dict()) == {"occupied"}  # the field's parameters are not the renderer's
    pattern = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    occgrid_state = {"occupied": pattern, "estimator.occs": torch.rand(16**3),
                     "estimator.binaries": torch.zeros(1, 16, 16, 16, dtype=torch.bool)}
    assert not torch.equal(renderer.occupied, pattern)
    renderer.load_state_dict(occgrid_state)
    assert torch.equal(renderer.occupied, pattern)
    assert set(renderer.state_dict()) == {"occupied"}  # nothing of the estimator was adopted
    with pytest.raises(RuntimeError, match="size mismatch for occupied"):  # another occ_resolution
        renderer.load_state_dict(dict(occgrid_state, occupied=torch.ones(8, 8, 8, dtype=torch.bool)))
    with pytest.raises(RuntimeError, match="Unexpected key"):  # same path: strict as usual
        renderer.load_state_dict({"occupied": pattern, "ocupied": pattern})
    with pytest.raises(RuntimeError, match="Unexpected key"):  # other path: only estimator.* may differ
        renderer.load_state_dict(dict(occgrid_state, ocupied=pattern))
    with pytest.raises(RuntimeError, match="Missing key"):
        renderer.load_state_dict({k: v for k, v in occgrid_state.items() if k != "occupied"})


@pytest.mark.cuda
def test_occgrid_matches_dense_on_a_smooth_field():
    from sjc3d.render.volume import nerfacc_cuda_available

    if not nerfacc_cuda_available():
        pytest.skip("nerfacc's CUDA extension is not available")
    torch.manual_seed(0)
    field = build_field(FieldConfig(backend="torch", output="rgb"), device="cuda")
    dense = build_renderer(field, RenderConfig(estimator="dense", n_samples=512), device="cuda").eval()
    occ = build_renderer(field, RenderConfig(estimator="occgrid"), device="cuda").eval()
    assert occ.uses_occgrid
    c2w = spherical_to_c2w(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([2.0])).cuda()
    with torch.no_grad():
        a = dense.render_views(c2w, 49.1, 32, torch.ones(3, device="cuda"))
        b = occ.render_views(c2w, 49.1, 32, torch.ones(3, device="cuda"))
    assert (a.opacity - b.opacity).abs().mean() < 0.02
    assert (a.features - b.features).abs().mean() < 0.02
    assert (a.depth - b.depth).abs().mean() < 0.05


def test_skipping_empty_cells_matches_the_full_render_with_fewer_queries():
    torch.manual_seed(0)
    field = build_field(FieldConfig(output="rgb", n_levels=4, log2_hashmap_size=10, base_resolution=4, hidden_dim=16))
    queried = []
    original = field.forward
    field.forward = lambda points: queried.append(points.shape[0]) or original(points)
    c2w = spherical_to_c2w(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.0]))
    full = build_renderer(field, RenderConfig(estimator="dense", n_samples=32, skip_empty=False)).eval()
    skipping = build_renderer(field, RenderConfig(estimator="dense", n_samples=32, occ_resolution=32)).eval()
    assert 0.01 < skipping.occupied.float().mean() < 0.5  # the blob, not the whole box
    with torch.no_grad():
        queried.clear()
        a = full.render_views(c2w, 49.1, 16, torch.ones(3))
        n_full = sum(queried)
        queried.clear()
        b = skipping.render_views(c2w, 49.1, 16, torch.ones(3))
        n_skipping = sum(queried)
    assert n_skipping < 0.6 * n_full
    assert (a.opacity - b.opacity).abs().max() < 0.02
    assert (a.features - b.features).abs().max() < 0.02
