"""Configuration: typed dataclasses are the one source of truth.

A run's configuration is built in three layers, each overriding the one before:

1. the defaults written below (they follow the reference SJC + Zero-1-to-3 run, DESIGN.md §5);
2. preset files (`-c configs/fast.yaml`, several merged in order), nested YAML mappings;
3. `key=value` overrides on the command line, with dot paths (`train.lr=0.01`).

Every key and every value is checked against the dataclass annotations; a mistake is a
`ConfigError` naming the key (with a suggestion when a known key is close) — never a silently
ignored typo.  This module imports no torch, so the CLI can resolve configs instantly.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from dataclasses import field as _default
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from sjc3d.errors import ConfigError

DEFAULT_MODEL = "ashawkey/zero123-xl-diffusers"
# The small learned prior the project ships (sjc3d train-prior toy), relative to the project root.
SHIPPED_MODEL = "assets/zero123-toy"
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class InputConfig:
    """How the input photo is turned into the conditioning view."""

    size: int = 256  # side of the square input view Zero-1-to-3 was trained on
    object_fraction: float = 200 / 256  # longest side of the object's box / frame side
    elevation: float = 0.0  # elevation of the input camera in degrees (Zero123 cannot see it)
    min_size: int = 16  # refuse images smaller than this (pixels, either side)
    remove_background: Literal["auto", "yes", "no"] = "auto"  # RGB without alpha: auto = rembg if installed


@dataclass
class CameraConfig:
    """Random training cameras (spherical, DESIGN.md §3) and the input camera."""

    fov_deg: float = 49.1  # full field of view across the image width
    radius: float = 2.0  # distance of the input camera to the origin
    # Training cameras as the reference's pose.py: radius 1.8-2.2 (the difference to `radius`
    # reaches the model as Δradius), camera height z > -0.5 (elevation > -14.5° at R = 2), up to
    # the top view; directions drawn in a cube and normalised ("reference") or uniform in degrees.
    elevation_range: tuple[float, float] = (-14.5, 90.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    radius_range: tuple[float, float] = (1.8, 2.2)
    sampling: Literal["reference", "elevation"] = "reference"
    # Side of the rendered training views.  0 = auto: in latent mode the prior's latent side (its
    # image size / VAE factor: 32 for Zero-1-to-3, 16 for the shipped toy model), else 32.
    resolution: int = 0
    input_resolution: int = 0  # side of the reference-view render; 0 = same as `resolution`


@dataclass
class FieldConfig:
    """Hash-grid radiance field: instant-NGP encoding + small MLP heads."""

    backend: Literal["auto", "torch", "tcnn"] = "auto"  # auto = tcnn on CUDA when importable
    output: Literal["latent", "rgb"] = "latent"  # what the field renders
    bound: float = 1.0  # the field lives in the box [-bound, bound]³
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378  # 16 · 1.447^15 ≈ 4096 finest resolution
    hidden_dim: int = 64
    n_hidden_layers: int = 1
    density_activation: Literal["exp", "softplus"] = "exp"
    density_bias: Literal["none", "blob"] = "blob"  # centred blob so early renders see an object
    blob_density: float = 5.0  # peak added pre-activation density at the centre
    blob_radius: float = 0.5  # radius of the blob in scene units
    density_shift: float = -1.0  # constant added before the activation (reference: -1)


@dataclass
class RenderConfig:
    """Volume rendering (nerfacc)."""

    estimator: Literal["auto", "dense", "occgrid"] = "auto"  # auto = occgrid when CUDA works
    n_samples: int = 96  # samples per ray on the dense path
    render_step_size: float = 0.0  # occgrid march step; 0 = box diagonal / 512
    skip_empty: bool = True  # dense path: skip samples in cells a pure-torch occupancy grid marks empty
    occ_resolution: int = 64
    occ_threshold: float = 0.01
    occ_update_every: int = 16
    alpha_threshold: float = 1e-4  # the reference run's ray_march_weight_thres
    near: float = 0.0  # extra near/far clip on top of the box intersection; 0 = box only
    far: float = 0.0
    chunk: int = 65536  # rays per chunk when rendering without gradients


@dataclass
class PriorConfig:
    """Where the score comes from: Zero-1-to-3 weights or the ground-truth oracle."""

    source: str = DEFAULT_MODEL  # hub id | local diffusers folder | .ckpt | oracle:MESH
    image_encoder: str = "lambdalabs/sd-image-variations-diffusers"  # CLIP for a .ckpt source
    stable: Literal["auto", "yes", "no"] = "auto"  # Stable Zero123 pose embedding
    oracle_up: Literal["y", "z"] = "y"  # up axis of the oracle's mesh file (OBJ/glTF: y)
    # The oracle in latent mode: model whose VAE encodes its renders.  "" = the shipped toy model
    # when the project has it (works offline), else the default model.
    vae_source: str = ""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 CUDA, fp32 CPU
    guidance_scale: float = 100.0  # reference run; `sjc3d views` uses its own (3)
    # Guide only the noise levels with t ≥ this; below, the conditional score alone (0: every t, the
    # reference run).  See Zero123Prior.predict_noise.
    guidance_min_t: int = 0


@dataclass
class SJCConfig:
    """Perturb-and-average scoring and how the score is chained."""

    weight: float = 1.0  # scale of the chained score; 0 = no prior at all (reference-view losses only)
    t_min: int = 10  # discrete timesteps the noise level is drawn from (reference run)
    t_max: int = 969
    variance_reduction: bool = True  # Eq. 16: (D - y)/σ; False = Eq. 15: (D - z)/σ
    n_views: int = 1  # views scored per step
    grad_clip: float = 0.0  # clip the per-pixel chained score (0 = off)


@dataclass
class LossConfig:
    """Reference-view loss and regularisers; `*_start` are fractions of `train.steps`."""

    ref_rgb: float = 1e4  # reference run's view_weight: MSE of images on the [-1, 1] scale
    ref_space: Literal["rgb", "latent"] = "rgb"  # latent field: decode the render (reference) | encode the input
    ref_mask: float = 1e3
    ref_every: int = 1  # apply the reference-view loss every n steps
    # The regulariser forms are sjc3d's, not the reference's (configs/reference.yaml has those): measured on
    # both benchmarks, the reference's at 1e4 shrink or empty the field (oracle mean IoU 0.522 vs 0.883,
    # learned prior 0.023 vs 0.472); README, "Defaults".  The weights are the reference's.
    near_view: float = 1e4
    near_view_mode: Literal["reference", "input"] = "input"  # L1 around each random view | MSE near the input view
    near_view_offset: float = 0.05  # reference: camera centre moved by this distance (scene units)
    near_view_degrees: float = 5.0  # input mode: elevation/azimuth jitter of the near view
    depth_smooth: float = 1e4
    depth_smooth_mode: Literal["reference", "squared"] = "squared"  # L1 over a far background | squared, covered pixels
    depth_smooth_start: float = 0.5
    depth_smooth_input: float = 0.1  # reference mode: input view at this fraction of depth_smooth, from step 1
    background_depth: float = 10.0  # reference mode: depth of the background seen through empty space
    emptiness: float = 0.0
    emptiness_form: Literal["zero123", "sjc"] = "zero123"  # -w/2·log(1 + s·w) | log(1 + s·w), per sample
    emptiness_scale: float = 10.0
    emptiness_schedule: Literal["ramp", "step"] = "ramp"  # 1 + m·step/steps | ×m from emptiness_start
    emptiness_start: float = 0.5
    emptiness_multiplier: float = 20.0
    opacity: float = 0.0  # entropy of the accumulated opacity (pushes it to 0 or 1)


@dataclass
class TrainConfig:
    steps: int = 10000
    # Two Adamax groups: a hash-grid entry is touched by few points, an MLP weight by all.  Grid
    # 0.03 / MLP 0.003 beat the reference's single 0.05 (its voxel grids' rate) in latent mode
    # (learned prior, IoU 0.573 vs 0.523) and one rate of 0.01 in RGB mode (oracle, 0.901 vs
    # 0.894): README, "Defaults".  configs/reference.yaml keeps the reference's single rate.
    lr: float = 0.003  # MLP heads (and the grid when lr_grid = 0)
    lr_grid: float = 0.03  # hash-grid tables; 0 = train.lr
    optimizer: Literal["adamax", "adam"] = "adamax"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    checkpoint_every: int = 1000
    keep_checkpoints: int = 0  # also keep the last N checkpoints as checkpoints/step_<N>.pt (0 = last.pt only)
    preview_every: int = 1000
    log_every: int = 50
    preview_frames: int = 8  # views in the turntable strip


@dataclass
class ExportConfig:
    resolution: int = 256
    threshold: Optional[float] = None  # None = automatic from the density distribution
    chunk: int = 262144  # grid points per density query
    min_component_fraction: float = 0.02  # drop floaters with fewer faces than this share
    smooth_iterations: int = 30  # Taubin λ|μ passes on the mesh (removes hash-grid facets; README)
    density_sigma: float = 0.0  # Gaussian filter on the density grid before marching cubes (voxels)
    max_faces: int = 0  # 0 = no decimation
    # After decimation, fit the coarse surface to the full one (cleanup.fit_to_surface). Off: at 5k faces it
    # raised the demo's 8-view PSNR 0.07 dB but lowered the oracle toy's 0.16 (README, export benchmarks).
    fit_decimated: bool = False
    color_views: int = 16  # rendered views used to colour a latent field
    texture: bool = False  # UV atlas + baked colour texture (.glb/.obj) instead of vertex colours
    texture_size: int = 1024  # side of the square texture (texels)


@dataclass
class Config:
    input: InputConfig = _default(default_factory=InputConfig)
    camera: CameraConfig = _default(default_factory=CameraConfig)
    field: FieldConfig = _default(default_factory=FieldConfig)
    render: RenderConfig = _default(default_factory=RenderConfig)
    prior: PriorConfig = _default(default_factory=PriorConfig)
    sjc: SJCConfig = _default(default_factory=SJCConfig)
    loss: LossConfig = _default(default_factory=LossConfig)
    train: TrainConfig = _default(default_factory=TrainConfig)
    export: ExportConfig = _default(default_factory=ExportConfig)


# --------------------------------------------------------------------------- checks


def _check(cfg: Config) -> None:
    """Cross-field checks that a type annotation cannot express."""
    rules = [
        ("camera.fov_deg", 0 < cfg.camera.fov_deg < 180, "must be in (0, 180)"),
        ("camera.resolution", cfg.camera.resolution == 0 or cfg.camera.resolution >= 4, "must be 0 (auto) or at least 4"),
        ("field.bound", cfg.field.bound > 0, "must be positive"),
        ("field.n_levels", cfg.field.n_levels >= 1, "must be at least 1"),
        ("field.log2_hashmap_size", 4 <= cfg.field.log2_hashmap_size <= 30, "must be in [4, 30]"),
        ("render.n_samples", cfg.render.n_samples >= 2, "must be at least 2"),
        ("sjc.t_min", 0 <= cfg.sjc.t_min < cfg.sjc.t_max <= 999, "need 0 <= t_min < t_max <= 999"),
        ("sjc.n_views", cfg.sjc.n_views >= 1, "must be at least 1"),
        ("prior.guidance_min_t", 0 <= cfg.prior.guidance_min_t <= 1000, "must be in [0, 1000] (0 guides every t)"),
        ("sjc.weight", cfg.sjc.weight >= 0, "must be >= 0"),
        ("train.steps", cfg.train.steps >= 0, "must be >= 0"),
        ("train.lr", cfg.train.lr > 0, "must be positive"),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints >= 0, "must be >= 0"),
        ("train.lr_grid", cfg.train.lr_grid >= 0, "must be >= 0 (0 = train.lr)"),
        ("loss.near_view_offset", cfg.loss.near_view_offset > 0, "must be positive"),
        ("input.object_fraction", 0 < cfg.input.object_fraction <= 1, "must be in (0, 1]"),
        ("export.resolution", 8 <= cfg.export.resolution <= 1024, "must be in [8, 1024]"),
        ("export.texture_size", 16 <= cfg.export.texture_size <= 8192, "must be in [16, 8192]"),
        ("export.density_sigma", 0 <= cfg.export.density_sigma <= 8, "must be in [0, 8] voxels"),
    ]
    for lo_hi_key in ("camera.elevation_range", "camera.azimuth_range", "camera.radius_range"):
        lo, hi = _get(cfg, lo_hi_key)
        rules.append((lo_hi_key, lo <= hi, "needs low <= high"))
    rules.append(("camera.radius_range", cfg.camera.radius_range[0] > 0, "must be positive"))
    for key, ok, why in rules:
        if not ok:
            raise ConfigError(f"{key}={_get(cfg, key)!r}: {why}")


# --------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to annotation `tp`, or raise a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if isinstance(value, bool) and {"yes", "no"} <= set(args):
            value = "yes" if value else "no"  # YAML 1.1 reads yes/no (and true/false) as booleans
        if value in args and not isinstance(value, bool):
            return value
        hint = did_you_mean(str(value), [str(a) for a in args])
        raise ConfigError(f"{key}={value!r}: expected one of {_type_name(tp)}{hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r}: expected {len(args)} values")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` as a string
            value = float(value) if tp is float else int(value)
        except ValueError:
            raise bad from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `prior.source=105000` is a file name, not a number
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def did_you_mean(name: str, options: list[str]) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _hints(cls).items():
        path = f"{prefix}{name}"
        keys.append(path)
        if dataclasses.is_dataclass(tp):
            keys.extend(_known_keys(tp, path + "."))
    return keys


def _set(cfg: Any, dotted: str, value: Any) -> None:
    """Set `dotted` (e.g. "train.lr") on `cfg`, checking the key and coercing the value."""
    parts = dotted.split(".")
    obj: Any = cfg
    for depth, name in enumerate(parts):
        hints = _hints(type(obj))
        if name not in hints:
            where = ".".join(parts[:depth])
            options = [f"{where}.{k}" if where else k for k in hints]
            known = _known_keys(type(cfg))
            raise ConfigError(f"unknown config key {dotted!r}{did_you_mean(dotted, options + known)}")
        tp = hints[name]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                if not isinstance(value, dict):
                    raise ConfigError(f"{dotted}: expected a mapping of {tp.__name__} keys")
                for k, v in value.items():
                    _set(cfg, f"{dotted}.{k}", v)
                return
            setattr(obj, name, _coerce(value, tp, dotted))
            return
        obj = getattr(obj, name)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(parts[:depth + 1])} is a value")


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


# --------------------------------------------------------------------------- public API


def apply_mapping(cfg: Any, mapping: dict, source: str = "") -> Any:
    """Merge a nested mapping (a parsed preset) into `cfg` in place and return it."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping at the top level")
    for key, value in mapping.items():
        try:
            _set(cfg, str(key), value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}" if source else str(e)) from None
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key=value`; the value is parsed as YAML (so `1e-3`, `[1, 2]`, `true` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_preset_path(name: str | Path, folder: Path = CONFIGS_DIR) -> Path:
    """A preset is a path, or a bare name looked up in the project's `configs/` folder (or `folder`)."""
    path = Path(name)
    candidates = [path]
    if not path.suffix:
        candidates.append(path.with_suffix(".yaml"))
    candidates += [folder / path.name, folder / f"{path.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    hint = did_you_mean(path.stem, available)
    raise ConfigError(f"config file {str(name)!r} not found{hint}; presets: {', '.join(available)}")


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return data or {}


def load_config(
    presets: list[str | Path] | tuple = (),
    overrides: list[str] | tuple = (),
    base: dict | None = None,
) -> Config:
    """Defaults ← `base` mapping ← each preset in order ← `key=value` overrides; then checked."""
    return build_config(Config, presets, overrides, base, check=_check)


def build_config(schema: type, presets=(), overrides=(), base: dict | None = None, check=None,
                 folder: Path = CONFIGS_DIR) -> Any:
    """The same layering for any tree of dataclasses `schema` (e.g. `sjc3d train-prior`'s).

    Bare preset names are looked up in `folder`; `check(cfg)` runs the cross-field rules.
    """
    cfg = schema()
    if base:
        apply_mapping(cfg, base, "base")
    for preset in presets:
        path = resolve_preset_path(preset, folder)
        apply_mapping(cfg, read_yaml(path), str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value)
    if check is not None:
        check(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def plain(x: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))


def config_from_dict(data: dict) -> Config:
    """Inverse of `config_to_dict` (used to reload a run's saved config)."""
    cfg = apply_mapping(Config(), data, "saved config")
    _check(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def is_oracle(source: str) -> bool:
    return source.startswith("oracle:")
