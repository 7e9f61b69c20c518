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
             object whose unpickling would record itself (it must never run).  Its LDM key
             names come from tables written by hand below, not from sjc3d's own name map.
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


# ----------------------------------------------------------------------------- LDM names, by hand
#
# The tiny models' tensors under the names the original latent-diffusion code gives them, written
# out from that code (ldm/modules/diffusionmodules/openaimodel.py UNetModel, model.py Encoder /
# Decoder) for exactly this architecture — deliberately *not* derived from sjc3d.priors.ckpt, so
# that loading the .ckpt checks the loader's name map against an independent source.
#
# UNet (model_channels 32, channel_mult (1, 2), num_res_blocks 1, attention at level 0):
#   input_blocks:  0 conv_in | 1 [ResBlock, SpatialTransformer] | 2 [Downsample .op] | 3 [ResBlock 32→64]
#   middle_block:  0 ResBlock | 1 SpatialTransformer | 2 ResBlock
#   output_blocks: 0 [ResBlock] | 1 [ResBlock, Upsample] | 2 [ResBlock, ST] | 3 [ResBlock, ST]
#   ResBlock: in_layers = (GroupNorm, SiLU, conv), emb_layers = (SiLU, Linear),
#             out_layers = (GroupNorm, SiLU, Dropout, conv), skip_connection when channels change.
LDM_UNET_BLOCKS = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "down_blocks.0.resnets.0": "input_blocks.1.0",
    "down_blocks.0.attentions.0": "input_blocks.1.1",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op",
    "down_blocks.1.resnets.0": "input_blocks.3.0",
    "mid_block.resnets.0": "middle_block.0",
    "mid_block.attentions.0": "middle_block.1",
    "mid_block.resnets.1": "middle_block.2",
    "up_blocks.0.resnets.0": "output_blocks.0.0",
    "up_blocks.0.resnets.1": "output_blocks.1.0",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.1.1.conv",
    "up_blocks.1.resnets.0": "output_blocks.2.0",
    "up_blocks.1.attentions.0": "output_blocks.2.1",
    "up_blocks.1.resnets.1": "output_blocks.3.0",
    "up_blocks.1.attentions.1": "output_blocks.3.1",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
LDM_RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

# VAE (4 levels, 1 res block per encoder level, 2 per decoder level).  LDM's decoder numbers
# `up` by resolution (up.0 = full resolution, run last); diffusers' up_blocks run in order.
LDM_VAE_BLOCKS = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.down_blocks.0.resnets.0": "encoder.down.0.block.0",
    "encoder.down_blocks.0.downsamplers.0.conv": "encoder.down.0.downsample.conv",
    "encoder.down_blocks.1.resnets.0": "encoder.down.1.block.0",
    "encoder.down_blocks.1.downsamplers.0.conv": "encoder.down.1.downsample.conv",
    "encoder.down_blocks.2.resnets.0": "encoder.down.2.block.0",
    "encoder.down_blocks.2.downsamplers.0.conv": "encoder.down.2.downsample.conv",
    "encoder.down_blocks.3.resnets.0": "encoder.down.3.block.0",
    "encoder.mid_block.resnets.0": "encoder.mid.block_1",
    "encoder.mid_block.attentions.0": "encoder.mid.attn_1",
    "encoder.mid_block.resnets.1": "encoder.mid.block_2",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.mid_block.resnets.0": "decoder.mid.block_1",
    "decoder.mid_block.attentions.0": "decoder.mid.attn_1",
    "decoder.mid_block.resnets.1": "decoder.mid.block_2",
    "decoder.up_blocks.0.resnets.0": "decoder.up.3.block.0",
    "decoder.up_blocks.0.resnets.1": "decoder.up.3.block.1",
    "decoder.up_blocks.0.upsamplers.0.conv": "decoder.up.3.upsample.conv",
    "decoder.up_blocks.1.resnets.0": "decoder.up.2.block.0",
    "decoder.up_blocks.1.resnets.1": "decoder.up.2.block.1",
    "decoder.up_blocks.1.upsamplers.0.conv": "decoder.up.2.upsample.conv",
    "decoder.up_blocks.2.resnets.0": "decoder.up.1.block.0",
    "decoder.up_blocks.2.resnets.1": "decoder.up.1.block.1",
    "decoder.up_blocks.2.upsamplers.0.conv": "decoder.up.1.upsample.conv",
    "decoder.up_blocks.3.resnets.0": "decoder.up.0.block.0",
    "decoder.up_blocks.3.resnets.1": "decoder.up.0.block.1",
    "decoder.conv_norm_out": "decoder.norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
LDM_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
LDM_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}  # 1×1 convs


def _ldm_name(key: str, blocks: dict[str, str], inner: dict[str, str]) -> str:
    """A diffusers key under its LDM name: its block renamed by `blocks`, the layer in it by `inner`."""
    block = max((b for b in blocks if key.startswith(b + ".")), key=len, default=None)
    if block is None:
        raise KeyError(f"the hand-written LDM table has no block for {key!r}")
    rest = key[len(block) + 1:]
    layer = max((name for name in inner if rest.startswith(name + ".")), key=len, default=None)
    if layer is not None:
        rest = inner[layer] + rest[len(layer):]
    return f"{blocks[block]}.{rest}"


def to_ldm_unet(state: dict) -> dict:
    """Diffusers UNet tensors under their LDM names (the hand-written tables above).

    Transformer blocks keep their inner names: LDM's SpatialTransformer and diffusers'
    Transformer2DModel name their layers alike (norm, proj_in, transformer_blocks.N.attn1.to_q ...).
    """
    return {_ldm_name(k, LDM_UNET_BLOCKS, LDM_RESBLOCK if ".resnets." in k else {}): v for k, v in state.items()}


def to_ldm_vae(state: dict) -> dict:
    """Diffusers VAE tensors under LDM names; attention linears become 1×1 convolutions."""
    out = {}
    for key, value in state.items():
        attention = ".attentions." in key
        inner = LDM_VAE_ATTENTION if attention else LDM_VAE_RESNET if ".resnets." in key else {}
        out[_ldm_name(key, LDM_VAE_BLOCKS, inner)] = value[:, :, None, None] if attention and value.ndim == 2 else value
    return out


def ema_name(ldm_key: str) -> str:
    """LitEma keeps `model.diffusion_model.a.b` as buffer `diffusion_modela.b` with the dots removed,
    under the module `model_ema`: `model_ema.diffusion_modelab`."""
    return "model_ema." + ldm_key[len("model."):].replace(".", "")


def write_ckpt(models: dict, path: Path, seed: int = 1) -> Path:
    """The original LDM checkpoint; non-EMA UNet weights differ from the EMA (= real) ones."""
    g = torch.Generator().manual_seed(seed)
    unet = to_ldm_unet(models["unet"].state_dict())
    state: dict = {}
    for name, value in unet.items():
        key = "model.diffusion_model." + name
        state[key] = value + 0.1 * torch.randn(value.shape, generator=g)  # the raw, non-EMA weights
        state[ema_name(key)] = value.clone()
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(105000, dtype=torch.int32)
    for name, value in to_ldm_vae(models["vae"].state_dict()).items():
        state["first_stage_model." + name] = value
    for name, value in models["projection"].state_dict().items():
        state["cc_projection." + name] = value
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
