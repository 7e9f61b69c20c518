"""`sjc3d train-prior` end to end on a tiny model: the saved folder is a Zero-1-to-3 model to the
loader, the fit and `sjc3d views`; resume is exact; two processes train like one; fine-tuning
starts from the public layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sjc3d.train_prior.command import resolve_run, train_prior
from sjc3d.train_prior.loop import PriorRunPaths

REPO = Path(__file__).resolve().parent.parent

# A model small enough to train in seconds: 16² views, factor-2 VAE (8² latents), 2-level UNet.
TINY = [
    "model.image_size=16", "model.vae_channels=[8, 8]", "model.unet_channels=[16, 16]", "model.unet_layers=1",
    "model.unet_cross_attention=[false, true]", "model.embedding_dim=16", "model.clip_width=16",
    "model.clip_layers=1", "model.clip_heads=2", "model.clip_patch=4", "model.clip_image_size=16",
    "autoencoder.steps=4", "autoencoder.batch=4", "autoencoder.crop=8",
    "diffusion.steps=6", "diffusion.batch=4", "diffusion.warmup=2", "diffusion.autocast=float32",
    "data.held_out_objects=2", "run.checkpoint_every=3", "run.log_every=1", "run.sample_every=0",
    "run.samples=2", "run.sample_steps=2", "run.device=cpu", "run.weights_dtype=float32",
]


@pytest.fixture(scope="module")
def tiny_views(tmp_path_factory) -> Path:
    """Eight procedural objects × 4 views at 16², in the Zero-1-to-3 layout."""
    from sjc3d.datasets.make_views import make_views

    root = tmp_path_factory.mktemp("views") / "train"
    make_views(root, n_objects=8, n_views=4, size=16, seed=0, split="train", progress=False)
    return root


def tiny_config(tiny_views: Path, run: Path, *extra: str):
    return resolve_run("toy", [*TINY, f"data.root={tiny_views}", *extra], None, run)


@pytest.fixture(scope="module")
def trained(tiny_views, tmp_path_factory):
    cfg, paths = tiny_config(tiny_views, tmp_path_factory.mktemp("prior") / "run")
    train_prior(cfg, paths, progress=False)
    return paths


def test_the_trained_folder_loads_as_a_zero123_model(trained: PriorRunPaths):
    from sjc3d.priors.zero123 import load_zero123

    prior = load_zero123(str(trained.model), device="cpu")  # the public loader, no special case
    assert prior.latent_factor == 2 and prior.image_size == 16 and prior.n_channels == 4
    assert (trained.model / "clip_camera_projection" / "config.json").is_file()
    assert json.loads((trained.model / "model_index.json").read_text())["_class_name"] == "Zero123Pipeline"
    scale = float(prior.vae.config.scaling_factor)
    assert 0 < scale and scale != 1.0  # measured from the trained encoder, not left at its placeholder
    card = (trained.model / "MODEL.md").read_text()
    assert "held-out ε loss" in card and "make prior" in card and "mean of each eighth of the run" in card
    stages = [json.loads(line) for line in trained.metrics.read_text().splitlines()]
    assert [r["step"] for r in stages if r["stage"] == "autoencoder"] == [1, 2, 3, 4]
    assert [r["step"] for r in stages if r["stage"] == "diffusion"] == [1, 2, 3, 4, 5, 6]
    assert (trained.samples / "final.png").is_file()


def test_the_engine_fits_and_samples_with_the_trained_model(trained: PriorRunPaths, tmp_path, tiny_views):
    from sjc3d.config import load_config
    from sjc3d.trainer import fit
    from sjc3d.views import views_command

    image = next(tiny_views.glob("*/000.png"))
    config = load_config(["cpu-tiny"], [f"prior.source={trained.model}", "field.output=latent", "camera.resolution=8",
                                        "train.steps=2", "train.preview_every=2", "prior.guidance_scale=3"])
    result = fit(config, image, tmp_path / "fit", progress=False)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.metrics["loss"]))
    written = views_command(image=image, azimuth="90", elevation_delta=0.0, radius_delta=0.0, input_elevation=0.0,
                            model=str(trained.model), steps=2, guidance=3.0, seed=0, out=tmp_path / "views", device="cpu")
    assert any(p.name == "grid.png" for p in written)


def test_resume_after_a_stop_matches_an_uninterrupted_run(trained: PriorRunPaths, tiny_views, tmp_path):
    class StopAt:
        """Set once the diffusion stage has logged step 4."""

        def __init__(self, paths):
            self.paths = paths

        def is_set(self):
            lines = self.paths.metrics.read_text().splitlines() if self.paths.metrics.is_file() else []
            return any('"diffusion"' in line and '"step": 4' in line for line in lines)

    cfg, paths = tiny_config(tiny_views, tmp_path / "run")
    stopped = train_prior(cfg, paths, progress=False, stop=StopAt(paths))
    assert stopped.stopped and not paths.model.exists()
    assert torch.load(paths.checkpoint, weights_only=True)["step"] == 4
    cfg, paths = resolve_run(None, [], paths.root, None)
    train_prior(cfg, paths, resume=True, progress=False)
    first = [json.loads(line) for line in trained.metrics.read_text().splitlines()]
    again = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in again] == [(r["stage"], r["step"]) for r in first]
    for a, b in zip(first, again):
        assert a.get("loss", a.get("l1")) == pytest.approx(b.get("loss", b.get("l1")), rel=1e-5)
    from safetensors.torch import load_file

    for part in ("unet/diffusion_pytorch_model.safetensors", "image_encoder/model.safetensors"):
        a, b = load_file(trained.model / part), load_file(paths.model / part)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), part


def test_min_snr_weighting_reaches_the_training_loss(trained: PriorRunPaths, tiny_views, tmp_path):
    """Same draws, same initial UNet: γ = 0.01 caps nearly every level, so step 1's loss drops."""
    cfg, paths = tiny_config(tiny_views, tmp_path / "run", "diffusion.steps=1", "diffusion.snr_gamma=0.01")
    train_prior(cfg, paths, progress=False)

    def first_diffusion_loss(metrics: Path) -> float:
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        return next(r["loss"] for r in records if r["stage"] == "diffusion" and r["step"] == 1)

    assert first_diffusion_loss(paths.metrics) < 0.5 * first_diffusion_loss(trained.metrics)


def test_v_prediction_trains_on_v_and_ships_a_v_model(trained: PriorRunPaths, tiny_views, tmp_path):
    """Same draws and initial weights as the ε run: another target gives another step-1 loss; the
    exported scheduler says v_prediction, which the loader hands to the prior; the card says v."""
    from sjc3d.priors.zero123 import load_zero123

    cfg, paths = tiny_config(tiny_views, tmp_path / "run", "diffusion.steps=1", "diffusion.prediction_type=v_prediction")
    train_prior(cfg, paths, progress=False)

    def first_diffusion_loss(metrics: Path) -> float:
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        return next(r["loss"] for r in records if r["stage"] == "diffusion" and r["step"] == 1)

    assert first_diffusion_loss(paths.metrics) != pytest.approx(first_diffusion_loss(trained.metrics), rel=1e-3)
    scheduler = json.loads((paths.model / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    assert load_zero123(str(paths.model), device="cpu").prediction_type == "v_prediction"
    assert "unweighted v loss" in (paths.model / "MODEL.md").read_text()
    assert "unweighted ε loss" in (trained.model / "MODEL.md").read_text()


@pytest.mark.slow
def test_a_compiled_step_trains_like_the_plain_one_and_checkpoints_plain_names(trained: PriorRunPaths, tiny_views,
                                                                                tmp_path):
    """torch.compile (minutes of compiling on 2 cores, hence `slow`): the same step-1 loss as the
    uncompiled run to float32 reordering, a checkpoint a plain run can resume, the card says so."""
    cfg, paths = tiny_config(tiny_views, tmp_path / "run", "diffusion.steps=1", "diffusion.compile=true")
    train_prior(cfg, paths, progress=False)

    def first_diffusion_loss(metrics: Path) -> float:
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        return next(r["loss"] for r in records if r["stage"] == "diffusion" and r["step"] == 1)

    assert first_diffusion_loss(paths.metrics) == pytest.approx(first_diffusion_loss(trained.metrics), rel=1e-4)
    state = torch.load(paths.checkpoint, map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in key for key in state["denoiser"])
    assert "torch.compile" in (paths.model / "MODEL.md").read_text()
    assert "torch.compile" not in (trained.model / "MODEL.md").read_text()


def test_bf16_autocast_runs_the_denoiser_in_bf16(trained: PriorRunPaths, tiny_views, tmp_path):
    """Same draws and initial weights: bf16 autocast of the diffusion stage moves its step-1 loss a
    little, not a lot; the autoencoder stage, left in float32, is unchanged; the card says so."""
    cfg, paths = tiny_config(tiny_views, tmp_path / "run", "diffusion.steps=1", "diffusion.autocast=bf16")
    train_prior(cfg, paths, progress=False)

    def first_losses(metrics: Path) -> tuple[float, float]:
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        return (next(r["l1"] for r in records if r["stage"] == "autoencoder" and r["step"] == 1),
                next(r["loss"] for r in records if r["stage"] == "diffusion" and r["step"] == 1))

    (ae_bf16, dm_bf16), (ae_fp32, dm_fp32) = first_losses(paths.metrics), first_losses(trained.metrics)
    assert ae_bf16 == ae_fp32
    assert dm_bf16 != dm_fp32 and dm_bf16 == pytest.approx(dm_fp32, rel=0.05)
    assert "diffusion bf16 autocast" in (paths.model / "MODEL.md").read_text()
    assert "autoencoder float32, diffusion float32" in (trained.model / "MODEL.md").read_text()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_learning_rate_follows_its_schedule(trained: PriorRunPaths, tiny_views, tmp_path, schedule):
    """The logged rate of each step: warm-up over 2 steps, then flat, or down to zero at the last step;
    the card names the schedule and AdamW's β2."""
    beta2 = 0.99 if schedule == "cosine" else 0.999
    cfg, paths = tiny_config(tiny_views, tmp_path / "run", f"autoencoder.init_from={trained.model}",
                             f"diffusion.lr_schedule={schedule}", f"diffusion.adam_beta2={beta2}")
    train_prior(cfg, paths, progress=False)
    records = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    rates = [r["lr"] for r in records if r["stage"] == "diffusion"]
    peak = cfg.diffusion.lr
    assert len(rates) == cfg.diffusion.steps == 6 and rates[:2] == pytest.approx([peak / 2, peak])
    if schedule == "constant":
        assert rates[2:] == pytest.approx([peak] * 4)
    else:
        assert rates[-1] == 0.0 and all(a > b for a, b in zip(rates[2:], rates[3:]))
    assert f"(β2 {beta2:g}, warm-up 2, then {schedule})" in (paths.model / "MODEL.md").read_text()


def test_a_trained_autoencoder_replaces_stage_one(trained: PriorRunPaths, tiny_views, tmp_path):
    from safetensors.torch import load_file

    from sjc3d.errors import ConfigError

    cfg, paths = tiny_config(tiny_views, tmp_path / "run", "diffusion.steps=2", f"autoencoder.init_from={trained.model}",
                             "diffusion.same_view_fraction=0")
    train_prior(cfg, paths, progress=False)
    stages = {json.loads(line)["stage"] for line in paths.metrics.read_text().splitlines()}
    assert stages == {"diffusion"}
    vae = "vae/diffusion_pytorch_model.safetensors"
    theirs, mine = load_file(trained.model / vae), load_file(paths.model / vae)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)
    config = lambda folder: json.loads((folder / "vae" / "config.json").read_text())  # noqa: E731
    assert config(paths.model)["scaling_factor"] == config(trained.model)["scaling_factor"]
    assert f"taken from `{trained.model}`" in (paths.model / "MODEL.md").read_text()
    # The card records the pairs: toy.yaml's same-view pairs, and none when they are off.
    assert "50% of the pairs one view twice" in (trained.model / "MODEL.md").read_text()
    assert "one view twice" not in (paths.model / "MODEL.md").read_text()

    cfg, paths = tiny_config(tiny_views, tmp_path / "other", f"autoencoder.init_from={trained.model}",
                             "model.vae_channels=[8, 16]")
    with pytest.raises(ConfigError, match="block_out_channels"):
        train_prior(cfg, paths, progress=False)


def test_fine_tuning_starts_from_a_public_layout(tiny_zero123, tiny_views, tmp_path):
    from sjc3d.priors.zero123 import load_zero123

    extra = [f"model.init_from={tiny_zero123['cc']}", "diffusion.train_image_encoder=false"]
    cfg, paths = tiny_config(tiny_views, tmp_path / "cc", *extra)
    train_prior(cfg, paths, progress=False)
    tuned = load_zero123(str(paths.model), device="cpu")
    base = load_zero123(str(tiny_zero123["ccp"]), device="cpu")
    assert tuned.image_size == base.image_size == 64  # trained at the model's own size
    assert float(tuned.vae.config.scaling_factor) == float(base.vae.config.scaling_factor)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert not same(tuned.unet, base.unet) and not same(tuned.projection, base.projection)
    assert same(tuned.image_encoder, base.image_encoder) and same(tuned.vae, base.vae)


def test_a_ckpt_loads_trainable_with_its_ema_weights(tiny_zero123):
    from sjc3d.priors.zero123 import load_zero123
    from sjc3d.train_prior.model import load_components

    parts = load_components(str(tiny_zero123["ckpt"]), str(tiny_zero123["image_encoder"]))
    assert all(p.requires_grad for p in parts.unet.parameters()) and parts.unet.training
    reference = load_zero123(str(tiny_zero123["ccp"]), device="cpu")  # the same (EMA) weights as a folder
    for (name, a), b in zip(parts.unet.state_dict().items(), reference.unet.state_dict().values()):
        assert torch.equal(a, b), name


def test_two_processes_train_like_one(tiny_views, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) gives the loss curve of 1 process at the same global batch."""
    pytest.importorskip("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = [*TINY, f"data.root={tiny_views}", "autoencoder.steps=3", "diffusion.steps=4"]
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "sjc3d", "train-prior", "toy", *overrides, "--out", str(one)],
                   check=True, capture_output=True, cwd=REPO, env=env, timeout=300)
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sjc3d"]
    done = subprocess.run([*launch, "train-prior", "toy", *overrides, "--out", str(two)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    curve = {}
    for name in ("one", "two"):
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        curve[name] = [r.get("loss", r.get("l1")) for r in records]
    assert len(curve["one"]) == len(curve["two"]) == 7
    assert curve["two"] == pytest.approx(curve["one"], rel=1e-4)


def test_bad_data_folder_is_one_line(tmp_path):
    (tmp_path / "data" / "obj").mkdir(parents=True)
    (tmp_path / "data" / "obj" / "000.png").write_bytes(b"not a png")
    done = subprocess.run([sys.executable, "-m", "sjc3d", "train-prior", "toy", *TINY, f"data.root={tmp_path / 'data'}",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "000" in lines[0], done.stderr


def test_a_stop_seen_by_one_process_stops_them_all():
    from sjc3d.train_prior.loop import PriorTrainer

    class OtherProcessWasSignalled:
        num_processes, device = 2, torch.device("cpu")

        def gather(self, flag):
            return torch.cat([flag, torch.ones(1)])  # this process's flag, then the other's

    trainer = PriorTrainer.__new__(PriorTrainer)  # only the stop logic is exercised
    trainer.stop, trainer.accelerator = None, OtherProcessWasSignalled()
    assert trainer._stop_requested()
    OtherProcessWasSignalled.num_processes = 1  # alone, only its own flag counts
    assert not trainer._stop_requested()
