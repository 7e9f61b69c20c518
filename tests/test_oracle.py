"""The oracle prior and its independent rasteriser."""

import math

import numpy as np
import pytest
import torch
import trimesh

from sjc3d.cameras import input_c2w, spherical_to_c2w, zero123_pose
from sjc3d.priors.oracle import OraclePrior, SphericalCamera, camera_from_pose, load_world_mesh, render_truth

ASSET = __import__("pathlib").Path(__file__).resolve().parent.parent / "assets" / "toy.obj"


def sphere_mesh(radius=0.5):
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    mesh.visual.vertex_colors = np.tile([200, 100, 50, 255], (len(mesh.vertices), 1))
    return mesh


def test_sphere_silhouette_matches_the_projection():
    mesh = sphere_mesh(0.5)
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    f = torch.tensor(mesh.faces)
    c = torch.ones(len(v), 3) * 0.5
    raster = render_truth(v, f, c, SphericalCamera(math.pi / 2, 0.0, 2.0), 60.0, 64, supersample=4)
    # A sphere of radius a at distance d subtends a disc of angular radius asin(a/d).
    focal = 32 / math.tan(math.radians(30))
    disc_radius = focal * math.tan(math.asin(0.25))
    assert raster.alpha.sum().item() == pytest.approx(math.pi * disc_radius**2, rel=0.03)
    assert torch.allclose(raster.rgb[0, 0], torch.ones(3))  # white background


def test_image_orientation_follows_the_convention():
    """A marker on +y must appear on the right of the input view, one on +z at the top."""
    right = trimesh.creation.icosphere(radius=0.1).apply_translation([0, 0.5, 0])
    top = trimesh.creation.icosphere(radius=0.1).apply_translation([0, 0, 0.5])
    mesh = trimesh.util.concatenate([right, top])
    v, f = torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces)
    colors = torch.cat([torch.tensor([[1.0, 0, 0]]).expand(len(right.vertices), 3),
                        torch.tensor([[0, 0, 1.0]]).expand(len(top.vertices), 3)])
    raster = render_truth(v, f, colors, SphericalCamera(math.pi / 2, 0.0, 2.0), 49.1, 64)
    red = (raster.rgb[..., 0] > 0.8) & (raster.rgb[..., 2] < 0.2)
    blue = (raster.rgb[..., 2] > 0.8) & (raster.rgb[..., 0] < 0.2)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert cols.float().mean() > 40 and abs(rows.float().mean() - 32) < 3
    rows, cols = torch.nonzero(blue, as_tuple=True)
    assert rows.float().mean() < 24 and abs(cols.float().mean() - 32) < 3


def test_oracle_camera_agrees_with_the_engine_convention():
    """Two independent constructions of the same camera (closed form vs look-at) must agree."""
    for elevation, azimuth in [(0, 0), (30, 120), (-20, -75)]:
        ours = SphericalCamera(math.radians(90 - elevation), math.radians(azimuth), 2.0).c2w()
        engine = spherical_to_c2w(torch.tensor([float(elevation)]), torch.tensor([float(azimuth)]), torch.tensor([2.0]))[0]
        assert torch.allclose(ours, engine, atol=1e-5)


def test_camera_from_pose_inverts_zero123_pose():
    for elevation_in, (elevation, azimuth, radius) in [(0, (30, 120, 2.2)), (15, (-10, -60, 1.8)), (-5, (60, 180, 2.0))]:
        pose = zero123_pose(input_c2w(elevation_in, 2.0), spherical_to_c2w(
            torch.tensor([float(elevation)]), torch.tensor([float(azimuth)]), torch.tensor([radius])))[0]
        camera = camera_from_pose(pose, math.radians(90 - elevation_in), 2.0)
        assert camera.polar == pytest.approx(math.radians(90 - elevation), abs=1e-5)
        assert math.cos(camera.azimuth - math.radians(azimuth)) == pytest.approx(1.0, abs=1e-6)
        assert camera.radius == pytest.approx(radius, abs=1e-5)


def test_oracle_denoise_returns_the_true_view_whatever_the_noise():
    oracle = OraclePrior(load_world_mesh(ASSET), 49.1)
    oracle.condition(torch.ones(8, 8, 3), elevation_deg=10.0, radius=2.0)
    target = spherical_to_c2w(torch.tensor([40.0, 10.0]), torch.tensor([90.0, 0.0]), torch.tensor([2.0, 2.0]))
    pose = zero123_pose(input_c2w(10.0, 2.0), target)
    z = torch.randn(2, 3, 32, 32) * 5
    d1 = oracle.denoise(z, torch.tensor([5.0, 5.0]), pose)
    d2 = oracle.denoise(torch.zeros_like(z), torch.tensor([0.1, 0.1]), pose)
    assert d1.shape == (2, 3, 32, 32) and torch.equal(d1, d2)
    assert d1.min() >= -1 and d1.max() <= 1
    # Pose 1 is the input camera itself: it matches the oracle's own input view.
    view = oracle.input_view(32)
    assert torch.allclose(oracle.decode(d1[1:]), view.rgb[None], atol=1e-5)
    assert 0.05 < view.mask.mean() < 0.5


def test_world_mesh_is_z_up_unit_size_and_faces_the_input_camera():
    mesh = load_world_mesh(ASSET)
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert extent.max() == pytest.approx(1.0)
    assert extent[2] == pytest.approx(extent.max())  # the snowman is tallest along +z
    nose = mesh.vertices[np.argmax(mesh.vertices[:, 0])]
    assert nose[0] > 0.3 and abs(nose[1]) < 0.05  # the carrot points at the +x input camera
    assert np.asarray(mesh.visual.vertex_colors)[:, :3].std() > 10  # colours came through
