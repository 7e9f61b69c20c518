"""One optimisation step: host syncs, optimiser groups, the deferred finiteness check, the terms.

Counting host syncs without a GPU.  On a GPU the CPU waits for the device whenever a value is
read back (`.item()`, `bool(t)`, `float(t)`, `.tolist()`, `.cpu()`) or an op's output size
depends on the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`).  Every one of
these reaches ATen as a recognisable op, so a `TorchDispatchMode` sees them on the CPU too:
`_local_scalar_dense` is what `.item()`/`bool()`/`float()` become, and the data-dependent ops
are matched by name (boolean `index` by its index dtype).  `.tolist()`, `.numpy()` and `.cpu()`
read CPU memory without dispatching an op, so they are counted by wrapping the methods.
`optimizer.step()` runs outside the count: torch's (non-capturable) optimisers keep their step
counters on the host, so the `.item()` they call on them never waits for a GPU.
"""

from __future__ import annotations

import collections
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sjc3d.cameras import c2w_to_spherical
from sjc3d.config import load_config
from sjc3d.errors import NonFiniteError
from sjc3d.image import resize_images
from sjc3d.step import build_stage, read_stats, train_step

aten = torch.ops.aten
DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "is_nonzero",
                  "_local_scalar_dense", "equal", "repeat_interleave"}


class SyncCounter(TorchDispatchMode):
    """Counts the ops (and tensor methods) that would make a CPU wait for a GPU."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or [])
        if name in DATA_DEPENDENT or boolean_index:
            self.calls[name] += 1
        return func(*args, **kwargs)


@pytest.fixture()
def count_syncs(monkeypatch):
    """Yields a function: count_syncs(fn, optimizer) → (fn's result, Counter of sync ops)."""
    from torch.utils._python_dispatch import _disable_current_modes

    def run(fn, optimizer=None):
        counter = SyncCounter()
        if optimizer is not None:
            step = optimizer.step

            def uncounted_step(*args, **kwargs):
                with _disable_current_modes():
                    return step(*args, **kwargs)

            monkeypatch.setattr(optimizer, "step", uncounted_step)
        for method in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, method)

            def wrapped(self, *args, _original=original, _name=method, **kwargs):
                counter.calls[_name] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, wrapped)
        try:
            with counter:
                result = fn()
        finally:
            monkeypatch.undo()
        return result, counter.calls

    return run


def tiny_stage(*overrides: str):
    """The oracle on the toy, small renders, with the reference's regularisers switched on."""
    config = load_config(["cpu-tiny"], ["camera.resolution=16", "render.n_samples=24", "train.steps=100",
                                        "loss.near_view=1e4", "loss.depth_smooth=1e4", "loss.near_view_mode=reference",
                                        "loss.depth_smooth_mode=reference", *overrides])
    stage = build_stage(config, None)
    # A fixed "denoised" image (the input view) in place of the oracle, which reads poses on the host.
    target = stage.prior.encode(resize_images(stage.view.rgb[None], config.camera.resolution))
    stage.prior.denoise = lambda z, sigma, pose, guidance_scale, **options: target.expand_as(z)
    return stage


@pytest.mark.parametrize("skip_empty, per_step", [(False, {}), (True, {"nonzero": 3})])
def test_a_step_syncs_only_where_the_renderer_compacts_and_reading_stats_once(count_syncs, skip_empty, per_step):
    """Non-logging steps: no sync in the step's own code.  With empty-space skipping, the dense
    renderer gathers occupied samples once per render (random views, near views, input view)."""
    stage = tiny_stage(f"render.skip_empty={str(skip_empty).lower()}", "loss.depth_smooth_start=0", "loss.emptiness=1")
    for step in (1, 2, 3):
        stats, calls = count_syncs(lambda: train_step(stage, step), stage.optimizer)
        assert dict(calls) == per_step, step
    floats, calls = count_syncs(lambda: read_stats(stage, stats))
    assert dict(calls) == {"tolist": 1}
    assert {"loss", "ref_color", "near_view", "depth_smooth", "input_depth_smooth", "emptiness"} <= set(floats)
    assert all(isinstance(v, float) and math.isfinite(v) for v in floats.values())


def test_non_finite_score_is_reported_at_its_first_step_and_its_update_dropped():
    stage = tiny_stage("render.skip_empty=false")
    fine = stage.prior.denoise
    stage.prior.denoise = lambda z, *args, **kw: fine(z, *args, **kw) * float("nan") if step in (2, 3) else fine(z, *args, **kw)
    for step in (1, 2, 3, 4):
        stats = train_step(stage, step)
        if step == 1:
            read_stats(stage, stats)
            before = [p.detach().clone() for p in stage.field.parameters()]
    with pytest.raises(NonFiniteError, match="non-finite score at step 2$"):
        read_stats(stage, stats)
    after = list(stage.field.parameters())
    assert all(torch.isfinite(p).all() for p in after)  # the NaN steps' gradients were dropped
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # step 4 still trained


def test_parameter_groups_give_the_grid_and_the_mlp_their_own_learning_rate():
    stage = tiny_stage("train.lr=0.002", "train.lr_grid=0.03")
    grid, mlp = stage.optimizer.param_groups
    assert (grid["name"], grid["lr"], mlp["name"], mlp["lr"]) == ("grid", 0.03, "mlp", 0.002)
    assert {id(p) for p in grid["params"]} == {id(p) for p in stage.field.encoding.parameters()}
    every = {id(p) for p in stage.field.parameters()}
    assert {id(p) for p in mlp["params"]} == every - {id(p) for p in grid["params"]} and mlp["params"]
    same = tiny_stage("train.lr=0.02", "train.lr_grid=0").optimizer.param_groups
    assert same[0]["lr"] == same[1]["lr"] == 0.02  # lr_grid = 0: one rate for both


def test_the_model_sees_the_sampled_radius_and_the_near_views_are_offset(monkeypatch):
    stage = tiny_stage("prior.guidance_min_t=250")
    seen = {}
    fine = stage.prior.denoise

    def spy(z, sigma, pose, guidance_scale, **options):
        seen["pose"], seen["options"] = pose, options
        return fine(z, sigma, pose, guidance_scale, **options)

    stage.prior.denoise = spy
    import sjc3d.step as step_module

    original = step_module.near_cameras

    def near_spy(c2w, offset, generator):
        seen["c2w"], seen["near"] = c2w, original(c2w, offset, generator)
        return seen["near"]

    monkeypatch.setattr(step_module, "near_cameras", near_spy)
    radii = []
    for step in range(1, 9):
        train_step(stage, step)
        _, _, radius = c2w_to_spherical(seen["c2w"])
        assert torch.allclose(seen["pose"][:, 3], radius - 2.0, atol=1e-5)  # Δradius reaches the model
        assert seen["options"] == {"guidance_min_t": 250}  # and so does the guidance interval
        radii.append(radius)
        gap = (seen["near"][:, :3, 3] - seen["c2w"][:, :3, 3]).norm(dim=-1)
        assert torch.allclose(gap, torch.full_like(gap, 0.05), atol=1e-5)
        centre = seen["near"][:, :3, 3]  # the near camera looks at the origin: −z axis along −centre
        assert torch.allclose(seen["near"][:, :3, 2], torch.nn.functional.normalize(centre, dim=-1), atol=1e-5)
    radii = torch.cat(radii)
    assert radii.min() >= 1.8 and radii.max() <= 2.2 and radii.std() > 0.05


def test_latent_reference_loss_decodes_the_render_at_the_model_size(tiny_zero123):
    from sjc3d.image import InputView
    from sjc3d.priors import vae as vae_io
    from sjc3d.step import reference_term

    overrides = [f"prior.source={tiny_zero123['ccp']}", "field.output=latent", "camera.resolution=8",
                 "prior.guidance_scale=1", "train.steps=2", "render.n_samples=16", "loss.depth_smooth=0"]
    ramp = torch.linspace(0, 1, 64)
    rgb = torch.stack([ramp[:, None].expand(64, 64), ramp[None, :].expand(64, 64), torch.full((64, 64), 0.5)], -1)
    view = InputView(rgb, torch.ones(64, 64))  # the model's size: no resizing anywhere
    stage = build_stage(load_config(["cpu-tiny"], overrides), None, view=view)
    assert stage.reference.shape == (1, 64, 64, 3)  # 8² latents × the VAE's factor 8 = its 64² images
    stage.renderer.eval()  # deterministic renders, to recompute the loss here
    loss, stats = reference_term(stage)
    render = stage.renderer.render_views(stage.input_c2w, 49.1, 8, stage.background)
    decoded = vae_io.decode_scaled(stage.prior.vae, render.features.permute(0, 3, 1, 2), clamp=False)
    expected = ((2 * decoded - 1) - (2 * view.rgb[None] - 1)).square().mean()  # the reference's [-1, 1] MSE
    assert stats["ref_color"].item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()
    assert sum(p.grad.abs().sum() for p in stage.field.parameters() if p.grad is not None) > 0

    stage = build_stage(load_config(["cpu-tiny"], overrides + ["loss.ref_space=latent"]), None, view=view)
    assert stage.reference.shape == (1, 8, 8, 4)  # the encoded input view
    assert "ref_psnr" not in read_stats(stage, train_step(stage, 1))


def test_the_oracle_renders_its_input_view_at_the_configured_input_camera():
    from sjc3d.priors.oracle import SphericalCamera

    stage = tiny_stage("input.elevation=30", "camera.radius=2.4")
    truth = stage.prior.render(SphericalCamera(math.radians(60.0), 0.0, 2.4), stage.config.input.size)
    assert torch.allclose(stage.view.rgb, truth.rgb) and torch.allclose(stage.view.mask, truth.alpha)
    level = stage.prior.render(SphericalCamera(math.radians(90.0), 0.0, 2.0), stage.config.input.size)
    assert not torch.allclose(stage.view.rgb, level.rgb)
