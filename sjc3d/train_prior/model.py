"""The components of a view-conditioned prior, built and saved in the public Zero-1-to-3 layout.

A model trained by `sjc3d train-prior` is a diffusers folder in the layout of the
bennyguo/ashawkey Zero-1-to-3 repos (../shared/zero123/README.md), so `--model FOLDER` loads it
through the same loader and the same `Zero123Prior` as the real weights:

    model_index.json            Zero123Pipeline (as published)
    unet/                       UNet2DConditionModel: 2c input channels (noisy latent ‖ concat latent)
    vae/                        AutoencoderKL; sample_size = training image side, scaling_factor
    image_encoder/              CLIPVisionModelWithProjection (its projection_dim = context width)
    clip_camera_projection/     Linear (projection_dim + 4) → projection_dim, keys proj.*
    scheduler/                  the published DDIM config (scaled_linear 0.00085–0.012, 1000 steps)
    feature_extractor/          a CLIPImageProcessor config of the encoder's image size

The real model is the same graph at a larger size: 256² views, a factor-8 VAE, ViT-L/14 at 224²
and a 772 → 768 projection.  `ModelConfig` (train_prior/config.py) holds the sizes of a new model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sjc3d.atomic import atomic_path, atomic_write_text
from sjc3d.priors.loading import DEFAULT_SCHEDULER
from sjc3d.train_prior.config import ModelConfig

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
POSE_DIM = 4  # [Δpolar, sin Δazimuth, cos Δazimuth, Δradius]


@dataclass
class PriorComponents:
    """The four trainable networks and the scheduler config of a Zero-1-to-3-style model."""

    unet: nn.Module  # diffusers UNet2DConditionModel
    vae: nn.Module  # diffusers AutoencoderKL
    image_encoder: nn.Module  # transformers CLIPVisionModelWithProjection
    projection: nn.Linear  # [image embedding ‖ pose] → cross-attention context
    scheduler_config: dict


# ----------------------------------------------------------------------------- configs


def vae_config(cfg: ModelConfig) -> dict:
    """AutoencoderKL of `len(vae_channels)` levels: latent factor 2^(levels − 1)."""
    levels = len(cfg.vae_channels)
    return dict(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=list(cfg.vae_channels), layers_per_block=cfg.vae_layers,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        norm_num_groups=norm_groups(cfg.vae_channels, cfg.vae_channels_per_group), act_fn="silu", sample_size=cfg.image_size,
        scaling_factor=1.0,  # set from the trained encoder's latent statistics (train_prior/autoencoder.py)
    )


def unet_config(cfg: ModelConfig) -> dict:
    """UNet2DConditionModel: cross-attention only at the levels `unet_cross_attention` marks.

    The Zero-1-to-3 context is a single token, so cross-attention adds a per-channel bias that
    carries the image embedding and the relative pose; self-attention comes with it (diffusers'
    transformer blocks).  On a CPU attention at high resolution dominates the cost
    (../shared/notes/learned-prior-sizing.md), so the toy model keeps it at the lowest level.
    """
    factor = 2 ** (len(cfg.vae_channels) - 1)
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_cross_attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_cross_attention)]
    return dict(
        sample_size=cfg.image_size // factor, in_channels=2 * cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=list(cfg.unet_channels), down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=cfg.unet_layers,
        cross_attention_dim=cfg.embedding_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=norm_groups(cfg.unet_channels, cfg.unet_channels_per_group),
        **time_embedding_options(cfg),
    )


def time_embedding_options(cfg: ModelConfig) -> dict:
    """UNet options for the timestep embedding: the context added to it, and FiLM.

    A single-token cross-attention only shifts the features of the levels that have it (the
    toy: the lowest, 4²), so the pose reaches the 16² and 8² features only through upsampling.
    diffusers' `addition_embed_type="text"` pools the context (`TextTimeEmbedding`) and adds it
    to the timestep embedding, which every ResNet block adds to its features.  The UNet is still
    called as Zero-1-to-3's is, `unet(x, t, encoder_hidden_states=context)`: no loader or prior
    changes.  `unet_film` makes each block's use of that embedding multiplicative (FiLM: the
    normalised features times 1 + scale, plus shift), so the pose can switch features off, e.g. the
    input view's skip features when the camera turns.
    """
    options = dict(resnet_time_scale_shift="scale_shift") if cfg.unet_film else {}
    if cfg.unet_context_to_time:
        options.update(addition_embed_type="text", addition_embed_type_num_heads=cfg.embedding_dim // cfg.attention_head_dim)
    return options


def norm_groups(channels: tuple[int, ...], per_group: int) -> int:
    """GroupNorm groups for every level's width: `per_group` channels a group (at most 32 groups)."""
    groups = max(1, min(32, min(channels) // per_group))
    if any(c % groups for c in channels):
        from sjc3d.errors import ConfigError

        raise ConfigError(f"channel widths {list(channels)} do not split into {groups} GroupNorm groups")
    return groups


def clip_config(cfg: ModelConfig):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.clip_width, intermediate_size=4 * cfg.clip_width, num_hidden_layers=cfg.clip_layers,
        num_attention_heads=cfg.clip_heads, image_size=cfg.clip_image_size, patch_size=cfg.clip_patch,
        projection_dim=cfg.embedding_dim, hidden_act="quick_gelu",
    )


def check_model_config(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
    """Rules a new model's sizes must satisfy, as (key, ok, why) for the config checker."""
    factor = 2 ** (len(cfg.vae_channels) - 1)
    latent = cfg.image_size // factor
    downsamplings = len(cfg.unet_channels) - 1
    return [
        ("model.image_size", cfg.image_size % factor == 0, f"must be a multiple of the VAE factor {factor}"),
        ("model.unet_channels", latent % 2**downsamplings == 0 and latent >= 2**downsamplings,
         f"{len(cfg.unet_channels)} levels halve the {latent}² latents {downsamplings} times: too many levels"),
        ("model.unet_cross_attention", len(cfg.unet_cross_attention) == len(cfg.unet_channels),
         "needs one entry per UNet level"),
        ("model.clip_image_size", cfg.clip_image_size % cfg.clip_patch == 0, "must be a multiple of model.clip_patch"),
        ("model.clip_width", cfg.clip_width % cfg.clip_heads == 0, "must be a multiple of model.clip_heads"),
        ("model.embedding_dim", cfg.embedding_dim % cfg.attention_head_dim == 0,
         "must be a multiple of model.attention_head_dim"),
    ]


# ----------------------------------------------------------------------------- building


def build_components(cfg: ModelConfig, seed: int = 0) -> PriorComponents:
    """A new, randomly initialised model of the sizes in `cfg` (float32, train mode)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return PriorComponents(
        unet=UNet2DConditionModel(**unet_config(cfg)),
        vae=AutoencoderKL(**vae_config(cfg)),
        image_encoder=CLIPVisionModelWithProjection(clip_config(cfg)),
        projection=pose_projection(cfg.embedding_dim),
        scheduler_config=dict(DEFAULT_SCHEDULER),
    )


def pose_projection(embedding_dim: int) -> nn.Linear:
    """[embedding ‖ T] → context, initialised as the original: identity on the embedding, zero on T.

    Zero-1-to-3 starts its 772 → 768 `cc_projection` at [I | 0] with zero bias, so training begins
    from the image embedding alone and learns how the pose should move it.
    """
    layer = nn.Linear(embedding_dim + POSE_DIM, embedding_dim)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :embedding_dim].copy_(torch.eye(embedding_dim))
        layer.bias.zero_()
    return layer


def load_components(source: str, image_encoder: str | None = None) -> PriorComponents:
    """An existing model to fine-tune (hub id, diffusers folder or `.ckpt`), float32 and trainable."""
    from sjc3d.priors.loading import load_parts

    parts = load_parts(source, image_encoder=image_encoder, dtype=torch.float32, device="cpu")
    for module in (parts.unet, parts.vae, parts.image_encoder, parts.projection):
        module.requires_grad_(True)
        module.train()
    return PriorComponents(parts.unet, parts.vae, parts.image_encoder, parts.projection, dict(parts.scheduler_config))


def adopt_autoencoder(parts: PriorComponents, source: str) -> None:
    """Replace a new model's untrained VAE by the trained one of `source` (weights and scaling factor)."""
    from sjc3d.errors import ConfigError
    from sjc3d.priors import resolve_project_path
    from sjc3d.priors.loading import load_vae

    trained = load_vae(str(resolve_project_path(source)), dtype=torch.float32)
    sizes = {k: (_plain(parts.vae.config[k]), _plain(trained.config[k]))
             for k in ("sample_size", "block_out_channels", "latent_channels")}
    differ = {k: v for k, v in sizes.items() if v[0] != v[1]}
    if differ:
        raise ConfigError(f"autoencoder.init_from={source}: its autoencoder differs from model.* "
                          + ", ".join(f"{k} {theirs} (config: {ours})" for k, (ours, theirs) in differ.items()))
    try:
        parts.vae.load_state_dict(trained.state_dict())
    except RuntimeError as error:
        raise ConfigError(f"autoencoder.init_from={source}: its weights do not fit model.vae_* "
                          f"({str(error).splitlines()[0]})") from None
    parts.vae.register_to_config(scaling_factor=float(trained.config.scaling_factor))


# ----------------------------------------------------------------------------- saving


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_components(parts: PriorComponents, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `parts` as a diffusers folder in the clip_camera_projection layout (see the module doc).

    dtype: the stored weights' type (float16 halves the files; the loader casts back).
    """
    from sjc3d import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae"):
        module = getattr(parts, name)
        own = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
        config = {"_class_name": type(module).__name__, "_diffusers_version": _diffusers_version(), **own}
        _write_json(folder / name / "config.json", _plain(config))
        _save_safetensors(module.state_dict(), folder / name / "diffusion_pytorch_model.safetensors", dtype)
    encoder_config = parts.image_encoder.config.to_dict()
    encoder_config["architectures"] = ["CLIPVisionModelWithProjection"]
    encoder_config.pop("torch_dtype", None)
    encoder_config.pop("dtype", None)
    _write_json(folder / "image_encoder" / "config.json", _plain(encoder_config))
    _save_safetensors(parts.image_encoder.state_dict(), folder / "image_encoder" / "model.safetensors", dtype)
    width = parts.projection.out_features
    _write_json(folder / "clip_camera_projection" / "config.json", {
        "_class_name": "CLIPCameraProjection", "_diffusers_version": _diffusers_version(),
        "additional_embeddings": POSE_DIM, "embedding_dim": width,
    })
    projection = {f"proj.{k}": v for k, v in parts.projection.state_dict().items()}
    _save_safetensors(projection, folder / "clip_camera_projection" / "diffusion_pytorch_model.safetensors", dtype)
    _write_json(folder / "scheduler" / "scheduler_config.json", {**parts.scheduler_config, "_class_name": "DDIMScheduler"})
    size = int(parts.image_encoder.config.image_size)
    _write_json(folder / "feature_extractor" / "preprocessor_config.json", {
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD,
        "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": size},
    })
    _write_json(folder / "model_index.json", {
        "_class_name": "Zero123Pipeline", "_diffusers_version": _diffusers_version(), "_sjc3d_version": __version__,
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return folder


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _plain(value):
    """JSON-ready copy: tuples become lists, dicts are copied recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_components_quietly(folder: Path) -> PriorComponents:
    """Load a saved folder back (float32, frozen): checks what was written reads as a Zero-1-to-3 model."""
    from sjc3d.priors.loading import load_parts

    parts = load_parts(str(folder), dtype=torch.float32, device="cpu")
    return PriorComponents(parts.unet, parts.vae, parts.image_encoder, parts.projection, dict(parts.scheduler_config))
