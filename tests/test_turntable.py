"""Turntable poses, frame rendering, grids and video writing (with an analytic field)."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sjc3d.cameras import c2w_to_spherical
from sjc3d.cli import app
from sjc3d.render.base import RenderOutput
from sjc3d.image import save_png
from sjc3d.turntable import make_grid, render_frames, turntable_poses, write_video


def test_turntable_poses_circle_at_one_elevation():
    c2w = turntable_poses(12, elevation=15.0, radius=2.5)
    assert c2w.shape == (12, 4, 4)
    elevation, azimuth, radius = c2w_to_spherical(c2w)
    assert torch.allclose(elevation, torch.full((12,), 15.0), atol=1e-3)
    assert torch.allclose(radius, torch.full((12,), 2.5), atol=1e-5)
    steps = torch.remainder(torch.diff(azimuth), 360.0)
    assert torch.allclose(steps, torch.full((11,), 30.0), atol=1e-3)
    assert c2w[0, 0, 3] > 0 and abs(float(c2w[0, 1, 3])) < 1e-5  # frame 0 is the input view (+x)
    # every camera looks at the origin: −z axis parallel to −centre
    forward = -c2w[:, :3, 2]
    assert torch.allclose(forward, -torch.nn.functional.normalize(c2w[:, :3, 3], dim=-1), atol=1e-5)


def colour_by_view(c2w, fov_deg, resolution, background):
    """A stand-in for renderer.render_views: each view is a flat colour from its azimuth."""
    _, azimuth, _ = c2w_to_spherical(c2w)
    value = (torch.remainder(azimuth, 360.0) / 360.0)[:, None, None, None]
    channels = background.shape[0]
    features = value.expand(len(c2w), resolution, resolution, channels).clone()
    ones = torch.ones(len(c2w), resolution, resolution, 1)
    return RenderOutput(features, ones, ones)


def test_render_frames_rgb_and_latent():
    c2w = turntable_poses(5, 10.0, 2.0)
    rgb = render_frames(colour_by_view, c2w, 49.1, 24, torch.ones(3), batch=2)
    assert rgb.shape == (5, 24, 24, 3) and rgb.dtype == np.uint8
    assert rgb[0].max() == 0 and rgb[1, 0, 0, 0] == round(255 * 72 / 360)

    sides = []

    def decode(latents):
        sides.append(latents.shape[-1])
        return torch.nn.functional.interpolate(latents[:, :3], scale_factor=8).permute(0, 2, 3, 1)

    latent = render_frames(colour_by_view, c2w, 49.1, 64, torch.ones(4), decode=decode)
    assert latent.shape == (5, 64, 64, 3) and set(sides) == {8}  # rendered at 64/8, decoded to 64


def test_make_grid_places_views_row_major():
    images = np.stack([np.full((4, 6, 3), k, dtype=np.uint8) for k in range(5)])
    grid = make_grid(images, n_cols=3)
    assert grid.shape == (8, 18, 3)
    assert grid[0, 6, 0] == 1 and grid[4, 0, 0] == 3 and grid[4, 6, 0] == 4
    assert (grid[4:, 12:] == 255).all()  # the empty cell is white


def test_mp4_video_is_written_atomically(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "spin.mp4")
    assert path == tmp_path / "spin.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["spin.mp4"]  # no temporary left behind
    with imageio.get_reader(path) as reader:
        assert sum(1 for _ in reader) == 6


def test_gif_fallback_when_the_mp4_writer_is_unavailable(tmp_path, monkeypatch):
    def no_ffmpeg(*args, **kwargs):
        raise RuntimeError("imageio-ffmpeg is not installed")

    monkeypatch.setattr(imageio, "get_writer", no_ffmpeg)
    frames = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    frames[1] = 255
    path = write_video(frames, tmp_path / "spin.mp4")
    assert path == tmp_path / "spin.gif"
    assert len(imageio.mimread(path)) == 3


def test_grid_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(10, 20, 3), dtype=np.uint8)
    path = save_png(tmp_path / "grid.png", image)
    assert np.array_equal(imageio.imread(path), image)


@pytest.mark.parametrize(
    "args, code",
    [
        (["--video", "x.mp4", "does/not/exist"], 2),
        ([], 2),  # neither --video nor --grid
        (["--video", "x.avi"], 2),
    ],
)
def test_render_cli_errors_are_one_line(tmp_path, monkeypatch, args, code):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["render", *args])
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")



def test_render_cli_writes_video_and_grid_of_a_run(tmp_path):
    from test_export import make_run

    run = make_run(tmp_path / "run")
    video, grid = tmp_path / "spin.mp4", tmp_path / "grid.png"
    result = CliRunner().invoke(
        app, ["render", str(run.root), "--video", str(video), "--grid", str(grid), "--frames", "6", "--resolution", "32"]
    )
    assert result.exit_code == 0, result.output
    with imageio.get_reader(video) as reader:
        frames = [frame for frame in reader]
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
    image = imageio.imread(grid)
    assert image.shape == (64, 128, 3)  # 6 views in rows of four: 2 × 4 cells of 32²
    # The untrained field is a centred blob: the middle of a view is not the white background.
    assert image[16, 16].mean() < 250 and (image[-16:, -32:] == 255).all()
