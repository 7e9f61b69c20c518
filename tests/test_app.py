"""`sjc3d app` without a browser: the engine's jobs (sjc3d/app/jobs.py) and the Gradio wiring.

The jobs are plain Python and are tested everywhere; the page (sjc3d/app/layout.py) needs the
optional `app` extra and its tests skip without Gradio.  Fits here are a few steps of the
oracle's cpu-tiny preset (and a tiny latent preset with the tiny random Zero-1-to-3), exported
at a coarse grid, so the whole file takes seconds.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from sjc3d.app.examples import example_images
from sjc3d.app.jobs import (
    Engine, FitRequest, Turntable, ViewsRequest, check_image, check_views_request, list_presets, newest_preview, zip_run,
)
from sjc3d.errors import ConfigError, InputError

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL_EXPORT = ("export.resolution=32",)
TINY_LATENT_PRESET = """\
# A latent fit with the loaded model, small enough for a test.
field: {output: latent, n_levels: 4, log2_hashmap_size: 12, hidden_dim: 16}
render: {estimator: dense, n_samples: 16}
camera: {resolution: 8}
input: {size: 64}
prior: {guidance_scale: 3.0}
train: {steps: 3, device: cpu, checkpoint_every: 2, log_every: 1}
export: {resolution: 32, color_views: 2}
"""


@pytest.fixture(scope="module")
def engine(tiny_zero123, tiny_zero123_prior, tmp_path_factory) -> Engine:
    """An engine on the tiny random model (already loaded), runs in a temporary folder."""
    configs = tmp_path_factory.mktemp("configs")
    for name in ("cpu-tiny.yaml", "oracle-cpu.yaml"):
        (configs / name).write_text((Path(__file__).parent.parent / "configs" / name).read_text())
    (configs / "tiny-latent.yaml").write_text(TINY_LATENT_PRESET)
    return Engine(str(tiny_zero123["ccp"]), tmp_path_factory.mktemp("runs"), device="cpu", prior=tiny_zero123_prior,
                  configs=configs, overrides=SMALL_EXPORT, turntable=Turntable(frames=3, resolution=32))


@pytest.fixture(scope="module")
def example() -> Path:
    examples = example_images()
    assert examples, "assets/examples/ holds no example image"
    return examples[0]


@pytest.fixture()
def corrupt(tmp_path) -> Path:
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG but not really an image")
    return path


def run_fit(engine: Engine, request: FitRequest, job_id=None) -> list:
    return list(engine.fit(request, job_id))


# --------------------------------------------------------------------------- optional dependency


def test_sjc3d_and_its_help_do_not_import_gradio():
    probe = ("import sys; sys.argv = ['sjc3d', '--help']\n"
             "import sjc3d, sjc3d.app\nfrom sjc3d.cli import app\n"
             "try:\n    app()\nexcept SystemExit:\n    pass\n"
             "print('GRADIO' if 'gradio' in sys.modules else 'NO_GRADIO')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "NO_GRADIO" in result.stdout and " app " in result.stdout


def test_app_without_gradio_says_how_to_install_it():
    # sys.modules[name] = None makes `import gradio` fail as if it were not installed.
    probe = ("import sys; sys.modules['gradio'] = None\n"
             "sys.argv = ['sjc3d', 'app', '--port', '7999']\nfrom sjc3d.cli import app\napp()")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: install the app extra: pip install sjc3d[app]"


# --------------------------------------------------------------------------- input


def test_prepare_shows_the_view_the_model_gets(engine, example):
    prepared = engine.prepare(str(example))
    with Image.open(prepared) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    assert rgb.shape == (256, 256, 3)
    assert rgb[0, 0].min() > 0.99 and rgb[-1, -1].min() > 0.99  # composited on white
    rows, cols = (np.abs(rgb - 1).max(-1) > 0.1).nonzero()  # the object: centred, 200/256 of the frame
    assert abs((rows.min() + rows.max()) / 2 - 128) <= 2 and abs((cols.min() + cols.max()) / 2 - 128) <= 2
    assert 196 <= max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 204


def test_bad_uploads_are_one_line_naming_the_file_only(engine, corrupt, tmp_path):
    with pytest.raises(InputError) as info:
        engine.prepare(str(corrupt))
    assert str(info.value) == "corrupt.png is not an image PIL can read (expected PNG/JPEG/WebP ...)"
    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(clear)
    with pytest.raises(InputError, match=r"^input image clear.png is fully transparent"):
        engine.prepare(str(clear))
    with pytest.raises(InputError, match="expected a PNG, JPEG or WebP"):
        check_image(tmp_path / "mesh.obj")
    with pytest.raises(InputError, match="no input image"):
        check_image(None)


# --------------------------------------------------------------------------- novel views


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps 0"),
    ({"n_samples": 0}, "samples 0"),
    ({"guidance": math.nan}, "guidance nan"),
    ({"radius_delta": -2.5}, "Δradius -2.5"),
    ({"input_elevation": 30.0, "polar_delta": -60.0}, "elevation 90°"),
])
def test_views_requests_are_checked(change, message):
    request = ViewsRequest(Path("x.png"), **change)
    with pytest.raises(ConfigError, match=message):
        check_views_request(request, radius=2.0)


def test_views_turn_the_camera_as_zero123_does(engine, example, monkeypatch):
    """Δpolar > 0 moves the camera down: the pose embedding's first entry is +Δpolar (DESIGN.md §4)."""
    seen = []
    predict = engine.prior.predict_noise

    def spy(latents, t, poses, guidance, **options):
        seen.append(poses.clone())
        return predict(latents, t, poses, guidance, **options)

    monkeypatch.setattr(engine.prior, "predict_noise", spy)
    request = ViewsRequest(example, input_elevation=10.0, polar_delta=20.0, azimuth_delta=90.0, radius_delta=0.25,
                           steps=2, seed=3, n_samples=2)
    paths = engine.views(request)
    pose = seen[0]
    assert pose.shape == (2, 4)
    torch.testing.assert_close(pose[0], torch.tensor([math.radians(20.0), 1.0, 0.0, 0.25]), atol=1e-5, rtol=0)
    assert len(paths) == 2 and all(p.is_file() for p in paths)


def test_views_are_reproducible_and_samples_differ(engine, example):
    request = ViewsRequest(example, steps=2, seed=7, n_samples=2)
    progress = []
    first = [np.asarray(Image.open(p)) for p in engine.views(request, progress=lambda d, t: progress.append((d, t)))]
    again = [np.asarray(Image.open(p)) for p in engine.views(request)]
    assert progress == [(1, 2), (2, 2)]
    assert first[0].shape == (64, 64, 3)  # the model's own image size
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # two samples, two noises


# --------------------------------------------------------------------------- fits


def test_presets_are_offered_with_their_description():
    presets = {p.name: p for p in list_presets()}
    assert presets["cpu-tiny"].oracle and not presets["reference"].oracle
    assert presets["cpu-tiny"].steps == 600 and presets["cpu-tiny"].description


def test_oracle_fit_streams_progress_then_a_normal_run_directory(engine):
    updates = run_fit(engine, FitRequest(None, "cpu-tiny", steps=6, seed=1))
    steps = [u.step for u in updates if not u.done]
    assert steps == sorted(steps) and steps[-1] == 6
    assert any(u.preview is not None for u in updates if not u.done)  # live previews
    last = updates[-1]
    assert last.done and last.error is None and not last.stopped
    files = last.files
    run = files.run_dir
    assert run.parent.parent == engine.runs and run.parent.name == "toy"
    for path in (files.glb, files.obj, files.ply, files.video, files.archive, run / "previews" / "final.png"):
        assert path.is_file() and path.stat().st_size > 0, path
    mesh = trimesh.load(files.glb, force="mesh")
    assert len(mesh.faces) > 100 and mesh.visual.kind is not None  # coloured (vertex colours or a texture)
    with zipfile.ZipFile(files.archive) as zf:
        names = set(zf.namelist())
    assert {f"{run.name}/config.yaml", f"{run.name}/checkpoints/final.pt", f"{run.name}/mesh.glb"} <= names

    # The run directory is an ordinary one: `sjc3d fit --resume` continues it.
    from sjc3d.rundir import load_checkpoint
    from sjc3d.trainer import fit_command

    fit_command(image=None, presets=[], overrides=["train.steps=8"], out=None, resume=run)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8


def test_latent_fit_uses_the_loaded_model(engine, example, monkeypatch):
    conditioned = []
    condition = engine.prior.condition
    monkeypatch.setattr(engine.prior, "condition", lambda *a, **k: (conditioned.append(a), condition(*a, **k))[1])
    last = run_fit(engine, FitRequest(example, "tiny-latent", steps=3, input_elevation=5.0))[-1]
    assert last.error is None and last.files is not None, last.message
    assert conditioned, "the fit did not use the engine's prior"
    from sjc3d.rundir import load_run_config, RunPaths

    config = load_run_config(RunPaths(last.files.run_dir))
    assert config.prior.source == engine.model_source and config.input.elevation == 5.0
    assert config.field.output == "latent" and last.files.glb.is_file()


def test_two_fits_submitted_at_once_run_one_after_the_other(engine):
    results: dict[str, list] = {}

    def submit(name: str, seed: int) -> None:
        results[name] = run_fit(engine, FitRequest(None, "cpu-tiny", steps=4, seed=seed), engine.submit())

    threads = [threading.Thread(target=submit, args=(name, i)) for i, name in enumerate("ab")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    runs = []
    for name in "ab":
        last = results[name][-1]
        assert last.done and last.files is not None, last.message
        runs.append(last.files)
    assert runs[0].run_dir != runs[1].run_dir
    # One held the device from writing its config to zipping its run; the other started after.
    first, second = sorted(runs, key=lambda f: (f.run_dir / "config.yaml").stat().st_mtime)
    assert first.archive.stat().st_mtime <= (second.run_dir / "config.yaml").stat().st_mtime


def test_cancel_keeps_the_checkpoint(engine):
    job = engine.submit()
    updates = []
    for update in engine.fit(FitRequest(None, "cpu-tiny", steps=400), job):
        updates.append(update)
        if update.step >= 3 and not update.done:
            assert engine.cancel(job)
    last = updates[-1]
    assert last.done and last.stopped and last.files is None
    assert last.message.startswith(f"cancelled at step {last.step}, checkpoint kept")
    assert 3 <= last.step < 400
    from sjc3d.rundir import load_checkpoint

    assert load_checkpoint(last.run_dir / "checkpoints" / "last.pt")["step"] == last.step
    assert last.archive.is_file()
    assert not engine.cancel(job)  # the job is gone once it has ended


def test_cancel_while_waiting_means_it_never_starts(engine):
    job = engine.submit()
    assert engine.cancel(job)
    updates = run_fit(engine, FitRequest(None, "cpu-tiny", steps=5), job)
    assert [u.message for u in updates] == ["cancelled before it started"] and updates[0].stopped


def test_closing_the_stream_stops_the_fit_and_frees_the_device(engine):
    stream = engine.fit(FitRequest(None, "cpu-tiny", steps=400))
    for update in stream:
        if update.step >= 2:
            break
    run_dir = update.run_dir
    stream.close()  # the page went away
    assert engine.device_lock.acquire(timeout=60), "the fit kept the device"
    engine.device_lock.release()
    from sjc3d.rundir import load_checkpoint

    assert 2 <= load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] < 400


@pytest.mark.parametrize("request_, message", [
    (FitRequest(None, "tiny-latent", steps=3), "error: no input image"),
    (FitRequest(Path("x.png"), "no-such-preset", steps=3), "error: preset 'no-such-preset': choose one of"),
    (FitRequest(None, "cpu-tiny", steps=0), "error: steps 0: must be at least 1"),
])
def test_bad_fit_requests_end_in_one_line(engine, request_, message):
    updates = run_fit(engine, request_)
    assert len(updates) == 1 and updates[0].done and updates[0].error.startswith(message)


def test_a_corrupt_image_fails_the_fit_not_the_engine(engine, corrupt, example):
    last = run_fit(engine, FitRequest(corrupt, "tiny-latent", steps=3))[-1]
    assert last.error == "error: corrupt.png is not an image PIL can read (expected PNG/JPEG/WebP ...)"
    assert not engine.device_lock.locked()
    assert engine.prepare(str(example)).is_file()  # and the next request is served


# --------------------------------------------------------------------------- helpers


def test_newest_preview_takes_the_latest_step_then_final(tmp_path):
    assert newest_preview(tmp_path) is None
    previews = tmp_path / "previews"
    previews.mkdir()
    for name in ("step_000100.png", "step_001000.png", "step_000200.png"):
        (previews / name).write_bytes(b"")
    assert newest_preview(tmp_path).name == "step_001000.png"
    (previews / "final.png").write_bytes(b"")
    assert newest_preview(tmp_path).name == "final.png"


def test_zip_run_holds_the_folder_under_its_name(tmp_path):
    run = tmp_path / "toy" / "run1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "checkpoints" / "last.pt").write_bytes(os.urandom(64))
    (run / "checkpoints" / ".last.tmp.pt").write_bytes(b"half")  # an unfinished atomic write
    archive = zip_run(run)
    assert archive == tmp_path / "toy" / "run1.zip"
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["run1/checkpoints/last.pt", "run1/config.yaml"]
        assert zf.getinfo("run1/checkpoints/last.pt").compress_type == zipfile.ZIP_STORED


# --------------------------------------------------------------------------- the page (needs gradio)


@pytest.fixture(scope="module")
def layout():
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install sjc3d[app]")
    from sjc3d.app import layout

    return layout


def test_device_events_share_one_queue_slot(layout, engine):
    blocks = layout.build_app(engine)
    device_fns = {fn.name: fn for fn in blocks.fns.values() if fn.concurrency_id == layout.DEVICE}
    assert set(device_fns) == {"views", "fit"}
    assert all(fn.concurrency_limit == 1 for fn in device_fns.values())
    assert blocks.analytics_enabled is False


def test_page_callbacks_show_errors_and_results(layout, engine, corrupt, example):
    on = layout.make_callbacks(engine)
    assert on["prepare"](str(corrupt)) == (None, "error: corrupt.png is not an image PIL can read "
                                                 "(expected PNG/JPEG/WebP ...)")
    image, status = on["prepare"](str(example))
    assert Path(image).is_file() and status.startswith("ready")
    gallery, status = on["views"](str(example), 0, 0, 90, 0, 3, 2, 0, 2, progress=lambda *a, **k: None)
    assert len(gallery) == 2 and status.startswith("2 views")
    assert on["views"](None, 0, 0, 90, 0, 3, 2, 0, 2, progress=lambda *a, **k: None)[1].startswith("error: no input")

    outputs = list(on["fit"](on["submit"](), None, "cpu-tiny", 4, 0, 0, progress=lambda *a, **k: None))
    status, _, result = outputs[-1]
    model3d, downloads, video = layout.show_result(result)
    assert status.startswith("done: 4 steps") and model3d.endswith("mesh.glb")
    assert [Path(p).suffix for p in downloads] == [".glb", ".obj", ".ply", Path(video).suffix, ".zip"]
