"""Training data: procedural objects (SDFs, meshes, renders) and the Zero-1-to-3 layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree

from sjc3d.cameras import spherical_to_c2w, zero123_pose
from sjc3d.datasets.make_views import (
    ViewsSpec, load_object, make_views, object_cameras, procedural_object, sample_cameras,
)
from sjc3d.datasets.materials import Material
from sjc3d.datasets.primitives import Box, Capsule, Cone, Cylinder, Sphere, Torus
from sjc3d.datasets.raytrace import FOV_DEG, composite_on_white, render_views
from sjc3d.datasets.shapes import Part, ProceduralObject, random_rotation, sample_object
from sjc3d.datasets.zero123_layout import load_dataset, load_view, read_pose, scan, write_view
from sjc3d.errors import InputError

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
GREY = Material((0.5, 0.5, 0.5))


def single(shape, rotation=IDENTITY, translation=(0.0, 0.0, 0.0), scale=1.0) -> ProceduralObject:
    return ProceduralObject((Part(shape, GREY, rotation, translation, scale),))


def c2w_at(elevation: float, azimuth: float, radius: float) -> torch.Tensor:
    return spherical_to_c2w(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([radius]))


def lopsided() -> ProceduralObject:
    """A box with a striped capsule sticking out toward +y and a cone on top: no symmetry."""
    along_y = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))  # local z → world y
    return ProceduralObject((
        Part(Box(0.3, 0.2, 0.25, rounding=0.05), Material((0.8, 0.2, 0.2)), IDENTITY, (0.0, 0.0, 0.0)),
        Part(Capsule(0.08, 0.25), Material((0.2, 0.6, 0.9), "stripes", (0.9, 0.8, 0.1), 3.0, 2), along_y,
             (0.05, 0.38, 0.1)),
        Part(Cone(0.2, 0.0, 0.2), Material((0.3, 0.7, 0.3)), IDENTITY, (-0.1, 0.0, 0.42)),
    )).normalized()


# --------------------------------------------------------------------------- SDFs


@pytest.mark.parametrize("shape, point, expected", [
    (Sphere(0.5), (1.0, 0.0, 0.0), 0.5),
    (Sphere(0.5), (0.0, 0.0, 0.0), -0.5),
    (Box(0.3, 0.2, 0.1), (1.0, 0.0, 0.0), 0.7),
    (Box(0.3, 0.2, 0.1), (1.0, 1.0, 1.0), math.sqrt(0.7**2 + 0.8**2 + 0.9**2)),  # nearest point: a corner
    (Box(0.3, 0.2, 0.1), (0.0, 0.0, 0.05), -0.05),  # inside: the nearest face is z = 0.1
    (Box(0.3, 0.3, 0.3, rounding=0.1), (1.0, 1.0, 0.0), math.sqrt(2) * 0.8 - 0.1),  # rounded edge
    (Box(0.3, 0.3, 0.3, rounding=0.1), (1.0, 0.0, 0.0), 0.7),  # faces keep their place
    (Cylinder(0.3, 0.5), (1.0, 0.0, 0.0), 0.7),
    (Cylinder(0.3, 0.5), (0.0, 0.0, 1.0), 0.5),
    (Cylinder(0.3, 0.5), (0.6, 0.8, 1.5), math.hypot(0.7, 1.0)),  # nearest: the cap's rim
    (Cylinder(0.3, 0.5), (0.0, 0.1, 0.0), -0.2),
    (Cone(0.4, 0.0, 0.5), (0.0, 0.0, 1.0), 0.5),  # above the apex
    (Cone(0.4, 0.0, 0.5), (0.0, 0.0, -1.0), 0.5),  # below the base
    (Cone(0.4, 0.0, 0.5), (0.0, 0.0, 0.0), -0.2 * 1.0 / math.hypot(1.0, 0.4)),  # inside: nearest is the side
    (Cone(0.4, 0.2, 0.5), (1.0, 0.0, 0.0), (1.0 - 0.3) * 1.0 / math.hypot(1.0, 0.2)),  # beside the side
    (Torus(0.5, 0.1), (0.5, 0.0, 0.0), -0.1),
    (Torus(0.5, 0.1), (0.0, 0.0, 0.0), 0.4),
    (Torus(0.5, 0.1), (0.0, 0.0, 1.0), math.hypot(0.5, 1.0) - 0.1),
    (Capsule(0.2, 0.3), (0.0, 0.0, 1.0), 0.5),
    (Capsule(0.2, 0.3), (1.0, 0.0, 0.1), 0.8),
    (Capsule(0.2, 0.3), (0.0, 0.0, 0.0), -0.2),
])
def test_primitive_distances_at_known_points(shape, point, expected):
    value = shape.sdf(torch.tensor([point], dtype=torch.float64))
    assert value.item() == pytest.approx(expected, abs=1e-9)


ALL_SHAPES = [Sphere(0.45), Box(0.4, 0.25, 0.15), Box(0.4, 0.3, 0.25, rounding=0.12), Cylinder(0.3, 0.4),
              Cone(0.4, 0.1, 0.4), Cone(0.35, 0.0, 0.45), Torus(0.35, 0.12), Capsule(0.2, 0.3)]


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=lambda s: s.kind)
def test_sdf_is_the_distance_to_the_surface_and_support_gives_the_box(shape):
    """|sdf| equals the distance to a dense sampling of the shape's surface, inside and out.

    The surface comes from marching cubes, which only sees the zero level set: a distance scaled
    or bent anywhere off the surface shows up here.  Under a random placement, the box from the
    support functions (`bounds`) matches the mesh's box.
    """
    rotation = tuple(map(tuple, random_rotation(np.random.default_rng(7))))
    obj = single(shape, rotation, (0.1, -0.2, 0.05), 1.3)
    mesh = obj.mesh(96)
    samples = mesh.sample(40_000)
    points = torch.from_numpy(np.random.default_rng(1).uniform(-1.0, 1.0, (2000, 3))).float()
    sdf = obj.sdf(points).numpy()
    distance, _ = cKDTree(samples).query(points.numpy())
    voxel = 1.3 * 1.0 / 96
    assert np.abs(np.abs(sdf) - distance).max() < 2.5 * voxel
    lo, hi = obj.bounds()
    assert np.abs(mesh.bounds[0] - lo).max() < voxel and np.abs(mesh.bounds[1] - hi).max() < voxel


def test_a_placed_part_is_a_similarity_of_its_shape():
    rotation = random_rotation(np.random.default_rng(3))
    part = Part(Torus(0.35, 0.1), GREY, tuple(map(tuple, rotation)), (0.3, -0.1, 0.2), 0.7)
    local = torch.from_numpy(np.random.default_rng(0).uniform(-0.6, 0.6, (500, 3))).float()
    world = torch.tensor(part.translation) + 0.7 * local @ torch.from_numpy(rotation).float().T
    assert torch.allclose(part.sdf(world), 0.7 * part.shape.sdf(local), atol=1e-5)


def test_materials_move_with_their_part():
    """The pattern is painted in the local frame: a point and its image under the placement agree."""
    material = Material((0.9, 0.1, 0.1), "checker", (0.1, 0.1, 0.9), 3.0)
    rotation = random_rotation(np.random.default_rng(4))
    part = Part(Sphere(0.5), material, tuple(map(tuple, rotation)), (0.2, 0.0, -0.3), 0.6)
    local = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (400, 3))).float()
    world = torch.tensor(part.translation) + 0.6 * local @ torch.from_numpy(rotation).float().T
    obj = ProceduralObject((part,))
    assert torch.allclose(obj.albedo(world), material.albedo(local))
    both = material.second_color_mask(local)
    assert 0.2 < both.float().mean() < 0.8  # both colours show


# --------------------------------------------------------------------------- objects


def test_union_mesh_agrees_with_contains():
    """Voxelising the marching-cubes mesh (by ray parity, sjc3d.metrics) gives `contains` back."""
    from sjc3d.metrics import occupancy_grid

    obj = lopsided()
    mesh = obj.mesh(96)
    assert mesh.is_watertight and mesh.volume > 0 and len(mesh.split(only_watertight=False)) == 1
    lo, hi = np.full(3, -0.55), np.full(3, 0.55)
    res = 48
    from_mesh = occupancy_grid(mesh, lo, hi, res)
    axis = lo[0] + (np.arange(res) + 0.5) * (hi[0] - lo[0]) / res
    centres = torch.from_numpy(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)).float()
    truth = obj.contains(centres).numpy().reshape(res, res, res)
    iou = (from_mesh & truth).sum() / (from_mesh | truth).sum()
    assert iou > 0.97
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert len(np.unique(colors, axis=0)) >= 4  # three parts, one of them striped


def parts_are_connected(obj: ProceduralObject, n_points: int = 20_000) -> bool:
    """Whether the graph "parts i and j overlap" (a point inside both) is connected."""
    points = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (n_points, 3))).float()
    inside = (obj.part_sdfs(points) < 0).float()  # [N, P]
    linked = (inside.T @ inside) > 0  # [P, P]
    reached = linked[0].clone()
    for _ in range(len(obj.parts)):
        reached = (linked[reached].any(dim=0)) | reached
    return bool(reached.all())


def test_sampled_objects_are_unit_sized_connected_and_varied():
    kinds, counts, patterns = set(), set(), set()
    for k in range(40):
        obj = sample_object(np.random.default_rng(k))
        kinds |= {p.shape.kind for p in obj.parts}
        patterns |= {p.material.pattern for p in obj.parts}
        counts.add(len(obj.parts))
        lo, hi = obj.bounds()
        assert np.allclose((lo + hi) / 2, 0.0, atol=1e-9) and (hi - lo).max() == pytest.approx(1.0, abs=1e-9)
        assert parts_are_connected(obj), f"object {k} falls apart"
    assert kinds == {"sphere", "box", "cylinder", "cone", "torus", "capsule"}
    assert counts == {1, 2, 3, 4}
    assert patterns == {"plain", "stripes", "checker", "split", "dots"}


def test_an_object_description_rebuilds_the_same_object():
    obj = sample_object(np.random.default_rng(11), n_parts=4)
    text = json.dumps(obj.to_dict())
    again = ProceduralObject.from_dict(json.loads(text))
    assert again == obj
    points = torch.rand(1000, 3) - 0.5
    assert torch.equal(again.sdf(points), obj.sdf(points)) and torch.equal(again.albedo(points), obj.albedo(points))
    broken = json.loads(text)
    broken["parts"][0]["rotation"][0][0] += 0.5
    with pytest.raises(ValueError, match="rotation"):
        ProceduralObject.from_dict(broken)


# --------------------------------------------------------------------------- rendering


def test_silhouette_matches_the_rasterised_truth_mesh():
    """Ray-traced coverage vs sjc3d.mesh_raster (its own projection code) for an asymmetric object."""
    from sjc3d.mesh_raster import rasterize

    obj = lopsided()
    mesh = obj.mesh(160)
    vertices, faces = torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces).long()
    for elevation, azimuth, radius in [(20.0, 30.0, 1.8), (-35.0, 200.0, 1.5)]:
        c2w = c2w_at(elevation, azimuth, radius)
        alpha = render_views(obj, c2w, 64, supersample=4)[0, ..., 3]
        mask = rasterize(vertices, faces, c2w[0], FOV_DEG, 64).mask
        covered = alpha > 0.5
        wrong = covered != mask
        assert covered.sum() > 300
        assert wrong.sum() <= 0.02 * covered.sum(), f"{int(wrong.sum())} pixels disagree"
        assert ((alpha[wrong] > 0.0) & (alpha[wrong] < 1.0)).all()  # disagreements only on the edge


def test_sphere_tracing_and_the_scan_find_a_sphere():
    """Rays from x = −2 along +x meet a sphere of radius ½ at t = 2 − √(¼ − y²), or miss it."""
    from sjc3d.datasets.raytrace import scan_for_surface, sphere_trace

    heights = torch.tensor([0.0, 0.3, 0.45, 0.6])
    origins = torch.stack([torch.full_like(heights, -2.0), heights, torch.zeros_like(heights)], dim=-1)
    directions = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)
    expected = 2.0 - torch.sqrt((0.25 - heights[:3] ** 2))
    sphere = Sphere(0.5).sdf
    start, end = torch.zeros(4), torch.full((4,), 4.0)
    t, hit = sphere_trace(sphere, origins, directions, start, end, hit_slope=1e-4, max_steps=200)
    assert hit.tolist() == [True, True, True, False] and torch.allclose(t[:3], expected, atol=1e-3)
    t, found = scan_for_surface(sphere, origins.T, directions.T, start, end, n_samples=32)
    assert found.tolist() == [True, True, True, False] and torch.allclose(t[:3], expected, atol=0.01)


def test_no_holes_inside_the_silhouette():
    """Sub-pixel rays that creep along a face or into a crease are settled (scan), not dropped.

    Pixels two pixels or more inside the rasterised truth mesh's silhouette are fully covered.
    """
    from sjc3d.mesh_raster import rasterize

    obj = lopsided()
    mesh = obj.mesh(128)
    vertices, faces = torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces).long()
    cameras = [(0.0, 90.0), (60.0, 225.0), (25.0, 90.0), (0.0, 0.0)]
    c2w = torch.cat([c2w_at(elevation, azimuth, 1.6) for elevation, azimuth in cameras])
    alpha = render_views(obj, c2w, 64)[..., 3]
    for view in range(len(cameras)):
        mask = rasterize(vertices, faces, c2w[view], FOV_DEG, 64).mask.float()[None, None]
        interior = -torch.nn.functional.max_pool2d(-mask, 5, stride=1, padding=2)[0, 0] > 0.5
        assert interior.sum() > 200 and (alpha[view][interior] == 1).all()


def test_lambert_shading_under_the_oracles_light():
    """A sphere seen along +x: the centre pixel's normal is +x, so its colour is known in closed form."""
    from sjc3d.priors.oracle import AMBIENT, LIGHT_DIRECTION

    albedo = (0.8, 0.5, 0.2)
    obj = ProceduralObject((Part(Sphere(0.5), Material(albedo), IDENTITY, (0.0, 0.0, 0.0)),))
    rgba = render_views(obj, c2w_at(0.0, 0.0, 2.0), 32, supersample=1)[0]
    centre = rgba[15:17, 15:17, :3].mean(dim=(0, 1))  # the four pixels around the image centre
    n_dot_l = LIGHT_DIRECTION[0] / np.linalg.norm(LIGHT_DIRECTION)
    expected = torch.tensor(albedo) * (AMBIENT + (1 - AMBIENT) * n_dot_l)
    assert torch.allclose(centre, expected, atol=0.01)
    assert rgba[0, 0, 3] == 0 and rgba[16, 16, 3] == 1


def test_supersampling_is_a_box_filter_with_straight_alpha():
    """Rendering at 2× and averaging 2×2 blocks on white equals rendering with supersample=2."""
    obj = lopsided()
    c2w = c2w_at(10.0, 60.0, 1.7)
    low = composite_on_white(render_views(obj, c2w, 24, supersample=2, adaptive=False))
    high = composite_on_white(render_views(obj, c2w, 48, supersample=1))
    pooled = torch.nn.functional.avg_pool2d(high.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert torch.allclose(low, pooled, atol=1e-4)
    alpha = render_views(obj, c2w, 24, supersample=2, adaptive=False)[..., 3]
    assert ((alpha > 0) & (alpha < 1)).any()  # edges are partial


def test_adaptive_supersampling_refines_exactly_the_edges():
    """Adaptive = full supersampling on pixels near an edge, the centre ray elsewhere."""
    from sjc3d.datasets.raytrace import uneven_pixels

    obj = lopsided()
    c2w = torch.cat([c2w_at(10.0, 60.0, 1.7), c2w_at(-30.0, 250.0, 2.1)])
    full = render_views(obj, c2w, 32, supersample=3, adaptive=False)
    adaptive = render_views(obj, c2w, 32, supersample=3, adaptive=True)
    centre = render_views(obj, c2w, 32, supersample=1)
    labels = centre[..., 3].long()  # hit / miss: a subset of the labels the renderer uses
    edge = uneven_pixels(labels)
    assert torch.equal(adaptive[edge], full[edge])
    assert edge.sum() > 50 and (full[~edge] - adaptive[~edge]).abs().mean() < 2e-3
    assert torch.equal(adaptive[~edge][..., 3], centre[~edge][..., 3])


def test_uneven_pixels_marks_both_sides_of_a_border():
    from sjc3d.datasets.raytrace import uneven_pixels

    label = torch.zeros(1, 6, 6, dtype=torch.long)
    label[0, :, 3:] = 2
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, :, 2:4] = True
    assert torch.equal(uneven_pixels(label), expected)


# --------------------------------------------------------------------------- the Zero-1-to-3 layout


def zero123_get_T(target_rt: np.ndarray, cond_rt: np.ndarray) -> np.ndarray:
    """Zero-1-to-3's ObjaverseData.get_T, written from its description: camera centres −Rᵀt,
    polar θ = atan2(√(x² + y²), z), azimuth atan2(y, x), radius; [Δθ, sin Δφ, cos Δφ, Δr]."""

    def spherical(rt):
        x, y, z = -rt[:3, :3].T @ rt[:, 3]
        return np.arctan2(np.hypot(x, y), z), np.arctan2(y, x), np.sqrt(x * x + y * y + z * z)

    theta_t, az_t, r_t = spherical(target_rt)
    theta_c, az_c, r_c = spherical(cond_rt)
    d_az = (az_t - az_c) % (2 * np.pi)
    return np.array([theta_t - theta_c, np.sin(d_az), np.cos(d_az), r_t - r_c])


def test_npy_cameras_follow_blender_and_give_zero123_poses(tmp_path):
    cameras = [(10.0, 0.0, 1.5), (35.0, 120.0, 2.2), (-20.0, 250.0, 1.8)]
    for v, (elevation, azimuth, radius) in enumerate(cameras):
        write_view(tmp_path, v, np.zeros((8, 8, 4), np.uint8), c2w_at(elevation, azimuth, radius)[0])
    for v, (elevation, azimuth, radius) in enumerate(cameras):
        rt = np.load(tmp_path / f"{v:03d}.npy")
        assert rt.shape == (3, 4) and rt.dtype == np.float32
        # Blender camera axes (OpenGL): the origin lies straight ahead, on the camera's −z axis.
        assert np.allclose(rt[:, :3] @ np.zeros(3) + rt[:, 3], [0.0, 0.0, -radius], atol=1e-5)
        assert np.allclose(rt[:, :3] @ np.array([0.0, 0.0, 1.0]) + rt[:, 3], rt[:, 3] + rt[:, 2], atol=1e-6)
        assert rt[1, 2] > 0  # world +z points up in the image
    for a in range(3):
        for b in range(3):
            c2w_a, c2w_b = (c2w_at(*cameras[i])[0] for i in (a, b))
            from_files = zero123_pose(read_pose(tmp_path / f"{a:03d}.npy"), read_pose(tmp_path / f"{b:03d}.npy"))
            assert torch.allclose(from_files, zero123_pose(c2w_a, c2w_b), atol=1e-5)
            get_t = zero123_get_T(np.load(tmp_path / f"{b:03d}.npy"), np.load(tmp_path / f"{a:03d}.npy"))
            assert np.allclose(from_files.numpy(), get_t, atol=1e-5)


def test_load_view_composites_the_straight_alpha_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[..., 3] = 102  # alpha 0.4
    rgba[0, 0, 3] = 0
    write_view(tmp_path, 0, rgba, c2w_at(0.0, 0.0, 2.0)[0])
    rgb, c2w = load_view(tmp_path / "000.png", 4)
    a = 102 / 255
    assert torch.allclose(rgb[1, 1], torch.tensor([200, 100, 0]) / 255 * a + (1 - a), atol=1e-6)
    assert torch.allclose(rgb[0, 0], torch.ones(3))
    assert torch.allclose(c2w, c2w_at(0.0, 0.0, 2.0)[0], atol=1e-5)
    small, _ = load_view(tmp_path / "000.png", 2)  # resizing is an area average
    assert torch.allclose(small[0, 0], rgb[:2, :2].mean(dim=(0, 1)), atol=1e-6)


# --------------------------------------------------------------------------- make-views


def test_objects_are_a_function_of_seed_split_and_index():
    train, test = ViewsSpec(seed=3, split="train"), ViewsSpec(seed=3, split="test")
    assert procedural_object(train, 5) == procedural_object(ViewsSpec(seed=3, split="train", size=128), 5)
    assert torch.equal(object_cameras(train, 5), object_cameras(train, 5))
    train_set = [json.dumps(procedural_object(train, k).to_dict()) for k in range(24)]
    test_set = [json.dumps(procedural_object(test, k).to_dict()) for k in range(24)]
    other_seed = [json.dumps(procedural_object(ViewsSpec(seed=4), k).to_dict()) for k in range(24)]
    assert len(set(train_set)) == 24 and not set(train_set) & set(test_set) and not set(train_set) & set(other_seed)
    assert not torch.equal(object_cameras(train, 0), object_cameras(test, 0))


def test_cameras_follow_the_zero123_distribution():
    from sjc3d.cameras import c2w_to_spherical

    c2w = sample_cameras(np.random.default_rng(0), 4000)
    elevation, _, radius = c2w_to_spherical(c2w)
    assert radius.min() >= 1.5 - 1e-5 and radius.max() <= 2.2 + 1e-5
    z = torch.sin(torch.deg2rad(elevation))  # uniform on the sphere ⇔ z uniform in [−1, 1]
    assert abs(float(z.mean())) < 0.05 and float((z.abs() < 0.5).float().mean()) == pytest.approx(0.5, abs=0.04)
    ahead = -c2w[:, :3, 2]  # every camera looks at the origin
    assert torch.allclose(ahead, -c2w[:, :3, 3] / radius[:, None], atol=1e-5)


def test_make_views_resumes_and_refuses_other_settings(tmp_path):
    spec = dict(n_views=2, size=16, supersample=1, progress=False)
    report = make_views(tmp_path / "ds", 2, **spec)
    assert (report.n_written, report.n_skipped) == (2, 0)
    first, second = tmp_path / "ds" / "train_000000", tmp_path / "ds" / "train_000001"
    stamp = (first / "000.png").stat().st_mtime_ns
    # As if killed while writing object 1: its staging folder is there, half full, and no object folder.
    staging = tmp_path / "ds" / ".train_000001.partial"
    second.rename(staging)
    (staging / "object.json").unlink()
    assert [o.object_id for o in scan(tmp_path / "ds")] == ["train_000000"]  # readers skip it
    report = make_views(tmp_path / "ds", 3, **spec)
    assert (report.n_written, report.n_skipped) == (2, 1)  # objects 1 and 2
    assert (first / "000.png").stat().st_mtime_ns == stamp and (second / "object.json").is_file()
    assert not staging.exists()
    (first / "001.npy").unlink()  # a view lost: the object is rendered again
    assert make_views(tmp_path / "ds", 3, **spec).n_written == 1 and (first / "001.npy").is_file()
    (first / "object.json").unlink()  # so is one that lost its description
    assert make_views(tmp_path / "ds", 3, **spec).n_written == 1 and (first / "object.json").is_file()
    assert [o.object_id for o in scan(tmp_path / "ds")] == ["train_000000", "train_000001", "train_000002"]
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["n_objects"] == 3
    with pytest.raises(InputError, match="size=16"):
        make_views(tmp_path / "ds", 3, **{**spec, "size": 32})


def invoke(*args: str):
    """Run the sjc3d CLI in-process (Typer's runner): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from sjc3d.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_make_views_command_end_to_end(tmp_path):
    """The CLI writes the layout; the reader loads it; object.json re-renders the same pixels."""
    out = tmp_path / "views"
    code, stdout, stderr = invoke("make-views", str(out), "--objects", "2", "--views", "3", "--size", "32",
                                  "--seed", "5", "--split", "test")
    assert code == 0, stderr
    assert "2 objects written" in stdout
    data = load_dataset(out, 32)
    assert data.images.shape == (6, 32, 32, 3) and data.names == ["test_000000", "test_000001"]
    obj = load_object(out / "test_000001")
    assert obj == procedural_object(ViewsSpec(seed=5, split="test", n_views=3, size=32), 1)
    images, c2w = data.views_of(1)
    again = composite_on_white(render_views(obj, c2w, 32))
    assert (again * 255 - images.float()).abs().max() <= 1.0  # 8-bit rounding of RGB and alpha
    assert images.float().std() > 10  # not blank


@pytest.mark.parametrize("args, message", [
    (["--split", "val"], "--split 'val'"),
    (["--objects", "0"], "--objects >= 1"),
    (["--size", "4"], "--size >= 8"),
])
def test_make_views_rejects_bad_options_in_one_line(tmp_path, args, message):
    code, _, stderr = invoke("make-views", str(tmp_path / "x"), *args)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and lines[0].startswith("error: ")
    assert not (tmp_path / "x").exists()


def test_make_views_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"")
    code, _, stderr = invoke("make-views", str(tmp_path / "photos"), "--objects", "1")
    assert code == 2 and "is not empty" in stderr and len(stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- bad data folders


def good_object(folder: Path, n_views: int = 2, size: int = 8) -> None:
    rgba = np.full((size, size, 4), 255, np.uint8)
    for v in range(n_views):
        write_view(folder, v, rgba, c2w_at(0.0, 90.0 * v, 2.0)[0])


def cli_error(run) -> str:
    """Run `run` behind the CLI's error handling (sjc3d.cli.guarded); return its one line."""
    import typer
    from typer.testing import CliRunner

    from sjc3d.cli import guarded

    app = typer.Typer()

    @app.command()
    def main() -> None:
        guarded(run)

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _empty_root(root: Path) -> str:
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        path.unlink() if path.is_file() else path.rmdir()
    return f"{root}"


def _no_views(root: Path) -> str:
    for path in (root / "b").glob("0*"):
        path.unlink()
    return f"{root / 'b'}"


def _save_npy(value: np.ndarray):
    def breaker(root: Path) -> str:
        np.save(root / "b" / "001.npy", value)
        return f"{root / 'b' / '001.npy'}"
    return breaker


def _write(name: str, text: str):
    def breaker(root: Path) -> str:
        (root / "b" / name).write_text(text)
        return f"{root / 'b' / name}"
    return breaker


def _remove(name: str, named: str):
    def breaker(root: Path) -> str:
        (root / "b" / name).unlink()
        return f"{root / 'b' / named}"
    return breaker


def _truncate(root: Path) -> str:
    path = root / "b" / "001.png"
    path.write_bytes(path.read_bytes()[:-40])  # the header survives: caught when pixels are decoded
    return f"{path}"


def _save_image(mode: str, size: tuple[int, int]):
    def breaker(root: Path) -> str:
        Image.new(mode, size).save(root / "b" / "001.png")
        return f"{root / 'b' / '001.png'}"
    return breaker


BAD_FOLDERS = {  # name: breaks a good two-object folder, returns what the message must name
    "empty root": _empty_root,
    "object without views": _no_views,
    "png without npy": _remove("001.npy", "001.png"),
    "npy without png": _remove("001.png", "001.npy"),
    "npy of the wrong shape": _save_npy(np.eye(4)),
    "npy of integers": _save_npy(np.zeros((3, 4), np.int64)),
    "npy not finite": _save_npy(np.full((3, 4), np.nan)),
    "npy not a rotation": _save_npy(2 * np.eye(3, 4)),
    "npy not numpy": _write("001.npy", "hello"),
    "png not an image": _write("001.png", "hello"),
    "png truncated": _truncate,
    "png without alpha": _save_image("RGB", (8, 8)),
    "png not square": _save_image("RGBA", (8, 6)),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_bad_data_folder_stops_with_one_line_naming_the_file(tmp_path, case):
    root = tmp_path / "data"
    good_object(root / "a")
    good_object(root / "b")
    (root / "b" / "notes.txt").write_text("other files are ignored")
    assert load_dataset(root, 8).images.shape == (4, 8, 8, 3)
    named = BAD_FOLDERS[case](root)
    line = cli_error(lambda: load_dataset(root, 8))
    assert named in line
    if case != "png truncated":  # everything else is caught up front, before any pixel is decoded
        with pytest.raises(InputError):
            scan(root)


def test_pixel_rays_are_the_cameras_rays_at_the_fine_resolution():
    from sjc3d.cameras import camera_rays
    from sjc3d.datasets.raytrace import pixel_rays

    c2w = torch.cat([c2w_at(20.0, 30.0, 1.8), c2w_at(-50.0, 200.0, 2.2)])
    pixels = torch.tensor([[0, 0, 0], [1, 5, 2], [0, 7, 7], [1, 3, 6]])
    rays_o, rays_d = pixel_rays(c2w, FOV_DEG, 8, 3, pixels)
    fine_o, fine_d = camera_rays(c2w, FOV_DEG, 24)
    for index, (v, i, j) in enumerate(pixels.tolist()):
        block = slice(9 * index, 9 * index + 9)
        expected = fine_d[v, 3 * i:3 * i + 3, 3 * j:3 * j + 3].reshape(9, 3)
        assert torch.allclose(rays_d[block], expected, atol=1e-6)
        assert torch.allclose(rays_o[block], fine_o[v, 3 * i:3 * i + 3, 3 * j:3 * j + 3].reshape(9, 3))
