"""Radiance field: shapes, activations, the blob, the box, state round trip, backend choice."""

from __future__ import annotations

import pytest
import torch

from sjc3d.config import FieldConfig
from sjc3d.errors import ConfigError
from sjc3d.fields import build_field, choose_backend
from sjc3d.fields.field import EXP_MAX, blob_bias

SMALL = dict(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0, hidden_dim=16)


@pytest.mark.parametrize("output,channels", [("latent", 4), ("rgb", 3)])
@pytest.mark.parametrize("activation", ["exp", "softplus"])
def test_shapes_and_ranges(output, channels, activation):
    torch.manual_seed(0)
    field = build_field(FieldConfig(output=output, density_activation=activation, **SMALL))
    assert field.n_channels == channels and field.bound == 1.0
    pts = torch.rand(100, 3) * 2 - 1
    out = field(pts)
    assert out.density.shape == (100,) and out.features.shape == (100, channels)
    assert (out.density >= 0).all() and torch.isfinite(out.density).all()
    assert torch.allclose(field.density(pts), out.density)
    if output == "rgb":
        assert ((out.features > 0) & (out.features < 1)).all()
    else:
        assert (out.features < 0).any()  # linear latent head: not squashed


def test_zero_outside_the_box():
    torch.manual_seed(0)
    field = build_field(FieldConfig(bound=0.8, blob_radius=10.0, **SMALL))  # blob positive everywhere
    inside = torch.rand(64, 3) * 1.6 - 0.8
    outside = inside.clone()
    outside[:, 1] = torch.where(torch.rand(64) < 0.5, 0.81, -0.81)  # one coordinate beyond the bound
    assert (field.density(inside) > 0).all()
    assert (field.density(outside) == 0).all()
    assert (field(outside).density == 0).all()


@pytest.mark.parametrize("activation", ["exp", "softplus"])
def test_blob_makes_the_centre_denser(activation):
    torch.manual_seed(0)
    field = build_field(FieldConfig(density_activation=activation, density_bias="blob", **SMALL))
    centre = field.density(torch.zeros(1, 3))
    edge = field.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert centre > 10 * edge
    plain = build_field(FieldConfig(density_activation=activation, density_bias="none", **SMALL))
    ratio = plain.density(torch.zeros(1, 3)) / plain.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert 0.5 < ratio < 2  # without the blob the fresh field is nearly uniform


def test_blob_formula():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(blob_bias(pts, 5.0, 0.5), torch.tensor([5.0, 0.0, -15.0]))


def test_exp_is_clamped():
    cfg = FieldConfig(blob_density=1000.0, **SMALL)  # absurd pre-activation density
    field = build_field(cfg)
    pts = torch.zeros(4, 3, requires_grad=True)
    sigma = field.density(pts)
    assert torch.isfinite(sigma).all() and sigma.max() <= torch.exp(torch.tensor(EXP_MAX)) * 1.0001


def test_gradients_reach_all_parameters():
    torch.manual_seed(0)
    field = build_field(FieldConfig(output="rgb", **SMALL))
    out = field(torch.rand(256, 3) * 2 - 1)
    (out.density.sum() + out.features.sum()).backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip():
    torch.manual_seed(0)
    cfg = FieldConfig(output="rgb", **SMALL)
    a, b = build_field(cfg), build_field(cfg)
    with torch.no_grad():
        a.encoding.planes.uniform_(-1, 1)
    pts = torch.rand(32, 3) * 2 - 1
    assert not torch.allclose(a(pts).features, b(pts).features)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(pts).features, b(pts).features) and torch.equal(a(pts).density, b(pts).density)


def test_backend_choice_on_cpu():
    assert choose_backend("auto", "cpu") == "torch"
    assert choose_backend("torch", "cpu") == "torch"
    with pytest.raises(ConfigError):
        choose_backend("tcnn", "cpu")


@pytest.mark.cuda
def test_a_tcnn_field_gives_the_same_values_on_the_cpu_torch_backend():
    """Trained on tcnn (CUDA), loaded on the pure-torch backend (CPU): the same density and features."""
    from sjc3d.fields.tcnn_backend import tcnn_available

    if not tcnn_available():
        pytest.skip("tinycudann is not installed")
    torch.manual_seed(0)
    gpu = build_field(FieldConfig(backend="tcnn", output="rgb"), device="cuda")
    assert gpu.encoding.backend == "tcnn"
    with torch.no_grad():
        gpu.encoding.grid_parameter.uniform_(-1, 1)  # a "trained" table, far from the tiny init
    cpu = build_field(FieldConfig(backend="auto", output="rgb"), device="cpu")
    assert cpu.encoding.backend == "torch"
    cpu.load_state_dict({k: v.cpu() if torch.is_tensor(v) else v for k, v in gpu.state_dict().items()})
    points = torch.rand(4096, 3) * 2 - 1
    with torch.no_grad():
        a, b = gpu(points.cuda()), cpu(points)
    torch.testing.assert_close(a.features.cpu(), b.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.density.cpu(), b.density, atol=1e-4, rtol=1e-4)
