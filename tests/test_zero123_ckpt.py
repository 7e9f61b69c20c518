"""LDM → diffusers key mapping of the original Zero-1-to-3 checkpoints (sjc3d/priors/ckpt.py)."""

from __future__ import annotations

import json

import pytest
import torch

from sjc3d.priors import ckpt as ldm

# The published architecture (../shared/zero123/README.md and the LDM yaml).
REAL_UNET = dict(
    sample_size=32, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
)


@pytest.fixture(scope="module")
def real_unet_shapes() -> dict:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**REAL_UNET)
    return {k: v.shape for k, v in unet.state_dict().items()}


@pytest.fixture(scope="module")
def real_vae_shapes(shared_dir) -> tuple[dict, dict]:
    from diffusers import AutoencoderKL

    config = json.loads((shared_dir / "zero123" / "bennyguo_zero123-diffusers" / "vae" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    return {k: v.shape for k, v in vae.state_dict().items()}, config


def _unet_name(key: str) -> str:
    return ldm.unet_ldm_name(key, 2, [False, True, True, True])


# Facts of the SD 1.x / Zero-1-to-3 LDM naming (openaimodel.UNetModel, 2 res blocks per level,
# attention at levels 0-2), written out by hand rather than derived from the mapping code.
UNET_PAIRS = {
    "conv_in.weight": "input_blocks.0.0.weight",
    "time_embedding.linear_1.weight": "time_embed.0.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "down_blocks.0.resnets.0.norm1.weight": "input_blocks.1.0.in_layers.0.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.resnets.1.time_emb_proj.weight": "input_blocks.2.0.emb_layers.1.weight",
    "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
    "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
    "down_blocks.2.attentions.1.proj_in.weight": "input_blocks.8.1.proj_in.weight",
    "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
    "mid_block.resnets.0.norm2.bias": "middle_block.0.out_layers.0.bias",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "mid_block.resnets.1.time_emb_proj.bias": "middle_block.2.emb_layers.1.bias",
    "up_blocks.0.resnets.0.conv_shortcut.weight": "output_blocks.0.0.skip_connection.weight",
    "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
    "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj.weight": "output_blocks.5.1.transformer_blocks.0.ff.net.0.proj.weight",
    "up_blocks.1.upsamplers.0.conv.bias": "output_blocks.5.2.conv.bias",
    "up_blocks.2.upsamplers.0.conv.weight": "output_blocks.8.2.conv.weight",
    "up_blocks.3.attentions.2.proj_out.weight": "output_blocks.11.1.proj_out.weight",
    "conv_norm_out.weight": "out.0.weight",
    "conv_out.bias": "out.2.bias",
}

VAE_PAIRS = {
    "encoder.conv_in.weight": "encoder.conv_in.weight",
    "encoder.down_blocks.0.resnets.0.conv1.weight": "encoder.down.0.block.0.conv1.weight",
    "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": "encoder.down.1.block.0.nin_shortcut.weight",
    "encoder.down_blocks.2.downsamplers.0.conv.weight": "encoder.down.2.downsample.conv.weight",
    "encoder.mid_block.attentions.0.to_q.weight": "encoder.mid.attn_1.q.weight",
    "encoder.mid_block.attentions.0.to_out.0.bias": "encoder.mid.attn_1.proj_out.bias",
    "encoder.mid_block.attentions.0.group_norm.weight": "encoder.mid.attn_1.norm.weight",
    "encoder.mid_block.resnets.1.norm2.weight": "encoder.mid.block_2.norm2.weight",
    "encoder.conv_norm_out.weight": "encoder.norm_out.weight",
    "decoder.up_blocks.0.resnets.2.conv2.weight": "decoder.up.3.block.2.conv2.weight",
    "decoder.up_blocks.2.resnets.0.conv_shortcut.weight": "decoder.up.1.block.0.nin_shortcut.weight",
    "decoder.up_blocks.2.upsamplers.0.conv.weight": "decoder.up.1.upsample.conv.weight",
    "decoder.mid_block.resnets.0.conv1.bias": "decoder.mid.block_1.conv1.bias",
    "quant_conv.weight": "quant_conv.weight",
    "post_quant_conv.bias": "post_quant_conv.bias",
}


def test_unet_names_match_the_ldm_layout(real_unet_shapes):
    for diffusers_name, ldm_name in UNET_PAIRS.items():
        assert diffusers_name in real_unet_shapes
        assert _unet_name(diffusers_name) == ldm_name


def test_unet_mapping_is_one_to_one_on_the_real_architecture(real_unet_shapes):
    names = [_unet_name(k) for k in real_unet_shapes]
    assert len(set(names)) == len(names) == len(real_unet_shapes)
    assert all(not n.startswith(("down_blocks", "up_blocks", "mid_block")) for n in names)


def test_vae_names_match_the_ldm_layout(real_vae_shapes):
    shapes, _ = real_vae_shapes
    for diffusers_name, ldm_name in VAE_PAIRS.items():
        assert diffusers_name in shapes
        assert ldm.vae_ldm_name(diffusers_name, 4) == ldm_name
    names = [ldm.vae_ldm_name(k, 4) for k in shapes]
    assert len(set(names)) == len(names)


def test_ema_names_drop_the_dots():
    assert ldm.ldm_ema_name("model.diffusion_model.input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"


def test_architecture_is_read_back_from_ldm_shapes(real_unet_shapes, real_vae_shapes):
    unet_ldm = {_unet_name(k): torch.empty(s, device="meta") for k, s in real_unet_shapes.items()}
    config = ldm.unet_config_from_ldm(unet_ldm)
    for key in ("in_channels", "out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim"):
        assert config[key] == REAL_UNET[key], key
    assert tuple(config["block_out_channels"]) == REAL_UNET["block_out_channels"]
    assert tuple(config["down_block_types"]) == REAL_UNET["down_block_types"]
    assert tuple(config["up_block_types"]) == REAL_UNET["up_block_types"]
    assert config["use_linear_projection"] is False

    shapes, published = real_vae_shapes
    vae_ldm = {ldm.vae_ldm_name(k, 4): torch.empty(s, device="meta") for k, s in shapes.items()}
    vae_config = ldm.vae_config_from_ldm(vae_ldm)
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "scaling_factor", "sample_size"):
        assert vae_config[key] == published[key], key


def test_conversion_reshapes_vae_attention_and_reports_missing_tensors(real_vae_shapes):
    shapes, config = real_vae_shapes
    small = {k: v for k, v in shapes.items() if k.startswith("encoder.mid_block.attentions")}
    ldm_sd = {ldm.vae_ldm_name(k, 4): torch.randn(*v, 1, 1) if len(v) == 2 else torch.randn(v) for k, v in small.items()}
    out = ldm.convert_vae(ldm_sd, small, config)
    q = out["encoder.mid_block.attentions.0.to_q.weight"]
    assert q.shape == (512, 512)
    assert torch.equal(q, ldm_sd["encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    del ldm_sd["encoder.mid.attn_1.k.bias"]
    with pytest.raises(ValueError, match="attn_1.k.bias"):
        ldm.convert_vae(ldm_sd, small, config)


def test_split_prefers_ema_weights():
    key = "model.diffusion_model.out.2.bias"
    sd = {key: torch.zeros(4), ldm.ldm_ema_name(key): torch.ones(4), "first_stage_model.quant_conv.bias": torch.zeros(8),
          "cc_projection.weight": torch.zeros(768, 772), "cc_projection.bias": torch.zeros(768)}
    unet, vae, projection, used_ema = ldm.split_checkpoint(sd)
    assert used_ema and torch.equal(unet["out.2.bias"], torch.ones(4))
    assert set(vae) == {"quant_conv.bias"} and set(projection) == {"weight", "bias"}
    unet, _, _, used_ema = ldm.split_checkpoint(sd, use_ema=False)
    assert not used_ema and torch.equal(unet["out.2.bias"], torch.zeros(4))
