"""`sjc3d views`: poses, file names, and an end-to-end run on a tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sjc3d.errors import ConfigError
from sjc3d.views import grid, parse_azimuths, target_poses, view_name

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def object_png(tmp_path_factory) -> Path:
    """A small RGBA image: an orange square on a transparent background."""
    path = tmp_path_factory.mktemp("views") / "object.png"
    rgba = np.zeros((80, 80, 4), dtype=np.uint8)
    rgba[20:60, 25:55] = (230, 120, 30, 255)
    Image.fromarray(rgba).save(path)
    return path


def test_parse_azimuths():
    assert parse_azimuths("30,90,180") == [30.0, 90.0, 180.0]
    assert parse_azimuths(" -45, 12.5 ") == [-45.0, 12.5]
    for bad in ("", "30,north", "nan"):
        with pytest.raises(ConfigError, match="--azimuth"):
            parse_azimuths(bad)


def test_view_names():
    assert view_name(30, 0, 0) == "az030_el+00_r+0.00"
    assert view_name(180, -10, 0.25) == "az180_el-10_r+0.25"
    assert view_name(-45, 7.5, 0) == "az-45_el+7.5_r+0.00"


def test_target_poses_follow_the_camera_convention():
    poses = target_poses([0.0, 90.0, 180.0], input_elevation=10.0, elevation_delta=0.0, radius=2.0, radius_delta=0.0)
    torch.testing.assert_close(poses[0], torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(poses[1], torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(poses[2], torch.tensor([0.0, 0.0, -1.0, 0.0]), atol=1e-5, rtol=0)
    up = target_poses([0.0], input_elevation=0.0, elevation_delta=20.0, radius=2.0, radius_delta=0.3)[0]
    assert up[0].item() == pytest.approx(-math.radians(20.0), abs=1e-5)  # moving up = smaller polar angle
    assert up[3].item() == pytest.approx(0.3, abs=1e-5)


def test_grid_places_images_side_by_side():
    a, b = torch.zeros(8, 8, 3), torch.ones(8, 8, 3)
    g = grid([a, b])
    assert g.shape[0] == 8 and g.shape[1] > 16
    assert torch.equal(g[:, :8], a) and torch.equal(g[:, -8:], b)


def _run(object_png, tiny_zero123, out, seed, azimuth="30,90,180", steps=3):
    from sjc3d.views import views_command

    return views_command(image=object_png, azimuth=azimuth, elevation_delta=0.0, radius_delta=0.0, input_elevation=0.0,
                         model=str(tiny_zero123["ccp"]), steps=steps, guidance=3.0, seed=seed, out=out, device="cpu")


def test_views_end_to_end_is_deterministic(object_png, tiny_zero123, tmp_path):
    first = _run(object_png, tiny_zero123, tmp_path / "a", seed=7)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names == sorted(["az030_el+00_r+0.00.png", "az090_el+00_r+0.00.png", "az180_el+00_r+0.00.png", "grid.png"])
    assert len(first) == 4
    view = np.asarray(Image.open(tmp_path / "a" / "az030_el+00_r+0.00.png"))
    assert view.shape == (64, 64, 3)
    grid_image = np.asarray(Image.open(tmp_path / "a" / "grid.png"))
    assert grid_image.shape[0] == 64 and grid_image.shape[1] >= 4 * 64
    _run(object_png, tiny_zero123, tmp_path / "b", seed=7)
    _run(object_png, tiny_zero123, tmp_path / "c", seed=8)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    view_c = np.asarray(Image.open(tmp_path / "c" / "az030_el+00_r+0.00.png"))
    assert not np.array_equal(view, view_c)


def test_eta_puts_seeded_noise_back_and_zero_is_plain_ddim(tiny_zero123_prior):
    from sjc3d.views import sample_views

    prior = tiny_zero123_prior
    prior.condition(torch.full((64, 64, 3), 0.5), 0.0, 2.0)
    poses = target_poses([30.0, 90.0], 0.0, 0.0, 2.0, 0.0)

    def sample(eta: float, seed: int = 3) -> torch.Tensor:
        return sample_views(prior, poses, 4, 3.0, torch.Generator().manual_seed(seed), eta=eta)

    ddim = sample(0.0)
    assert torch.equal(ddim, sample_views(prior, poses, 4, 3.0, torch.Generator().manual_seed(3)))  # the default
    ancestral = sample(1.0)
    assert torch.equal(ancestral, sample(1.0))  # the step noise comes from the seeded generator
    assert not torch.allclose(ancestral, ddim, atol=1e-3)
    assert not torch.allclose(ancestral, sample(1.0, seed=4), atol=1e-3)


def test_guidance_min_t_guides_only_the_early_steps(tiny_zero123_prior):
    """Steps with t below guidance_min_t are unguided: above every step's t it is guidance 1, at 0 plain guidance."""
    from sjc3d.views import sample_views

    prior = tiny_zero123_prior
    prior.condition(torch.full((64, 64, 3), 0.5), 0.0, 2.0)
    poses = target_poses([30.0, 90.0], 0.0, 0.0, 2.0, 0.0)

    def sample(guidance: float, min_t: int = 0) -> torch.Tensor:
        return sample_views(prior, poses, 4, guidance, torch.Generator().manual_seed(3), guidance_min_t=min_t)

    guided, unguided = sample(5.0), sample(1.0)
    assert torch.equal(sample(5.0, 0), sample_views(prior, poses, 4, 5.0, torch.Generator().manual_seed(3)))
    assert torch.equal(sample(5.0, 1000), unguided)  # 4 steps: t = 751, 501, 251, 1
    limited = sample(5.0, 300)  # guided at 751 and 501 only
    assert not torch.allclose(limited, guided, atol=1e-4) and not torch.allclose(limited, unguided, atol=1e-4)


def test_views_cli_runs_on_a_tiny_model(object_png, tiny_zero123, tmp_path):
    from typer.testing import CliRunner

    from sjc3d.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["views", str(object_png), "--model", str(tiny_zero123["ccp"]), "--azimuth", "45",
                                      "--elevation-delta", "10", "--steps", "2", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "az045_el+10_r+0.00.png").is_file() and (out / "grid.png").is_file()


def test_views_cli_writes_under_outputs_views_by_default(object_png, tiny_zero123, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sjc3d.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["views", str(object_png), "--model", str(tiny_zero123["ccp"]), "--azimuth", "90",
                                      "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "outputs" / "views" / "object").iterdir())
    assert len(runs) == 1 and (runs[0] / "grid.png").is_file() and (runs[0] / "az090_el+00_r+0.00.png").is_file()
    assert str(Path("outputs") / "views" / "object" / runs[0].name) in result.output  # it says where


@pytest.mark.parametrize("args, match", [
    (dict(azimuth="left"), "--azimuth"),
    (dict(steps=0), "--steps"),
    (dict(radius_delta=-5.0), "--radius-delta"),
    (dict(guidance_min_t=-1), "--guidance-min-t"),
])
def test_views_rejects_bad_options(object_png, tiny_zero123, tmp_path, args, match):
    from sjc3d.views import views_command

    options = dict(image=object_png, azimuth="30", elevation_delta=0.0, radius_delta=0.0, input_elevation=0.0,
                   model=str(tiny_zero123["ccp"]), steps=2, guidance=3.0, seed=0, out=tmp_path / "x", device="cpu")
    options.update(args)
    with pytest.raises(ConfigError, match=match):
        views_command(**options)


def test_a_v_model_samples_with_the_epsilon_its_prior_returns(tiny_zero123_prior):
    """predict_noise already turns v into ε: the sampler must read ε, not convert a second time."""
    from diffusers import DDIMScheduler

    from sjc3d.priors.zero123 import Zero123Prior
    from sjc3d.views import sample_views

    p = tiny_zero123_prior
    prior = Zero123Prior(p.unet, p.vae, p.image_encoder, p.projection,
                         {**p.scheduler_config, "prediction_type": "v_prediction"})
    prior.condition(torch.full((64, 64, 3), 0.5), 0.0, 2.0)
    poses = target_poses([30.0, 90.0], 0.0, 0.0, 2.0, 0.0)
    sampled = sample_views(prior, poses, 3, 3.0, torch.Generator().manual_seed(5))

    scheduler = DDIMScheduler.from_config({**prior.scheduler_config, "prediction_type": "epsilon"})
    scheduler.set_timesteps(3)
    x = torch.randn((2, prior.n_channels, *prior.concat_latent.shape[-2:]), generator=torch.Generator().manual_seed(5))
    for t in scheduler.timesteps:
        x = scheduler.step(prior.predict_noise(x, t.reshape(1).expand(2), poses, 3.0), t, x).prev_sample
    torch.testing.assert_close(sampled, prior.decode(x))


def test_the_last_ddim_step_lands_on_alpha_0_as_the_original_sampler(tiny_zero123_prior):
    """One DDIM step (t = 1) from noise x lands on ᾱ_0 (the public config's `set_alpha_to_one=False`),
    not on the denoised latent: x̂0 = (x − √(1 − ᾱ_1)·ε̂)/√ᾱ_1, decoded is √ᾱ_0·x̂0 + √(1 − ᾱ_0)·ε̂."""
    from sjc3d.views import sample_views

    prior = tiny_zero123_prior
    assert prior.scheduler_config["set_alpha_to_one"] is False
    prior.condition(torch.full((64, 64, 3), 0.5), 0.0, 2.0)
    poses = target_poses([30.0, 90.0], 0.0, 0.0, 2.0, 0.0)
    sampled = sample_views(prior, poses, 1, 3.0, torch.Generator().manual_seed(2))
    x = torch.randn((2, prior.n_channels, *prior.concat_latent.shape[-2:]), generator=torch.Generator().manual_seed(2))
    eps = prior.predict_noise(x, torch.tensor([1, 1]), poses, 3.0)
    a1, a0 = float(prior.alphas_cumprod[1]), float(prior.alphas_cumprod[0])
    x0 = (x - math.sqrt(1 - a1) * eps) / math.sqrt(a1)
    landed = math.sqrt(a0) * x0 + math.sqrt(1 - a0) * eps
    torch.testing.assert_close(sampled, prior.decode(landed), rtol=1e-4, atol=1e-4)
