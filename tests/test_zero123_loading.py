"""Loading Zero-1-to-3 from every public layout, and failing with one clear line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sjc3d.config import DEFAULT_MODEL
from sjc3d.errors import ModelNotFoundError
from sjc3d.priors import loading
from sjc3d.priors.zero123 import load_vae, load_zero123

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zero123_fixtures  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def reference_models():
    return zero123_fixtures.build_models(seed=0)  # the weights every layout was written with


@pytest.fixture(scope="module")
def loaded(tiny_zero123) -> dict:
    out = {}
    for layout in zero123_fixtures.LAYOUTS:
        parts = loading.load_parts(str(tiny_zero123[layout]), image_encoder=str(tiny_zero123["image_encoder"]))
        out[layout] = parts
    return out


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", zero123_fixtures.LAYOUTS)
def test_every_layout_loads_the_same_weights(loaded, reference_models, layout):
    parts = loaded[layout]
    for name in ("unet", "vae", "image_encoder", "projection"):
        assert _same(getattr(parts, name), reference_models[name]), f"{layout}: {name} differs"
    assert parts.projection.in_features == 772 and parts.projection.out_features == 768
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear"
    assert parts.stable == (layout == "stable")
    assert not any(p.requires_grad for p in parts.unet.parameters())


def test_ckpt_uses_the_ema_weights_and_runs_no_pickled_code(tiny_zero123, loaded, reference_models):
    from sjc3d.priors import ckpt as ldm

    raw = ldm.read_checkpoint(tiny_zero123["ckpt"])
    assert zero123_fixtures.TRIPWIRE == []  # the pickled callback object was never called
    non_ema, _, _, used = ldm.split_checkpoint(raw, use_ema=False)
    assert not used
    key = "input_blocks.0.0.weight"
    ema_value = raw[ldm.ldm_ema_name(ldm.UNET_PREFIX + key)]
    assert not torch.equal(non_ema[key], ema_value)  # the fixture made them differ
    assert torch.equal(loaded["ckpt"].unet.state_dict()["conv_in.weight"], ema_value)
    # the tripwire is live: an unrestricted unpickler would have run it
    torch.load(tiny_zero123["ckpt"], weights_only=False)
    assert zero123_fixtures.TRIPWIRE == ["unpickled"]
    zero123_fixtures.TRIPWIRE.clear()


def test_ckpt_and_folders_give_the_same_denoiser(tiny_zero123):
    torch.manual_seed(0)
    image = torch.rand(64, 64, 3)
    z = torch.randn(3, 4, 8, 8)
    pose = torch.tensor([[0.2, 0.5, 0.87, 0.0], [-0.3, -1.0, 0.0, 0.4], [0.0, 0.0, 1.0, 0.0]])
    outputs = {}
    for layout in ("cc", "ccp", "ckpt"):
        prior = load_zero123(str(tiny_zero123[layout]), image_encoder=str(tiny_zero123["image_encoder"]))
        prior.image_size = zero123_fixtures.IMAGE_SIZE  # a .ckpt cannot say it is a 64² toy
        prior.condition(image, 10.0, 2.0)
        outputs[layout] = prior.denoise(z, prior.sigmas[[50, 400, 900]], pose, 3.0)
    assert outputs["cc"].abs().mean() > 0
    torch.testing.assert_close(outputs["ccp"], outputs["cc"], rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs["ckpt"], outputs["cc"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", zero123_fixtures.LAYOUTS)
def test_load_vae_from_every_layout(tiny_zero123, reference_models, layout):
    vae = load_vae(str(tiny_zero123[layout]))
    assert _same(vae, reference_models["vae"])


def test_default_hub_id_offline_is_one_clear_line():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ModelNotFoundError) as err:
        load_zero123(DEFAULT_MODEL)
    message = str(err.value)
    assert "\n" not in message
    assert DEFAULT_MODEL in message and "offline" in message
    assert "--model" in message and "prior.source=" in message
    assert f"huggingface-cli download {DEFAULT_MODEL}" in message


def test_missing_paths_and_typos_are_model_not_found(tmp_path):
    for source in (str(tmp_path / "nope.ckpt"), "definitely not a model", str(tmp_path / "missing-folder")):
        with pytest.raises(ModelNotFoundError, match="no such file or folder"):
            load_zero123(source)


def test_ckpt_without_a_local_image_encoder_names_it(tiny_zero123):
    with pytest.raises(ModelNotFoundError) as err:
        load_zero123(str(tiny_zero123["ckpt"]))  # default encoder: lambdalabs/... (not cached)
    assert "image encoder" in str(err.value) and "lambdalabs/sd-image-variations-diffusers" in str(err.value)
    assert "prior.image_encoder=" in str(err.value)


@pytest.mark.parametrize("broken", ["vae_weights", "projection", "unet_dir"])
def test_incomplete_folders_name_the_missing_part(tiny_zero123, tmp_path, broken):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_zero123["ccp"], folder)
    if broken == "vae_weights":
        (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
        match = "vae/"
    elif broken == "projection":
        shutil.rmtree(folder / "clip_camera_projection")
        match = "cc_projection/ or clip_camera_projection/"
    else:
        shutil.rmtree(folder / "unet")
        match = "unet/"
    with pytest.raises(ModelNotFoundError, match=match):
        load_zero123(str(folder))


def test_a_prediction_type_the_prior_cannot_read_is_one_line(tiny_zero123, tmp_path):
    folder = tmp_path / "x0-model"
    shutil.copytree(tiny_zero123["ccp"], folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "sample"}))
    with pytest.raises(ModelNotFoundError, match="predicts 'sample'"):
        load_zero123(str(folder))


def test_mismatched_weights_are_reported(tiny_zero123, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "mismatch"
    shutil.copytree(tiny_zero123["ccp"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["conv_in.weight"]
    save_file(state, str(weights))
    with pytest.raises(ModelNotFoundError, match="does not match the architecture"):
        load_zero123(str(folder))


def test_garbage_checkpoint_is_model_not_found(tmp_path):
    bad = tmp_path / "zero123.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelNotFoundError, match="not a readable checkpoint"):
        load_zero123(str(bad))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, other)
    with pytest.raises(ModelNotFoundError, match="not a Zero-1-to-3 checkpoint"):
        load_zero123(str(other))


def test_projection_accepts_both_key_namings():
    weight, bias = torch.randn(768, 772), torch.randn(768)
    for prefix in ("projection.", "proj."):
        layer = loading.projection_from_weights({f"{prefix}weight": weight, f"{prefix}bias": bias})
        assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)
    with pytest.raises(KeyError):
        loading.projection_from_weights({"other.weight": weight})


def test_stable_detection():
    assert loading.is_stable("ashawkey/stable-zero123-diffusers", "auto")
    assert loading.is_stable("/models/stable_zero123.ckpt", "auto")
    assert not loading.is_stable("ashawkey/zero123-xl-diffusers", "auto")
    assert not loading.is_stable("/stable/models/zero123-xl", "auto")  # only the model's own name counts
    assert loading.is_stable("ashawkey/zero123-xl-diffusers", "yes")
    assert not loading.is_stable("ashawkey/stable-zero123-diffusers", "no")


def test_views_cli_without_the_model_exits_with_one_line(tmp_path):
    from PIL import Image

    image = tmp_path / "object.png"
    rgba = torch.zeros(48, 48, 4, dtype=torch.uint8)
    rgba[12:36, 12:36] = torch.tensor([200, 60, 20, 255], dtype=torch.uint8)
    Image.fromarray(rgba.numpy()).save(image)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "sjc3d.cli", "views", str(image), "--out", str(tmp_path / "views"), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == ModelNotFoundError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and DEFAULT_MODEL in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "views").exists()


@pytest.mark.weights
def test_real_default_model_from_the_local_cache():
    """Needs the real weights in the HF cache (`huggingface-cli download ashawkey/zero123-xl-diffusers`)."""
    try:
        prior = load_zero123(DEFAULT_MODEL)
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    prior.condition(torch.ones(256, 256, 3), 0.0, 2.0)
    z = torch.randn(1, 4, 32, 32)
    out = prior.denoise(z, prior.sigmas[[500]], torch.tensor([[0.0, 1.0, 0.0, 0.0]]), 3.0)
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_hub_ids_download_configs_and_only_the_weights_needed(tiny_zero123, reference_models, tmp_path, monkeypatch):
    """A hub id goes through snapshot_download; .bin weights are fetched only where no safetensors exist."""
    import fnmatch

    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
        calls.append((repo_id, list(allow_patterns)))
        source = Path(tiny_zero123["cc"])  # the kxic layout: .bin weights only
        target = tmp_path / "snapshot"
        for file in source.rglob("*"):
            rel = file.relative_to(source).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target / rel)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(loading, "_offline", lambda: False)
    parts = loading.load_parts("kxic/zero123-tiny")
    assert _same(parts.unet, reference_models["unet"]) and _same(parts.projection, reference_models["projection"])
    assert [c[0] for c in calls] == ["kxic/zero123-tiny"] * 2
    first, second = calls[0][1], calls[1][1]
    assert "unet/*.safetensors" in first and not any(p.endswith(".bin") for p in first)
    assert "unet/*.bin" in second and "cc_projection/*.bin" in second
    # never a catch-all pattern that would pull multi-GB .ckpt files along
    assert all(p == "model_index.json" or "/" in p for p in first + second)
    assert not any(".ckpt" in p for p in first + second)


def test_hub_id_found_in_the_offline_cache(tiny_zero123, reference_models):
    """With HF_HUB_OFFLINE=1 a repo already in the standard cache (HF_HOME/hub) loads."""
    import huggingface_hub.constants as constants

    repo = Path(constants.HF_HUB_CACHE) / "models--sjc3d-test--zero123-tiny-cached"
    commit = "0" * 40
    if not repo.exists():
        shutil.copytree(tiny_zero123["ccp"], repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
    parts = loading.load_parts("sjc3d-test/zero123-tiny-cached")
    assert _same(parts.unet, reference_models["unet"])
    assert _same(load_vae("sjc3d-test/zero123-tiny-cached"), reference_models["vae"])
