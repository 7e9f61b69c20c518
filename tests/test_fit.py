"""`sjc3d fit`: run directory, resume (also after kill -9), non-finite stops, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sjc3d.config import load_config
from sjc3d.errors import NonFiniteError
from sjc3d.rundir import RunPaths, load_checkpoint
from sjc3d.trainer import fit

REPO = Path(__file__).resolve().parent.parent
FAST = ["train.checkpoint_every=2", "train.preview_every=3", "train.log_every=1", "train.preview_frames=3"]


def oracle_config(steps: int, *extra: str):
    return load_config(["cpu-tiny"], [f"train.steps={steps}", *FAST, *extra])


def metric_steps(paths: RunPaths) -> list[int]:
    return [json.loads(line)["step"] for line in paths.metrics.read_text().splitlines()]


def test_fit_with_the_oracle_writes_the_run_directory(tmp_path):
    result = fit(oracle_config(4), None, tmp_path / "run", progress=False)
    paths = RunPaths(tmp_path / "run")
    assert result.step == 4 and result.run_dir == paths.root
    assert paths.config.is_file() and paths.input_image.is_file()
    assert load_checkpoint(paths.final_checkpoint)["step"] == 4
    assert load_checkpoint(paths.last_checkpoint)["step"] == 4
    assert metric_steps(paths) == [1, 2, 3, 4]
    assert (paths.previews / "step_000003.png").is_file() and (paths.previews / "final.png").is_file()
    strip = np.asarray(Image.open(paths.previews / "final.png"))
    assert strip.shape[1] == 3 * strip.shape[0]  # three frames side by side
    assert np.isfinite(result.metrics["loss"]) and "ref_psnr" in result.metrics


def test_stop_flag_checkpoints_the_last_step_and_callbacks_see_every_step(tmp_path):
    import threading

    from sjc3d.priors import build_prior

    config = oracle_config(8)
    prior = build_prior(config, torch.device("cpu"))  # loaded once by the caller, as the web app does
    stop, seen = threading.Event(), []

    def on_step(step, stats):
        seen.append(step)
        assert np.isfinite(stats["loss"])
        if step == 3:
            stop.set()

    result = fit(config, None, tmp_path / "run", progress=False, prior=prior, on_step=on_step, stop=stop)
    paths = RunPaths(tmp_path / "run")
    assert result.stopped and result.step == 3 and seen == [1, 2, 3]
    assert load_checkpoint(paths.last_checkpoint)["step"] == 3
    assert not paths.final_checkpoint.exists()
    resumed = fit(config, None, paths.root, resume=True, progress=False, prior=prior)
    assert not resumed.stopped and resumed.step == 8 and metric_steps(paths) == list(range(1, 9))


def test_score_weight_zero_never_asks_the_prior(tmp_path):
    from sjc3d.priors import build_prior

    config = oracle_config(3, "sjc.weight=0")
    prior = build_prior(config, torch.device("cpu"))
    calls = []
    prior.denoise = lambda *args, **kwargs: calls.append(1)  # would break the step if it were used
    result = fit(config, None, tmp_path / "run", progress=False, prior=prior)
    assert result.step == 3 and calls == [] and "score_norm" not in result.metrics
    assert np.isfinite(result.metrics["loss"]) and result.metrics["ref_color"] >= 0


@pytest.mark.parametrize("output", ["latent", "rgb"])
def test_fit_with_a_tiny_zero123(tmp_path, tiny_zero123, output):
    config = load_config(["cpu-tiny"], [
        f"prior.source={tiny_zero123['ccp']}", f"field.output={output}", "train.steps=2", *FAST,
        "prior.guidance_scale=3", "camera.resolution=16" if output == "rgb" else "camera.resolution=8",  # tiny VAE: 64² → 8²
    ])
    image = REPO.parent / "shared" / "data" / "images" / "hamburger_rgba.png"
    if not image.is_file():
        pytest.skip("../shared/data is not present")
    result = fit(config, image, tmp_path / output, progress=False)
    paths = RunPaths(tmp_path / output)
    state = load_checkpoint(paths.final_checkpoint)
    assert result.step == 2 and state["step"] == 2
    assert state["background"].shape == ((4,) if output == "latent" else (3,))
    assert np.isfinite(result.metrics["loss"])


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = fit(oracle_config(6), None, tmp_path / "straight", progress=False)

    import sjc3d.trainer as trainer

    original = trainer.train_step

    def interrupted(stage, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(stage, step)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(oracle_config(6), None, tmp_path / "resumed", progress=False)
    paths = RunPaths(tmp_path / "resumed")
    assert load_checkpoint(paths.last_checkpoint)["step"] == 3  # Ctrl-C saved the last completed step
    monkeypatch.setattr(trainer, "train_step", original)

    resumed = fit(oracle_config(6), None, paths.root, resume=True, progress=False)
    assert resumed.step == 6
    assert metric_steps(paths) == [1, 2, 3, 4, 5, 6]
    a = load_checkpoint(RunPaths(straight.run_dir).final_checkpoint)["field"]
    b = load_checkpoint(paths.final_checkpoint)["field"]
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.allclose(a[name], b[name], atol=1e-6), name
        else:  # a module's extra state (the hash grid records its backend and geometry)
            assert a[name] == b[name], name


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sjc3d.cli", *args], capture_output=True, text=True, cwd=REPO, **kwargs)


def test_resume_after_kill_9(tmp_path):
    run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "sjc3d.cli", "fit", "-c", "cpu-tiny", "--out", str(run), "train.steps=10000",
         "train.checkpoint_every=2", "train.preview_every=0", "train.log_every=1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    paths = RunPaths(run)
    deadline = time.time() + 120
    while time.time() < deadline and not (paths.last_checkpoint.is_file() and metric_steps(paths)[-1:] >= [5]):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = load_checkpoint(paths.last_checkpoint)["step"]
    assert saved >= 2
    result = cli("fit", "--resume", str(run), f"train.steps={saved + 3}", "train.preview_every=0")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(paths.final_checkpoint)["step"] == saved + 3
    steps = metric_steps(paths)
    assert steps == list(range(1, saved + 4))  # lines past the checkpoint were dropped, none missing


def test_non_finite_score_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from sjc3d.priors.oracle import OraclePrior

    calls = {"n": 0}
    original = OraclePrior.denoise

    def poisoned(self, z, sigma, pose, guidance_scale=1.0, **options):
        calls["n"] += 1
        out = original(self, z, sigma, pose, guidance_scale, **options)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(OraclePrior, "denoise", poisoned)
    with pytest.raises(NonFiniteError, match=r"non-finite score at step 3.*last good checkpoint"):
        fit(oracle_config(10), None, tmp_path / "nan", progress=False)
    assert load_checkpoint(RunPaths(tmp_path / "nan").last_checkpoint)["step"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png"], "does not exist"),
        (["README.md"], "is not an image"),
        ([], "give an input image"),
        (["train.stepz=3"], "unknown config key 'train.stepz'"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(args, message):
    result = cli("fit", *args, "train.steps=1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: ")


def test_transparent_image_is_refused(tmp_path):
    image = tmp_path / "clear.png"
    Image.fromarray(np.zeros((64, 64, 4), dtype=np.uint8)).save(image)
    result = cli("fit", str(image), "train.steps=1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "fully transparent" in result.stderr
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    fit(oracle_config(2), None, run, progress=False)
    before = (RunPaths(run).final_checkpoint).stat().st_mtime_ns
    result = cli("fit", "-c", "cpu-tiny", "--out", str(run), "train.steps=2")
    assert result.returncode == 2 and "--resume" in result.stderr
    assert RunPaths(run).final_checkpoint.stat().st_mtime_ns == before


def test_fit_with_the_oracle_in_latent_space(tmp_path, tiny_zero123):
    """The oracle encodes its true views with the VAE of a given model (here the tiny one)."""
    config = load_config(["cpu-tiny"], [
        "field.output=latent", f"prior.vae_source={tiny_zero123['ccp']}", "camera.resolution=8",
        "train.steps=2", *FAST,
    ])
    result = fit(config, None, tmp_path / "latent-oracle", progress=False)
    state = load_checkpoint(RunPaths(tmp_path / "latent-oracle").final_checkpoint)
    assert result.step == 2 and state["background"].shape == (4,)
    assert np.isfinite(result.metrics["loss"])
