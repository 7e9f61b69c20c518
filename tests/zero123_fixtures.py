"""Tiny random Zero-1-to-3 models written to disk exactly as the public repos lay them out.

One set of weights (seeded) is saved four ways, so that every loader must give the same
numbers:

    cc/      kxic/zero123-* layout: model_index.json (Zero1to3StableDiffusionPipeline),
             cc_projection/ (CCProjection, keys projection.*), .bin weights (diffusers 0.18)
    ccp/     bennyguo/ashawkey layout: model_index.json (Zero123Pipeline),
             clip_camera_projection/ (CLIPCameraProjection, keys proj.*), safetensors
    stable-zero123/  the ccp layout under a name that says "stable" (Stable Zero123)
    zero123.ckpt     the original LDM checkpoint: model.diffusion_model.* holds *other*
             (non-EMA) weights and model_ema.* the real ones, so only an EMA-aware loader
             matches the folders; first_stage_model.*, cc_projection.*, and a pickled
             object whose unpickling would record itself (it must never run)
    sd-image-variations/image_encoder/   the CLIP image encoder a .ckpt is paired with

The published configuration files (../shared/zero123/) are copied verbatim; the network sizes
are shrunk (UNet channels (32, 64), one layer per block; VAE 4 levels of 32 channels, 64²
images → 8² latents; CLIP 2 layers of width 32 at 224², patch 32) but the interfaces
(8 UNet input channels, cross-attention 768, projection 772 → 768, CLIP projection 768) are real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sjc3d.priors import ckpt as ldm

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "zero123"
LAYOUTS = ("cc", "ccp", "stable", "ckpt")
IMAGE_SIZE = 64  # tiny VAE sample_size: 64² views → 8² latents

TRIPWIRE: list[str] = []  # filled if the checkpoint's pickled object is ever called


def _tripwire(tag: str) -> str:
    TRIPWIRE.append(tag)
    return tag


class PickledObject:
    """Stands for the Lightning callbacks etc. a real .ckpt pickles; unpickling it runs code."""

    def __reduce__(self):
        return (_tripwire, ("unpickled",))


# ----------------------------------------------------------------------------- models


def unet_config() -> dict:
    return dict(
        sample_size=IMAGE_SIZE // 8,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def vae_config() -> dict:
    published = json.loads((SHARED / "bennyguo_zero123-diffusers" / "vae" / "config.json").read_text())
    config = {k: v for k, v in published.items() if not k.startswith("_")}
    config.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=IMAGE_SIZE)
    return config


def clip_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, projection_dim=768, hidden_act="quick_gelu",
    )


def _randomise(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.05) -> None:
    """Perturb every parameter: zero-initialised layers (proj_out, ...) must matter in tests."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def build_models(seed: int = 0) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    models = {
        "unet": UNet2DConditionModel(**unet_config()),
        "vae": AutoencoderKL(**vae_config()),
        "image_encoder": CLIPVisionModelWithProjection(clip_config()),
        "projection": torch.nn.Linear(772, 768),
    }
    for m in models.values():
        _randomise(m, g)
        m.eval()
    return models


# ----------------------------------------------------------------------------- writers


def _save_tensors(state: dict, path: Path, safetensors: bool) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def _weights_name(kind: str, safetensors: bool) -> str:
    stem = "model" if kind == "transformers" else "diffusion_pytorch_model"
    if kind == "transformers" and not safetensors:
        stem = "pytorch_model"
    return f"{stem}.{'safetensors' if safetensors else 'bin'}"


def _feature_extractor_config() -> dict:
    # The published file's first 20 lines (../shared/zero123/.../preprocessor_config.PARTIAL.txt),
    # completed with the values every CLIPImageProcessor config of that shape has.
    return {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 224},
    }


def write_diffusers_folder(models: dict, folder: Path, layout: str) -> Path:
    """Write `models` as a diffusers folder in the `cc` or `ccp` public layout."""
    safetensors = layout != "cc"  # the kxic repos (diffusers 0.18.2) hold .bin files
    if layout == "cc":
        index = SHARED / "kxic_zero123-165000" / "model_index.json"
        proj_dir, proj_config = "cc_projection", SHARED / "kxic_zero123-xl" / "cc_projection" / "config.json"
        proj_prefix = "projection."
    else:
        index = SHARED / "bennyguo_zero123-xl-diffusers" / "model_index.json"
        proj_dir = "clip_camera_projection"
        proj_config = SHARED / "bennyguo_zero123-xl-diffusers" / "clip_camera_projection" / "config.json"
        proj_prefix = "proj."
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(index, folder / "model_index.json")
    for part in ("unet", "vae"):
        models[part].save_config(folder / part)
        _save_tensors(models[part].state_dict(), folder / part / _weights_name("diffusers", safetensors), safetensors)
    models["image_encoder"].config.save_pretrained(folder / "image_encoder")
    _save_tensors(models["image_encoder"].state_dict(), folder / "image_encoder" / _weights_name("transformers", safetensors), safetensors)
    (folder / "scheduler").mkdir(exist_ok=True)
    shutil.copyfile(SHARED / "kxic_zero123-105000" / "scheduler" / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
    (folder / "feature_extractor").mkdir(exist_ok=True)
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(_feature_extractor_config(), indent=2))
    (folder / proj_dir).mkdir(exist_ok=True)
    shutil.copyfile(proj_config, folder / proj_dir / "config.json")
    projection = {proj_prefix + k: v for k, v in models["projection"].state_dict().items()}
    _save_tensors(projection, folder / proj_dir / _weights_name("diffusers", safetensors), safetensors)
    return folder


def to_ldm_unet(state: dict, config: dict) -> dict:
    """Diffusers UNet tensors under their LDM names (the inverse of the loader's conversion)."""
    up_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    return {ldm.unet_ldm_name(k, config["layers_per_block"], up_attention): v for k, v in state.items()}


def to_ldm_vae(state: dict, config: dict) -> dict:
    """Diffusers VAE tensors under LDM names; attention linears become 1×1 convolutions."""
    out = {}
    for k, v in state.items():
        name = ldm.vae_ldm_name(k, len(config["block_out_channels"]))
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out[name] = v
    return out


def write_ckpt(models: dict, path: Path, seed: int = 1) -> Path:
    """The original LDM checkpoint; non-EMA UNet weights differ from the EMA (= real) ones."""
    g = torch.Generator().manual_seed(seed)
    unet = to_ldm_unet(models["unet"].state_dict(), unet_config())
    state: dict = {}
    for name, value in unet.items():
        key = ldm.UNET_PREFIX + name
        state[key] = value + 0.1 * torch.randn(value.shape, generator=g)  # the raw, non-EMA weights
        state[ldm.ldm_ema_name(key)] = value.clone()
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(105000, dtype=torch.int32)
    for name, value in to_ldm_vae(models["vae"].state_dict(), vae_config()).items():
        state[ldm.VAE_PREFIX + name] = value
    for name, value in models["projection"].state_dict().items():
        state[ldm.PROJECTION_PREFIX + name] = value
    state["cond_stage_model.model.visual.proj"] = torch.randn(32, 768, generator=g)  # ignored, as by the public converters
    state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)  # LDM registers schedule buffers
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    checkpoint = {"state_dict": state, "global_step": 105000, "epoch": 3, "callbacks": {"ModelCheckpoint": PickledObject()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def write_image_encoder(models: dict, folder: Path) -> Path:
    """lambdalabs/sd-image-variations-diffusers style: the encoder under image_encoder/."""
    sub = folder / "image_encoder"
    models["image_encoder"].config.save_pretrained(sub)
    _save_tensors(models["image_encoder"].state_dict(), sub / "model.safetensors", True)
    return folder


def build_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every layout under `root`; returns {"cc", "ccp", "stable", "ckpt", "image_encoder"} → path."""
    models = build_models(seed)
    return {
        "cc": write_diffusers_folder(models, root / "zero123-cc", "cc"),
        "ccp": write_diffusers_folder(models, root / "zero123-ccp", "ccp"),
        "stable": write_diffusers_folder(models, root / "stable-zero123", "ccp"),
        "ckpt": write_ckpt(models, root / "zero123.ckpt"),
        "image_encoder": write_image_encoder(models, root / "sd-image-variations"),
    }
