"""Metrics: values computed by hand on boxes and spheres, and the `sjc3d eval` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from sjc3d.cli import app
from sjc3d.metrics import (
    chamfer_distance,
    evaluate_meshes,
    f_score,
    normal_consistency,
    normalize_to_unit,
    occupancy_grid,
    psnr,
    volume_iou,
)

N = 20_000  # surface samples: enough for 1 % accuracy on these shapes, fast on two cores


def sphere(radius: float) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(5, radius=radius)


def test_normalize_to_unit_centres_and_scales_the_box():
    box = trimesh.creation.box((2.0, 4.0, 1.0))
    box.apply_translation([3.0, -1.0, 7.0])
    unit = normalize_to_unit(box)
    assert np.allclose(unit.bounds.mean(0), 0.0)
    assert unit.extents.max() == pytest.approx(1.0)
    assert np.allclose(unit.extents, [0.5, 1.0, 0.25])
    assert np.allclose(box.bounds[0], [2.0, -3.0, 6.5])  # the input is not modified


def test_volume_iou_of_shifted_unit_cubes_is_one_minus_d_over_one_plus_d():
    # The union box is (1 + d) long in x; with d = 0.28 both cubes' faces fall on cell walls of
    # the 64³ grid, so the voxel count is exact: IoU = (1 − d)/(1 + d) = 0.5625.
    a = trimesh.creation.box((1.0, 1.0, 1.0))
    for d, tolerance in ((0.28, 1e-9), (0.5, 0.02)):
        b = a.copy()
        b.apply_translation([d, 0.0, 0.0])
        assert volume_iou(a, b) == pytest.approx((1 - d) / (1 + d), abs=tolerance)
    assert volume_iou(a, a.copy()) == 1.0


def test_volume_iou_of_concentric_spheres_is_the_volume_ratio():
    assert volume_iou(sphere(0.5), sphere(0.4)) == pytest.approx(0.8**3, abs=0.01)


def test_occupancy_survives_small_holes():
    # Two faces missing: one of the three axis rays through the hole sees wrong parity, the
    # majority vote of the three axes does not.
    full = sphere(0.5)
    holed = full.copy()
    holed.update_faces(np.arange(len(full.faces)) > 1)
    lo, hi = np.full(3, -0.5), np.full(3, 0.5)
    inside_full = occupancy_grid(full, lo, hi, 32)
    inside_holed = occupancy_grid(holed, lo, hi, 32)
    assert (inside_full != inside_holed).mean() < 0.002


def test_chamfer_distance_of_concentric_spheres_is_the_radius_gap():
    # Every point of one sphere is |r1 − r2| from the other: CD (non-squared, mean) = 0.1.
    assert chamfer_distance(sphere(0.5), sphere(0.4), n_points=N) == pytest.approx(0.1, rel=0.02)


def test_f_score_switches_at_the_radius_gap():
    assert f_score(sphere(0.5), sphere(0.4), threshold=0.09, n_points=N) == 0.0
    assert f_score(sphere(0.5), sphere(0.4), threshold=0.11, n_points=N) == 1.0


def test_metrics_are_deterministic_and_exact_against_itself():
    bunny = sphere(0.5)
    assert chamfer_distance(bunny, bunny, n_points=N) == 0.0
    a = chamfer_distance(bunny, sphere(0.45), n_points=N)
    assert chamfer_distance(bunny, sphere(0.45), n_points=N) == a


def test_evaluate_meshes_normalises_scale_and_translation():
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    big = box.copy()
    big.apply_scale(3.0)
    big.apply_translation([5.0, 0.0, 0.0])
    metrics = evaluate_meshes(big, box, n_points=N)
    assert metrics.iou == 1.0 and metrics.chamfer == pytest.approx(0.0, abs=1e-9) and metrics.f_score == 1.0


def test_normal_consistency_of_tilted_planes_is_the_cosine():
    # Two unit squares through the origin, the second turned 30° about the x axis: every
    # sample's nearest neighbour on the other square has a normal at 30° to its own.
    square = trimesh.Trimesh([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], [[0, 1, 2], [0, 2, 3]])
    tilted = square.copy()
    tilted.apply_transform(trimesh.transformations.rotation_matrix(math.radians(30), [1, 0, 0]))
    assert normal_consistency(square, tilted, n_points=N) == pytest.approx(math.cos(math.radians(30)), abs=1e-9)
    flipped = trimesh.Trimesh(square.vertices, square.faces[:, ::-1])
    assert normal_consistency(square, flipped, n_points=N) == 1.0  # sign-free


def test_normal_consistency_sees_bumps_that_chamfer_barely_sees():
    smooth = sphere(0.5)
    bumpy = smooth.copy()
    bumpy.vertices *= 1.0 + 0.004 * np.random.default_rng(0).standard_normal((len(bumpy.vertices), 1))
    m_smooth, m_bumpy = evaluate_meshes(smooth, smooth, n_points=N), evaluate_meshes(bumpy, smooth, n_points=N)
    assert m_smooth.normal_consistency == 1.0
    # 0.4 % radial noise (0.002 on edges of 0.02) tilts faces by ~10°: measured 0.978, while
    # Chamfer stays at the sampling floor (0.008) and IoU at 0.97.
    assert m_bumpy.normal_consistency < 0.99
    assert m_bumpy.chamfer < 0.01 and m_bumpy.iou > 0.95


def test_psnr_known_values():
    a = np.zeros((4, 4, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError):
        psnr(a, np.zeros((2, 2, 3)))


# --------------------------------------------------------------------------- the CLI


def _run(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def test_eval_cli_mesh_against_itself(tmp_path):
    path = tmp_path / "box.obj"
    trimesh.creation.box((1.0, 2.0, 0.5)).export(path)
    out = tmp_path / "metrics.json"
    result = _run("--mesh", str(path), "--gt", str(path), "--json", str(out))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    assert printed["iou"] == 1.0 and printed["chamfer"] == 0.0 and printed["f_score"] == 1.0
    assert printed["normal_consistency"] == 1.0
    assert json.loads(out.read_text()) == printed
    assert "normal consistency" in result.output
    assert "volume IoU" in result.output  # the table


def test_eval_cli_cube_against_a_flatter_box(tmp_path):
    # Normalised, both are centred with longest side 1: the 4×4×3 box becomes the cube's middle
    # three quarters in z, whose faces fall on cell walls of the 64³ grid: IoU is exactly 3/4.
    cube, flat = tmp_path / "cube.ply", tmp_path / "flat.ply"
    trimesh.creation.box((1.0, 1.0, 1.0)).export(cube)
    trimesh.creation.box((4.0, 4.0, 3.0)).export(flat)
    result = _run("--mesh", str(flat), "--gt", str(cube))
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["iou"] == pytest.approx(0.75, abs=1e-9)
    assert 0.0 < metrics["chamfer"] < 0.125 and metrics["f_score"] < 1.0


def test_eval_cli_bad_inputs_are_one_line_errors(tmp_path):
    good = tmp_path / "box.obj"
    trimesh.creation.box().export(good)
    junk = tmp_path / "junk.obj"
    junk.write_text("this is not a mesh\n")
    for args in (["--mesh", str(tmp_path / "missing.obj"), "--gt", str(good)], ["--mesh", str(junk), "--gt", str(good)]):
        result = _run(*args)
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:")
