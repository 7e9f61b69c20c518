"""Configuration of `sjc3d train-prior`, built like the fit's (sjc3d/config.py): defaults ←
`configs/prior/<name>.yaml` ← `key=value` overrides, every key and value checked.

The defaults are the shipped toy model's sizes (`configs/prior/toy.yaml` names them, and sets the
recipe where it differs from the original's): 64² views of procedural objects, a factor-4
autoencoder (16² latents), a 5.6 M-parameter UNet with attention at its lowest level only, and a
small CLIP-style image encoder trained with it — the sizes that train in under an hour on two CPU
cores (../shared/notes/learned-prior-sizing.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _default
from typing import Literal

from sjc3d.config import CONFIGS_DIR, build_config
from sjc3d.errors import ConfigError

PRIOR_CONFIGS_DIR = CONFIGS_DIR / "prior"


@dataclass
class DataConfig:
    """Where the paired views come from."""

    root: str = ""  # a Zero-1-to-3 layout folder (object folders of NNN.png + NNN.npy); "" = procedural
    procedural_objects: int = 2000  # objects `make-views` renders when `root` is ""
    procedural_views: int = 12  # views per object (Zero-1-to-3's renders have 12)
    procedural_seed: int = 0
    procedural_cache: str = "outputs/prior/data"  # the procedural views are written (once) below this folder
    workers: int = 2  # processes rendering the procedural views
    held_out_objects: int = 16  # objects kept out of training: validation loss and sample grids


@dataclass
class ModelConfig:
    """A new model's sizes, or the model to fine-tune (`init_from`)."""

    init_from: str = ""  # hub id | diffusers folder | .ckpt to fine-tune; "" = a new model of these sizes
    image_encoder: str = ""  # CLIP encoder for an `init_from` .ckpt (default: prior.image_encoder's)
    image_size: int = 64  # side of the training views (the real model: 256)
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)  # one entry per level: latent factor 2^(levels − 1)
    vae_layers: int = 1
    # Channels per GroupNorm group (at most 32 groups; SD: 4 in its VAE, 10 in its UNet).  The VAE
    # uses one group (32 → one group at its narrowest level): GroupNorm normalises each group over
    # the image, so narrow groups rescale each feature channel on its own and the ratios between
    # them, a flat-coloured object's hue, are lost (measured: README, "The shipped model").
    vae_channels_per_group: int = 32
    unet_channels_per_group: int = 2
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers: int = 1
    unet_cross_attention: tuple[bool, ...] = (False, False, True)  # per level, highest resolution first
    attention_head_dim: int = 8
    # The context (image embedding + pose) also added to the timestep embedding (diffusers'
    # addition_embed_type="text"), so it reaches every ResNet block at every resolution, not only
    # the cross-attention levels.  Off: on the toy it lost 1.1 dB of novel-view PSNR at 1,500 steps
    # (README, "recipe A/Bs").  With FiLM and v-prediction, one run made the views most accurate for
    # their distance from the input; a second run did not repeat it (README, "v-prediction with FiLM, twice").
    unet_context_to_time: bool = False
    # FiLM: every ResNet block scales and shifts its normalised features by the timestep embedding
    # (diffusers' resnet_time_scale_shift="scale_shift") instead of adding it as a bias.  With
    # `unet_context_to_time` the pose can then gate, at every resolution, the skip features that
    # carry the input view into the decoder.  Off: on the toy, with `unet_context_to_time`, its
    # views follow the pose more but are no closer to the truth (README, "Letting the pose gate").
    unet_film: bool = False
    embedding_dim: int = 128  # image embedding = cross-attention width (the real model: 768)
    clip_width: int = 128
    clip_layers: int = 3
    clip_heads: int = 4
    clip_patch: int = 8
    clip_image_size: int = 64  # the real model: 224


@dataclass
class AutoencoderConfig:
    """Stage 1: the KL autoencoder, trained first and then frozen (as latent diffusion does)."""

    # A trained autoencoder to start from instead of training this stage: hub id, Zero-1-to-3 folder or
    # `.ckpt`. Its VAE (with its scaling factor) must have model.vae_*'s architecture and image size.
    init_from: str = ""
    # 4000: in the shipped run the chroma error on held-out views was 0.163 at step 2,000 and 0.073
    # at 4,000 (of 0.224 for a grey reconstruction; README, "The shipped model").
    steps: int = 4000
    batch: int = 16
    crop: int = 32  # train on random crops around the object (the autoencoder is convolutional); 0 = whole views
    lr: float = 3e-4
    weight_decay: float = 0.0
    kl_weight: float = 1e-6
    # true: decode z ~ q(z|x) (latent diffusion's recipe); false: the posterior mean.  The posterior's σ starts
    # near 1, and sampled latents bury the low-variance colour code under that noise for the first
    # thousands of steps; the diffusion stage and the engine only ever use the mean.
    sample_posterior: bool = False
    # The forward pass's arithmetic, also of caching the latents: "bf16" autocasts it (weights,
    # gradients and the optimiser stay float32).  Measured on the toy: a step 1.67x faster, and the
    # colour code (the smallest signal here) survives, held-out chroma error 0.051 against float32's
    # 0.048 (README, "Training time").  Float32 by default, as a CPU without bf16 units runs bf16 slower,
    # and in toy.yaml, which records the shipped model's recipe.
    autocast: Literal["float32", "bf16"] = "float32"


@dataclass
class DiffusionConfig:
    """Stage 2: the view-conditioned UNet (with the image encoder and the pose projection)."""

    steps: int = 5000
    batch: int = 32  # global batch, split evenly across processes
    lr: float = 3e-4
    warmup: int = 100  # linear learning-rate warm-up steps, then `lr_schedule`
    # "constant" (the original) or "cosine" down to 0 at the last step (diffusion.learning_rate_scale);
    # configs/prior/toy.yaml sets cosine (README, "Learning-rate decay").
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    # AdamW's β2, the decay of its squared-gradient average: torch's (and the original's) 0.999.
    adam_beta2: float = 0.999
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    ema_decay: float = 0.999
    # Min-SNR-γ weighting of the ε loss (diffusion.min_snr_weights); 0 = the plain objective, which γ = 5
    # did not beat on the toy's novel views (benchmarks/prior_recipe_ab.py; README, "recipe A/Bs").
    snr_gamma: float = 0.0
    # What the UNet learns to predict: "epsilon" (Zero-1-to-3) or "v_prediction" (diffusion.velocity);
    # "" keeps the model's own (its scheduler config; a new model is epsilon).  Exported in the
    # scheduler config, which `Zero123Prior` reads.
    prediction_type: Literal["", "epsilon", "v_prediction"] = ""
    uncond: float = 0.05  # classifier-free dropout unit: image only, both, concat only — each this often
    # Share of pairs whose target is the conditioning view itself (T = 0), which the original never
    # draws: a pair the concat latent answers exactly.  0 here (the original's pairs, for fine-tuning);
    # configs/prior/toy.yaml sets 0.5: +1.44 dB on held-out novel views at full length (README,
    # "Architecture and pair A/Bs").
    same_view_fraction: float = 0.0
    null_context: Literal["zeros", "original"] = "zeros"  # what a dropped image becomes (see diffusion.py)
    train_image_encoder: bool = True  # a new model learns its encoder; fine-tuning usually keeps it frozen
    # The denoiser's forward arithmetic: "bf16" autocasts it (weights, gradients, optimiser, EMA and the
    # loss stay float32). The toy sets bf16: 1.2x the steps an hour on this machine's CPUs (AMX) at equal
    # quality (README, recipe A/Bs); float32 by default, as a CPU without bf16 units runs bf16 slower.
    autocast: Literal["float32", "bf16"] = "float32"
    # torch.compile the denoiser's training step (its forward and backward) with channels-last weights:
    # a one-off compile of ~1–2.5 min on 2 CPU cores, then ~10 % faster steps (README, "Training
    # time").  Needs a C++ compiler on CPU.
    compile: bool = False


@dataclass
class RunConfig:
    out: str = ""  # run directory; "" = outputs/prior/<config name>
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 250
    log_every: int = 10
    sample_every: int = 1000  # sample grids of held-out objects (0 = only at the end)
    samples: int = 6  # held-out pairs in a sample grid
    sample_steps: int = 50  # DDIM steps of the grids
    sample_guidance: float = 3.0
    weights_dtype: Literal["float32", "float16"] = "float16"  # of the exported safetensors


@dataclass
class PriorTrainingConfig:
    data: DataConfig = _default(default_factory=DataConfig)
    model: ModelConfig = _default(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = _default(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = _default(default_factory=DiffusionConfig)
    run: RunConfig = _default(default_factory=RunConfig)


def check_training_config(cfg: PriorTrainingConfig) -> None:
    from sjc3d.train_prior.model import check_model_config

    rules = [
        ("data.procedural_objects", cfg.data.procedural_objects > cfg.data.held_out_objects >= 1,
         "needs more objects than data.held_out_objects (>= 1)"),
        ("data.procedural_views", cfg.data.procedural_views >= 2, "needs at least 2 views per object (pairs)"),
        ("autoencoder.steps", cfg.autoencoder.steps >= 0, "must be >= 0"),
        ("diffusion.steps", cfg.diffusion.steps >= 0, "must be >= 0"),
        ("diffusion.batch", cfg.diffusion.batch >= 1, "must be >= 1"),
        ("autoencoder.batch", cfg.autoencoder.batch >= 1, "must be >= 1"),
        ("diffusion.uncond", 0 <= cfg.diffusion.uncond <= 1 / 3, "must be in [0, 1/3] (three dropout cases)"),
        ("diffusion.same_view_fraction", 0 <= cfg.diffusion.same_view_fraction <= 1, "must be in [0, 1]"),
        ("diffusion.ema_decay", 0 <= cfg.diffusion.ema_decay < 1, "must be in [0, 1)"),
        ("diffusion.adam_beta2", 0 <= cfg.diffusion.adam_beta2 < 1, "must be in [0, 1)"),
        ("run.checkpoint_every", cfg.run.checkpoint_every >= 1, "must be >= 1"),
        ("run.log_every", cfg.run.log_every >= 1, "must be >= 1"),
        ("autoencoder.init_from", not (cfg.autoencoder.init_from and cfg.model.init_from),
         "a fine-tuned model (model.init_from) keeps its own autoencoder; set one of the two"),
    ]
    if not cfg.model.init_from:
        rules += check_model_config(cfg.model)
    for key, ok, why in rules:
        if not ok:
            raise ConfigError(f"{key}: {why}")


def load_training_config(name: str, overrides: list[str] | tuple = (), base: dict | None = None) -> PriorTrainingConfig:
    """`name` is a YAML path or a bare name in configs/prior/ (e.g. `toy`)."""
    return build_config(PriorTrainingConfig, [name] if name else [], overrides, base, check=check_training_config,
                        folder=PRIOR_CONFIGS_DIR)
