"""Finding and loading Zero-1-to-3 weights: hub id, local diffusers folder, or original `.ckpt`.

Three public forms exist and all are real user inputs (../shared/zero123/README.md):

* diffusers folders (or hub repos) in two layouts that differ only in the camera projection:
  `cc_projection/` (class CCProjection, keys `projection.weight/bias`; kxic/*) and
  `clip_camera_projection/` (class CLIPCameraProjection, keys `proj.weight/bias`;
  bennyguo/*, ashawkey/*).  Their model_index.json names pipeline classes no installed package
  defines, so the pipeline is never instantiated: each part is loaded on its own and the
  projection becomes a plain `nn.Linear(772, 768)`.
* the original LDM `.ckpt`, converted in memory (sjc3d/priors/ckpt.py), with the CLIP image
  encoder from a separate id or folder (PriorConfig.image_encoder).

Anything that cannot be found or fetched raises ModelNotFoundError with one line that says
what was looked for and how to pass a local copy.  Nothing pickled is ever executed:
safetensors first, else `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sjc3d.errors import ModelNotFoundError
from sjc3d.priors import ckpt as ldm

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")
PROJECTION_FOLDERS = ("cc_projection", "clip_camera_projection")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")
IMAGE_ENCODER_SUBFOLDER = "image_encoder"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILE = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:ckpt|pt|pth|safetensors))")  # owner/repo/file.ckpt

# The published DDIM config of the Zero-1-to-3 repos (kxic/zero123-105000 scheduler_config.json);
# used for a `.ckpt` (which carries no scheduler file) and for folders that lack one.
DEFAULT_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
# What a UNet may predict (the scheduler config's `prediction_type`) for Zero123Prior to read it.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def prediction_type_of(scheduler_config: dict) -> str:
    """The config's `prediction_type` ("epsilon" when absent, as diffusers assumes); a ValueError
    for one that Zero123Prior cannot read."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction!r}: expected one of {PREDICTION_TYPES}")
    return prediction


@dataclass
class Zero123Parts:
    """The loaded components, frozen and in eval mode."""

    unet: nn.Module  # diffusers UNet2DConditionModel, 8 input channels
    vae: nn.Module  # diffusers AutoencoderKL
    image_encoder: nn.Module  # transformers CLIPVisionModelWithProjection
    projection: nn.Linear  # [CLIP embedding ‖ pose] 772 → 768
    scheduler_config: dict
    stable: bool  # Stable Zero123 pose embedding
    source: str


# ----------------------------------------------------------------------------- errors


def _how_to_pass(what: str) -> str:
    return (
        "pass a local copy: --model /path/to/folder or prior.source=/path/to/zero123.ckpt"
        if what == "model"
        else "pass a local copy: prior.image_encoder=/path/to/folder (holding image_encoder/ or config.json)"
    )


def not_found(source: str, why: str, what: str = "model") -> ModelNotFoundError:
    """The one-line error for a model that cannot be had."""
    if HUB_ID.match(source):
        fetch = f"; download it with `huggingface-cli download {source}` on a machine with internet"
    elif m := HUB_FILE.fullmatch(source):
        fetch = f"; download it with `huggingface-cli download {m[1]} {m[2]}` on a machine with internet"
    else:
        fetch = ""
    return ModelNotFoundError(f"Zero-1-to-3 {what} {source!r}: {why}{fetch}; or {_how_to_pass(what)}")


def _hub_errors() -> tuple[type[BaseException], ...]:
    import huggingface_hub.errors as errors

    extra = getattr(errors, "HTTPError", None)
    return (OSError, ValueError) + ((extra,) if isinstance(extra, type) else ())


def _offline() -> bool:
    import huggingface_hub.constants as constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_failure(source: str, error: BaseException, what: str) -> ModelNotFoundError:
    import huggingface_hub.errors as errors

    if isinstance(error, errors.RepositoryNotFoundError):
        why = "no such repository on the Hugging Face hub (or it is private/gated)"
    elif _offline() or isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        why = "not in the local Hugging Face cache and cannot be downloaded (offline: HF_HUB_OFFLINE is set)" if _offline() else "not in the local Hugging Face cache and the hub cannot be reached"
    else:
        why = f"cannot be fetched from the Hugging Face hub ({type(error).__name__})"
    if HUB_FILE.fullmatch(source):
        why = f"no such local file, nor usable as hub repo/file: {why}"
    return not_found(source, why, what)


@contextlib.contextmanager
def _quiet():
    """Silence the libraries' chatter (fallback notices, progress bars) while loading."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity(logging.CRITICAL)  # we check loading_info ourselves
    transformers_logging.set_verbosity(logging.CRITICAL)
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- sources


def looks_like_hub_id(source: str) -> bool:
    return HUB_ID.match(source) is not None and not source.startswith((".", "/", "~"))


def _snapshot(repo_id: str, patterns: list[str], what: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # fp16 variant files duplicate the weights; from_pretrained reads the plain ones
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*.fp16.*"]))
    except _hub_errors() as e:
        raise _hub_failure(repo_id, e, what) from None


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() or any(folder.glob(name.replace(".", "-*.", 1))) for name in WEIGHT_FILES)


def _hub_pipeline(repo_id: str, parts: list[str], what: str) -> Path:
    """Download the config files and weights of `parts` (safetensors, .bin only where needed)."""
    base = ["model_index.json", *(f"{p}/*.json" for p in parts)]
    folder = _snapshot(repo_id, base + [f"{p}/*.safetensors" for p in parts], what)
    lacking = [p for p in parts if (folder / p).is_dir() and not _has_weights(folder / p)]
    if lacking and not _offline():  # older repos (diffusers 0.18) only have .bin weights
        folder = _snapshot(repo_id, base + [f"{p}/*.bin" for p in lacking], what)
    return folder


def resolve(source: str, parts: list[str], what: str = "model") -> Path:
    """A local folder or checkpoint file for `source` (hub repos are downloaded to the HF cache).

    `parts` are the subfolders a hub pipeline download needs.  `owner/repo/file.ckpt`
    downloads one checkpoint file from a hub repo.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if looks_like_hub_id(source):
        return _hub_pipeline(source, parts, what)
    if m := HUB_FILE.fullmatch(source):
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(m[1], m[2]))
        except _hub_errors() as e:
            raise _hub_failure(source, e, what) from None
    raise not_found(source, "no such file or folder, and not a hub id of the form owner/name", what)


def _checkpoint_in(folder: Path) -> Path | None:
    """A folder without a diffusers layout but with exactly one checkpoint file means that file."""
    if (folder / "unet").is_dir():
        return None
    found = [p for p in folder.iterdir() if p.suffix in (".ckpt", ".pth", ".pt")] if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def is_stable(source: str, stable: str) -> bool:
    """Stable Zero123 pose embedding?  "auto": the id or path names a *stable* model."""
    if stable in ("yes", "no"):
        return stable == "yes"
    if stable != "auto":
        raise ValueError(f"stable must be 'auto', 'yes' or 'no', got {stable!r}")
    return "stable" in Path(str(source).rstrip("/")).name.lower()


def resolve_dtype(dtype, device) -> torch.dtype:
    """None/"auto": float16 on CUDA, float32 elsewhere; strings name torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}")
    return table[dtype]


# ----------------------------------------------------------------------------- weights


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a component folder: safetensors first, else a weights-only torch.load."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights in {folder}")


def projection_from_weights(sd: dict[str, torch.Tensor]) -> nn.Linear:
    """nn.Linear from `projection.*` (CCProjection), `proj.*` (CLIPCameraProjection) or bare keys."""
    for prefix in ("projection.", "proj.", ""):
        if f"{prefix}weight" in sd and f"{prefix}bias" in sd:
            weight, bias = sd[f"{prefix}weight"], sd[f"{prefix}bias"]
            layer = nn.Linear(weight.shape[1], weight.shape[0])
            layer.load_state_dict({"weight": weight, "bias": bias})
            return layer
    raise KeyError(f"no projection weights among {sorted(sd)[:4]}")


def _from_pretrained(cls, folder: Path, dtype: torch.dtype, source: str, part: str):
    """`cls.from_pretrained(folder)`, insisting that every weight was found."""
    # transformers 5 calls the dtype argument `dtype`; diffusers still `torch_dtype`
    dtype_kw = {"dtype": dtype} if cls.__module__.startswith("transformers") else {"torch_dtype": dtype}
    safetensors = any(folder.glob("*.safetensors"))  # else .bin, read weights-only by both libraries
    try:
        with _quiet():
            model, info = cls.from_pretrained(str(folder), output_loading_info=True, use_safetensors=safetensors, **dtype_kw)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise not_found(source, f"cannot load its {part} from {folder} ({type(e).__name__})") from None
    missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if missing:
        raise not_found(source, f"its {part} in {folder} does not match the architecture ({len(missing)} missing or mismatched tensors, e.g. {missing[0]})")
    return model


def _component(folder: Path, part: str, source: str) -> Path:
    sub = folder / part
    if not (sub / "config.json").is_file() or not _has_weights(sub):
        raise not_found(source, f"the folder {folder} has no {part}/ with config.json and weights (not a Zero-1-to-3 diffusers layout; for a checkpoint file in a hub repo give owner/name/file.ckpt)")
    return sub


def _projection_folder(folder: Path, source: str) -> Path:
    for name in PROJECTION_FOLDERS:
        if (folder / name).is_dir() and _has_weights(folder / name):
            return folder / name
    raise not_found(source, f"the folder {folder} has no cc_projection/ or clip_camera_projection/ weights")


def _scheduler_config(folder: Path | None) -> dict:
    path = folder / "scheduler" / "scheduler_config.json" if folder is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    return dict(DEFAULT_SCHEDULER)


def _freeze(module: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    with _quiet():
        if next(module.parameters()).dtype != dtype:
            module = module.to(dtype=dtype)
        module = module.to(device=device).eval()
    module.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------- components


def load_image_encoder(spec: str, dtype: torch.dtype, device="cpu") -> nn.Module:
    """CLIPVisionModelWithProjection from a folder (itself or its image_encoder/) or a hub id."""
    from transformers import CLIPVisionModelWithProjection

    path = resolve(spec, [IMAGE_ENCODER_SUBFOLDER], what="image encoder")
    folder = path if (path / "config.json").is_file() and _has_weights(path) else path / IMAGE_ENCODER_SUBFOLDER
    if not ((folder / "config.json").is_file() and _has_weights(folder)):
        raise not_found(spec, f"no CLIP image encoder (config.json + weights) in {path}", what="image encoder")
    model = _from_pretrained(CLIPVisionModelWithProjection, folder, dtype, spec, "image encoder")
    return _freeze(model, device, dtype)


def _diffusers_model(cls, config: dict, ldm_sd: dict, convert, dtype: torch.dtype):
    """Build `cls(**config)` without initialising memory and load the converted LDM weights."""
    with torch.device("meta"):
        model = cls(**config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = convert(ldm_sd, shapes, config)
    model.load_state_dict(state, strict=True, assign=True)
    with _quiet():
        return model.to(dtype)


def _load_ckpt_vae(sd: dict, dtype: torch.dtype, source: str):
    from diffusers import AutoencoderKL

    _, vae_sd, _, _ = ldm.split_checkpoint(sd, use_ema=False)
    try:
        return _diffusers_model(AutoencoderKL, ldm.vae_config_from_ldm(vae_sd), vae_sd, ldm.convert_vae, dtype)
    except (KeyError, ValueError) as e:
        raise not_found(source, f"the checkpoint's VAE (first_stage_model.*) cannot be read ({e})") from None


def _read_ckpt(path: Path, source: str) -> dict:
    try:
        return ldm.read_checkpoint(path)
    except Exception as e:  # a truncated download, a non-checkpoint file, a foreign format
        raise not_found(source, f"{path} is not a readable checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def _load_ckpt(path: Path, source: str, image_encoder: str, dtype, device) -> tuple[nn.Module, nn.Module, nn.Module, nn.Linear]:
    from diffusers import UNet2DConditionModel

    sd = _read_ckpt(path, source)
    unet_sd, _, proj_sd, _ = ldm.split_checkpoint(sd, use_ema=True)
    if not unet_sd or not proj_sd:
        raise not_found(source, f"{path} is not a Zero-1-to-3 checkpoint (no model.diffusion_model.* or cc_projection.*)")
    try:
        unet = _diffusers_model(UNet2DConditionModel, ldm.unet_config_from_ldm(unet_sd), unet_sd, ldm.convert_unet, dtype)
    except (KeyError, ValueError) as e:
        raise not_found(source, f"the checkpoint's UNet cannot be read ({e})") from None
    vae = _load_ckpt_vae(sd, dtype, source)
    projection = projection_from_weights(proj_sd)
    encoder = load_image_encoder(image_encoder, dtype, device)
    return unet, vae, encoder, projection


def load_parts(source: str, *, image_encoder: str | None = None, stable: str = "auto", dtype=None, device="cpu") -> Zero123Parts:
    """Load every Zero-1-to-3 component from a hub id, a diffusers folder or a `.ckpt`.

    `image_encoder` (hub id or folder) is used only where the source has no CLIP encoder of
    its own: a `.ckpt` (default PriorConfig.image_encoder) or a folder without image_encoder/.
    """
    from sjc3d.config import PriorConfig

    dtype = resolve_dtype(dtype, device)
    parts = ["unet", "vae", "image_encoder", "scheduler", *PROJECTION_FOLDERS]
    path = resolve(source, parts)  # before the slow imports: a bad source fails at once
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    checkpoint = path if path.is_file() else _checkpoint_in(path)
    if checkpoint is not None:
        encoder_source = image_encoder or PriorConfig.image_encoder
        unet, vae, encoder, projection = _load_ckpt(checkpoint, source, encoder_source, dtype, device)
        scheduler = _scheduler_config(None)
    else:
        unet = _from_pretrained(UNet2DConditionModel, _component(path, "unet", source), dtype, source, "unet")
        vae = _from_pretrained(AutoencoderKL, _component(path, "vae", source), dtype, source, "vae")
        own = path / IMAGE_ENCODER_SUBFOLDER
        if (own / "config.json").is_file() or not image_encoder:
            encoder = _from_pretrained(CLIPVisionModelWithProjection, _component(path, IMAGE_ENCODER_SUBFOLDER, source), dtype, source, "image encoder")
        else:  # a folder without its own CLIP encoder borrows the separate one, like a .ckpt
            encoder = load_image_encoder(image_encoder, dtype, device)
        try:
            projection = projection_from_weights(read_weights(_projection_folder(path, source)))
        except (KeyError, FileNotFoundError, OSError, RuntimeError) as e:
            raise not_found(source, f"its camera projection cannot be read ({type(e).__name__})") from None
        scheduler = _scheduler_config(path)
    try:
        prediction_type_of(scheduler)
    except ValueError:
        raise not_found(source, f"its scheduler predicts {scheduler['prediction_type']!r}; sjc3d reads "
                                "'epsilon' and 'v_prediction' models") from None
    if unet.config.in_channels != 2 * vae.config.latent_channels:
        raise not_found(source, f"its UNet takes {unet.config.in_channels} channels; Zero-1-to-3 needs {2 * vae.config.latent_channels}")
    return Zero123Parts(
        unet=_freeze(unet, device, dtype),
        vae=_freeze(vae, device, dtype),
        image_encoder=_freeze(encoder, device, dtype),
        projection=_freeze(projection, device, dtype),
        scheduler_config=scheduler,
        stable=is_stable(source, stable),
        source=source,
    )


def load_vae(source: str, dtype=None, device="cpu"):
    """Only the VAE (AutoencoderKL) of a Zero-1-to-3 source: hub id, diffusers folder or `.ckpt`."""
    from diffusers import AutoencoderKL

    dtype = resolve_dtype(dtype, device)
    path = resolve(source, ["vae"])
    checkpoint = path if path.is_file() else _checkpoint_in(path)
    if checkpoint is not None:
        vae = _load_ckpt_vae(_read_ckpt(checkpoint, source), dtype, source)
    else:
        vae = _from_pretrained(AutoencoderKL, _component(path, "vae", source), dtype, source, "vae")
    return _freeze(vae, device, dtype)
