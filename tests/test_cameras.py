"""The camera convention of DESIGN.md §3 and the Zero-1-to-3 pose embedding."""

import math

import pytest
import torch

from sjc3d.cameras import (
    c2w_to_spherical,
    camera_rays,
    focal_from_fov,
    input_c2w,
    intrinsics,
    sample_poses,
    spherical_to_c2w,
    zero123_pose,
)


def c2w(elevation, azimuth, radius=2.0):
    return spherical_to_c2w(torch.tensor([float(elevation)]), torch.tensor([float(azimuth)]), torch.tensor([radius]))


def test_spherical_positions_and_axes():
    m = c2w(0, 0)[0]
    assert torch.allclose(m[:3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(m[:3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)  # back axis: looks down -z_cam = -x
    assert torch.allclose(m[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)  # up is +z
    assert torch.allclose(m[:3, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # right is +y
    top = c2w(30, 90, 3.0)[0, :3, 3]
    assert torch.allclose(top, torch.tensor([0.0, 3 * math.cos(math.radians(30)), 1.5]), atol=1e-5)
    rotation = c2w(25, 140)[0, :3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3), atol=1e-5)
    assert torch.det(rotation) == pytest.approx(1.0, abs=1e-5)


def test_spherical_round_trip():
    elevation, azimuth, radius = torch.tensor([-20.0, 10, 70]), torch.tensor([-170.0, 5, 95]), torch.tensor([1.5, 2, 2.2])
    e, a, r = c2w_to_spherical(spherical_to_c2w(elevation, azimuth, radius))
    assert torch.allclose(e, elevation, atol=1e-4) and torch.allclose(a, azimuth, atol=1e-4)
    assert torch.allclose(r, radius, atol=1e-5)


def test_identical_views_embed_to_0_0_1_0():
    m = c2w(10, 30)
    assert torch.allclose(zero123_pose(m, m), torch.tensor([[0.0, 0.0, 1.0, 0.0]]), atol=1e-6)


def test_plus_90_azimuth():
    assert torch.allclose(zero123_pose(c2w(0, 0), c2w(0, 90)), torch.tensor([[0.0, 1.0, 0.0, 0.0]]), atol=1e-6)


def test_positive_azimuth_moves_to_the_source_cameras_right():
    src, dst = c2w(0, 0), c2w(0, 20)
    pose = zero123_pose(src, dst)[0]
    assert pose[1] > 0  # sin Δazimuth
    right = src[0, :3, 0]
    assert torch.dot(dst[0, :3, 3] - src[0, :3, 3], right) > 0


def test_positive_polar_moves_the_camera_down():
    src, dst = c2w(20, 0), c2w(5, 0)
    pose = zero123_pose(src, dst)[0]
    assert pose[0] == pytest.approx(math.radians(15), abs=1e-5)
    assert dst[0, 2, 3] < src[0, 2, 3]


def test_radius_difference_in_scene_units():
    assert zero123_pose(c2w(0, 0, 2.0), c2w(0, 0, 1.5))[0, 3] == pytest.approx(-0.5, abs=1e-6)


def test_pose_is_batched_over_leading_dims():
    src = input_c2w(0, 2.0)
    dst = spherical_to_c2w(torch.tensor([[0.0, 10], [20, 30]]), torch.tensor([[0.0, 90], [180, -90]]), torch.full((2, 2), 2.0))
    pose = zero123_pose(src, dst)
    assert pose.shape == (2, 2, 4) and pose.dtype == torch.float32
    assert torch.allclose(pose[1, 0, 1:3], torch.tensor([0.0, -1.0]), atol=1e-6)  # 180°: sin 0, cos -1
    assert pose[1, 1, 1] == pytest.approx(-1.0, abs=1e-6)  # -90°


def test_intrinsics_and_rays():
    assert focal_from_fov(90.0, 64) == pytest.approx(32.0)
    k = intrinsics(49.1, 32)
    assert k[0, 2] == 16 and k[1, 2] == 16
    rays_o, rays_d = camera_rays(c2w(0, 0), 90.0, 4)
    assert rays_o.shape == rays_d.shape == (1, 4, 4, 3)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(1, 4, 4))
    # Top-left pixel looks up (+z) and to the camera's left (-y); rows go down the image.
    top_left, bottom_right = rays_d[0, 0, 0], rays_d[0, 3, 3]
    assert top_left[2] > 0 and top_left[1] < 0 and bottom_right[2] < 0 and bottom_right[1] > 0
    centre = rays_d[0, 1:3, 1:3].mean(dim=(0, 1))
    assert torch.allclose(torch.nn.functional.normalize(centre, dim=0), torch.tensor([-1.0, 0, 0]), atol=1e-6)
    # 90° field of view: the outermost pixel centres are at ±(1 - 1/4) in tangent space.
    assert (top_left[1] / -top_left[0]).item() == pytest.approx(-0.75, abs=1e-6)


def test_sample_poses_ranges_and_determinism():
    g = torch.Generator().manual_seed(0)
    poses = sample_poses(500, (-10, 40), (-180, 180), (1.5, 2.2), g)
    assert len(poses) == 500
    assert poses.elevation.min() >= -10 and poses.elevation.max() <= 40
    assert poses.radius.min() >= 1.5 and poses.radius.max() <= 2.2
    again = sample_poses(500, (-10, 40), (-180, 180), (1.5, 2.2), torch.Generator().manual_seed(0))
    assert torch.equal(poses.azimuth, again.azimuth)
    assert poses.c2w().shape == (500, 4, 4)


def pose_py_cameras(n: int, seed: int = 0):
    """The reference run's sampler, transcribed loop for loop (3drec/pose.py, `sample_spherical`
    with radius 1.8-2.2, minz -0.5, maxz 2.2): (elevation°, azimuth°, radius) arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    eyes = []
    while len(eyes) < n:
        v = rng.uniform(-1, 1, 3)
        v = v / np.linalg.norm(v) * rng.uniform(1.8, 2.2)
        if 2.2 > v[2] > -0.5:
            eyes.append(v)
    eyes = np.array(eyes)
    r = np.linalg.norm(eyes, axis=1)
    return np.degrees(np.arcsin(eyes[:, 2] / r)), np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0])), r


def ks_distance(a, b) -> float:
    """Largest gap between the empirical CDFs of two samples (Kolmogorov-Smirnov statistic)."""
    import numpy as np

    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, x, "right") / len(a) - np.searchsorted(b, x, "right") / len(b)).max())


def test_reference_sampling_draws_what_pose_py_draws():
    """Same distribution as the reference's loop (z > -0.5 is elevation > -14.5° at R = 2).

    KS distances with 20 000 cameras each: this sampler ≈ 0.005 in elevation; a uniform draw on
    the sphere ≈ 0.07 (pose.py normalises a point of the cube); uniform in degrees ≈ 0.23.
    """
    elevation, azimuth, radius = pose_py_cameras(20000)
    ours = sample_poses(20000, (-14.5, 90.0), (-180.0, 180.0), (1.8, 2.2), torch.Generator().manual_seed(1),
                        sampling="reference")
    assert ks_distance(elevation, ours.elevation.numpy()) < 0.03
    assert ks_distance(azimuth, ours.azimuth.numpy()) < 0.03
    assert ks_distance(radius, ours.radius.numpy()) < 0.03
    assert ours.elevation.max() > 85  # the top view is reached
    narrow = sample_poses(2000, (10.0, 20.0), (30.0, 40.0), (2.0, 2.0), torch.Generator().manual_seed(2),
                          sampling="reference")  # few candidates accepted: the fallback keeps the ranges
    assert narrow.elevation.min() >= 10 and narrow.elevation.max() <= 20
    assert narrow.azimuth.min() >= 30 and narrow.azimuth.max() <= 40
