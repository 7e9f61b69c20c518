"""Original Zero-1-to-3 `.ckpt` files (LDM key names) → diffusers state dicts, in memory.

The original checkpoints (105000.ckpt, zero123-xl.ckpt, stable_zero123.ckpt) are PyTorch
Lightning files of the latent-diffusion (LDM) code base.  Their `state_dict` holds

    model.diffusion_model.*   the UNet (openaimodel.UNetModel naming)
    model_ema.*               its exponential moving average, names with the dots after
                              `model.` removed (`model_ema.diffusion_modelinput_blocks00weight`)
    first_stage_model.*       the VAE (ldm.models.autoencoder.AutoencoderKL naming)
    cc_projection.weight/bias the Linear 772 → 768 camera projection

The conversion is a *renaming*: for every parameter of the diffusers model we compute the name
it has in LDM (`unet_ldm_name`, `vae_ldm_name`).  Written in that direction the map is a pure
function of the diffusers name and two architecture numbers, and the same table read backwards
serves the test fixtures.  The only value change is the VAE attention: LDM stores q/k/v/proj_out
as 1×1 convolutions [C, C, 1, 1], diffusers as Linear [C, C].

Architecture numbers are read from tensor shapes, except the number of attention heads, which
no shape records: it is 8 in every Zero-1-to-3 / SD 1.x configuration (the yaml's num_heads: 8).

Loading never runs pickled code: `.safetensors` is read directly; a `.ckpt` goes through
`torch.load(weights_only=True)`; if the Lightning file pickled other objects (callbacks,
numpy scalars ...) those globals are replaced by an inert stand-in class before loading.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
PROJECTION_PREFIX = "cc_projection."
N_HEADS = 8  # SD 1.x / Zero-1-to-3 (sd-objaverse-finetune-c_concat-256.yaml: num_heads 8)
NORM_GROUPS = 32  # LDM's Normalize() is GroupNorm(32, C) everywhere
SCALING_FACTOR = 0.18215  # the yaml's scale_factor; not stored in the checkpoint

# ----------------------------------------------------------------------------- reading


class _Inert:
    """Stand-in for any class or function a checkpoint pickled besides tensors.

    The weights-only unpickler builds it instead of calling the real global, so nothing from
    the file is ever executed; its content is simply dropped.
    """

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __call__(self, *args, **kwargs) -> "_Inert":
        return _Inert()


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The flat tensor state dict of a `.ckpt`/`.pt`/`.pth`/`.safetensors` file.

    Lightning files keep the weights under "state_dict"; other top-level entries are dropped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = _torch_load_safely(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no state dict")
    return {k: v for k, v in data.items() if isinstance(v, Tensor)}


def _torch_load_safely(path: Path):
    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    def load_any():
        try:  # memory-map the multi-GB Lightning files when the format allows it
            return load(mmap=True)
        except RuntimeError:
            return load(mmap=False)

    try:
        return load_any()
    except Exception as first:  # pickle.UnpicklingError for globals outside the allowlist
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            raise first from None
        if not unsafe:
            raise
        with torch.serialization.safe_globals([(_Inert, name) for name in unsafe]):
            return load_any()


# ----------------------------------------------------------------------------- names: UNet

_RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table[head]}.{tail}"


def unet_ldm_name(name: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """LDM name (without `model.diffusion_model.`) of a diffusers UNet2DConditionModel key.

    LDM numbers its blocks flatly: input_blocks.0 is conv_in, then each resolution level has
    `layers_per_block` (resnet[, transformer]) blocks and, except the last, one downsampler;
    output_blocks has `layers_per_block + 1` blocks per level, the last of which ends with
    the upsampler (after the transformer when the level has one).
    """
    per_down, per_up = layers_per_block + 1, layers_per_block + 1
    for prefix, target in _UNET_FIXED.items():
        if name.startswith(prefix + "."):
            return target + name[len(prefix):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * per_down + j
        return f"input_blocks.{block}.0.{_resnet(rest, _RESNET_UNET)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
        return f"input_blocks.{(int(m[1]) + 1) * per_down}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", name):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _RESNET_UNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * per_up + j
        return f"output_blocks.{block}.0.{_resnet(rest, _RESNET_UNET)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
        level = int(m[1])
        slot = 2 if up_has_attention[level] else 1
        return f"output_blocks.{level * per_up + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet parameter {name!r}")


def ldm_ema_name(unet_key: str) -> str:
    """`model.diffusion_model.a.b.c` → `model_ema.diffusion_modelabc` (LitEma drops the dots)."""
    return EMA_PREFIX + unet_key[len("model."):].replace(".", "")


# ----------------------------------------------------------------------------- names: VAE

_RESNET_VAE = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_ldm_name(name: str, n_levels: int) -> str:
    """LDM name (without `first_stage_model.`) of a diffusers AutoencoderKL key.

    The LDM decoder numbers its `up` levels by resolution (up.0 is the full-resolution level,
    run last); diffusers numbers `up_blocks` in the order they run — hence `n_levels - 1 - i`.
    """
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", name):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet(m[3], _RESNET_VAE)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"decoder.up.{n_levels - 1 - int(m[1])}.block.{m[2]}.{_resnet(m[3], _RESNET_VAE)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
        return f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", name):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet(m[3], _RESNET_VAE)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", name):
        return f"{m[1]}.mid.attn_1.{_ATTN_VAE[m[2]]}.{m[3]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\..+|(post_)?quant_conv\..+", name):
        return name
    raise KeyError(f"no LDM name for VAE parameter {name!r}")


# ----------------------------------------------------------------------------- architecture


def _count(keys, pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_config_from_ldm(sd: dict[str, Tensor]) -> dict:
    """UNet2DConditionModel config read from the shapes of an LDM UNet state dict (no prefix)."""
    keys = list(sd)
    in_channels = sd["input_blocks.0.0.weight"].shape[1]
    n_input = _count(keys, r"input_blocks\.(\d+)\.")
    n_levels = 1 + len({k.split(".")[1] for k in keys if re.match(r"input_blocks\.\d+\.0\.op\.", k)})
    layers = (n_input - 1 - (n_levels - 1)) // n_levels  # inputs: conv_in, L per level, n-1 downs
    channels, attention = [], []
    for level in range(n_levels):
        block = 1 + level * (layers + 1)
        channels.append(int(sd[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0]))
        attention.append(f"input_blocks.{block}.1.proj_in.weight" in sd)
    proj_in = sd["middle_block.1.proj_in.weight"]
    context_dim = int(sd["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1])
    depth = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    return {
        "sample_size": 32,
        "in_channels": int(in_channels),
        "out_channels": int(sd["out.2.weight"].shape[0]),
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "layers_per_block": layers,
        "cross_attention_dim": context_dim,
        "attention_head_dim": N_HEADS,  # diffusers' legacy name: it is the number of heads
        "transformer_layers_per_block": depth,
        "use_linear_projection": proj_in.ndim == 2,
        "norm_num_groups": NORM_GROUPS,
    }


def vae_config_from_ldm(sd: dict[str, Tensor]) -> dict:
    """AutoencoderKL config read from the shapes of an LDM VAE state dict (no prefix)."""
    keys = list(sd)
    n_levels = _count(keys, r"encoder\.down\.(\d+)\.")
    layers = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(n_levels)]
    return {
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "latent_channels": int(sd["post_quant_conv.weight"].shape[0]),
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "layers_per_block": layers,
        "norm_num_groups": NORM_GROUPS,
        "sample_size": 256,
        "scaling_factor": SCALING_FACTOR,
    }


# ----------------------------------------------------------------------------- conversion


def _rename(model_keys: dict[str, torch.Size], ldm: dict[str, Tensor], name_of, what: str) -> dict[str, Tensor]:
    out, missing = {}, []
    for key, shape in model_keys.items():
        source = name_of(key)
        if source not in ldm:
            missing.append(source)
            continue
        value = ldm[source]
        if value.shape != shape:
            if value.numel() != shape.numel():
                raise ValueError(f"{what}: {source} has shape {tuple(value.shape)}, expected {tuple(shape)}")
            value = value.reshape(shape)  # 1×1 conv ↔ linear
        out[key] = value
    if missing:
        raise ValueError(f"{what}: the checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
    return out


def split_checkpoint(sd: dict[str, Tensor], use_ema: bool = True) -> tuple[dict, dict, dict, bool]:
    """(UNet LDM dict, VAE LDM dict, projection {weight, bias}, used_ema), prefixes stripped.

    With `use_ema`, each UNet tensor is taken from its EMA copy when the file has one: the
    original samples (and the 3drec SJC code scores) inside `model.ema_scope()`.
    """
    unet, used_ema = {}, False
    for key, value in sd.items():
        if key.startswith(UNET_PREFIX):
            ema = sd.get(ldm_ema_name(key)) if use_ema else None
            used_ema |= ema is not None
            unet[key[len(UNET_PREFIX):]] = ema if ema is not None else value
    vae = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    projection = {k[len(PROJECTION_PREFIX):]: v for k, v in sd.items() if k.startswith(PROJECTION_PREFIX)}
    return unet, vae, projection, used_ema


def convert_unet(ldm: dict[str, Tensor], model_keys: dict[str, torch.Size], config: dict) -> dict[str, Tensor]:
    """Diffusers UNet state dict from an LDM one; `model_keys` = {name: shape} of the target."""
    up_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    layers = config["layers_per_block"]
    return _rename(model_keys, ldm, lambda k: unet_ldm_name(k, layers, up_attention), "UNet")


def convert_vae(ldm: dict[str, Tensor], model_keys: dict[str, torch.Size], config: dict) -> dict[str, Tensor]:
    """Diffusers AutoencoderKL state dict from an LDM one."""
    n_levels = len(config["block_out_channels"])
    return _rename(model_keys, ldm, lambda k: vae_ldm_name(k, n_levels), "VAE")
