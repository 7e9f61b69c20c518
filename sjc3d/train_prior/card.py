"""MODEL.md: the card written beside a trained prior — what it saw, how long it trained, how well."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from sjc3d.atomic import atomic_write_text
from sjc3d.config import config_to_dict


def _params(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M"


def _folder_size(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _arithmetic(autocast: str) -> str:
    return "float32" if autocast == "float32" else f"{autocast} autocast (float32 weights)"


def diffusion_loss_profile(metrics: Path, warmup: int, stretches: int = 8) -> Optional[tuple[list[float], float, int]]:
    """The diffusion stage's logged training loss: its mean over `stretches` equal runs of steps,
    first to last, and its highest value after the warm-up with that step; None if the log holds
    no diffusion step (e.g. `diffusion.steps=0`).

    Why the card shows it: a run that diverges and recovers ends at a normal loss, while its EMA
    weights still hold the collapse (the constant-rate toy run with same-view pairs did, README
    "Learning-rate decay"); the profile shows the spike.  metrics: metrics.jsonl ({"stage", "step", "loss"} lines).
    """
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if r.get("stage") == "diffusion" and "loss" in r]
    if not losses:
        return None
    last = max(step for step, _ in losses)
    means = []
    for k in range(stretches):
        chunk = [loss for step, loss in losses if k * last / stretches < step <= (k + 1) * last / stretches]
        if chunk:
            means.append(sum(chunk) / len(chunk))
    after_warmup = [(loss, step) for step, loss in losses if step > warmup] or [(loss, step) for step, loss in losses]
    highest, at_step = max(after_warmup)
    return means, highest, at_step


def write_model_card(folder: Path, cfg, views, train_objects, val_objects, logs: dict, validation_loss: float,
                     metrics: Optional[Path] = None) -> Path:
    """Write <folder>/MODEL.md from the run's configuration, data, stage logs and (when given) metrics.jsonl."""
    from sjc3d.priors.loading import prediction_type_of
    from sjc3d.train_prior.model import load_components_quietly

    parts = load_components_quietly(folder)
    data = cfg.data
    source = (f"the Zero-1-to-3 layout folder `{data.root}`" if data.root else
              f"procedural objects (`sjc3d make-views`, seed {data.procedural_seed}): coloured and textured "
              "primitives (sphere, box, cylinder, cone, torus, capsule) and compositions of 2–4 of them, "
              "Lambert shaded under a fixed world light, on white, cameras from the Zero-1-to-3 distribution "
              "(radius 1.5–2.2, FoV 49.1°)")
    ae_log, dm_log = logs["autoencoder"], logs["diffusion"]
    wall_time = sum(log.wall_time for log in logs.values())
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    size = int(parts.vae.config.sample_size)
    gamma = cfg.diffusion.snr_gamma
    target = "v" if prediction_type_of(parts.scheduler_config) == "v_prediction" else "ε"
    objective = f"{target} loss, Min-SNR-{gamma:g} weighting" if gamma > 0 else f"unweighted {target} loss"
    if cfg.diffusion.same_view_fraction > 0:
        objective += f", {cfg.diffusion.same_view_fraction:.0%} of the pairs one view twice (T = 0)"
    if cfg.autoencoder.init_from:
        autoencoder_line = f"- Autoencoder: taken from `{cfg.autoencoder.init_from}` (not trained in this run)."
    else:
        autoencoder_line = (f"- Autoencoder: {ae_log.steps} steps, batch {cfg.autoencoder.batch}, "
                            f"{cfg.autoencoder.crop}² crops, final L1 {ae_log.final_loss:.4f}, "
                            f"{ae_log.wall_time / 60:.1f} min.")
    lines = [
        "# sjc3d toy Zero-1-to-3 prior" if not cfg.model.init_from else f"# Zero-1-to-3 fine-tuned from {cfg.model.init_from}",
        "",
        "A view-conditioned latent diffusion model trained by `sjc3d train-prior` with the Zero-1-to-3",
        "objective, in the public Zero-1-to-3 diffusers layout (`clip_camera_projection`), so that",
        "`sjc3d fit/views --model <this folder>` use it exactly as they use the real weights.",
        "It is a small demonstration model: it knows simple shapes on white, not real photographs.",
        "",
        "## Data",
        f"- {source}.",
        f"- {views.n_objects} objects, {len(views.images)} views at {views.image_size}²; "
        f"{len(train_objects)} objects trained on, {len(val_objects)} held out.",
        "",
        "## Architecture",
        f"- Images {size}², autoencoder factor {factor} → latents {parts.vae.config.latent_channels}×{size // factor}², "
        f"scaling factor {float(parts.vae.config.scaling_factor):.4f}.",
        f"- UNet {_params(parts.unet)} (blocks {list(parts.unet.config.block_out_channels)}, "
        f"{list(parts.unet.config.down_block_types)}), image encoder {_params(parts.image_encoder)} "
        f"(CLIP ViT, {parts.image_encoder.config.image_size}² input, patch {parts.image_encoder.config.patch_size}), "
        f"pose projection {parts.projection.in_features} → {parts.projection.out_features}, VAE {_params(parts.vae)}.",
        f"- Weights stored as {cfg.run.weights_dtype} safetensors; folder size {_folder_size(folder):.1f} MB.",
        "",
        "## Training",
        autoencoder_line,
        f"- Diffusion: {dm_log.steps} steps, global batch {cfg.diffusion.batch}, AdamW lr {cfg.diffusion.lr:g} "
        f"(β2 {cfg.diffusion.adam_beta2:g}, warm-up {cfg.diffusion.warmup}, then {cfg.diffusion.lr_schedule}), "
        f"EMA {cfg.diffusion.ema_decay}, "
        f"classifier-free dropout "
        f"{cfg.diffusion.uncond:g} ×3 (null context: {cfg.diffusion.null_context}), {objective}; "
        f"final training loss{' (weighted)' if gamma > 0 else ''} "
        f"{dm_log.final_loss:.4f}, held-out ε loss (EMA, {len(val_objects)} objects) {validation_loss:.4f}, "
        f"{dm_log.wall_time / 60:.1f} min.",
        *_loss_profile_lines(metrics, cfg.diffusion.warmup),
        f"- Arithmetic: autoencoder {_arithmetic(cfg.autoencoder.autocast)}, "
        f"diffusion {_arithmetic(cfg.diffusion.autocast)}{', torch.compile' if cfg.diffusion.compile else ''}.",
        f"- Total wall time {wall_time / 60:.1f} min (of which data, caching and export "
        f"{logs['setup'].wall_time / 60:.1f} min).",
        "",
        "## Reproduce",
        "```bash",
        "make prior      # = sjc3d train-prior toy, into outputs/prior/toy-<date-time>/ (fixed seed)",
        "```",
        "",
        "## Configuration",
        "```yaml",
        *_yaml(config_to_dict(cfg)),
        "```",
        "",
    ]
    path = folder / "MODEL.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _loss_profile_lines(metrics: Optional[Path], warmup: int) -> list[str]:
    if metrics is None or not metrics.is_file():
        return []
    profile = diffusion_loss_profile(metrics, warmup)
    if profile is None:
        return []
    means, highest, at_step = profile
    return [f"- Diffusion training loss, mean of each eighth of the run: {', '.join(f'{m:.4f}' for m in means)}; "
            f"highest logged after warm-up {highest:.4f} (step {at_step})."]


def _yaml(data: dict) -> list[str]:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip().splitlines()
