"""Sweep files: the format, its expansion into trials, and validation before anything runs.

A sweep file is a YAML mapping (full commented example: configs/sweeps/example.yaml):

    name: lr_vs_guidance            # sweep directory name (default: the file's stem)
    base: [preview]                 # presets, merged in order (a path, or a name in configs/)
    overrides:                      # common to every trial: nested or dotted mapping,
      train.steps: 2000             #   or a list of "key=value" strings
    grid:                           # dot-path key -> list of values; the cartesian product
      train.lr: [0.01, 0.05]
      prior.guidance_scale: [50, 100]
    runs:                           # explicit variants, each an override mapping
      - {name: eq15, sjc.variance_reduction: false}
      - {name: eq16}
    images: [photos/*.png]          # paths or globs; may be omitted for an oracle prior
    seeds: [0, 1]                   # each value becomes train.seed
    sort_by: loss                   # final metric results.md is sorted by (default: loss)
    sort_order: asc                 # asc | desc

Expansion.  The variants are the grid points when only `grid` is given, the runs when only
`runs` is given, and every run applied at every grid point (grid product × runs) when both
are; with neither there is one variant.  Trials = images × variants × seeds, nested in that
order (image outermost, seed innermost), so trial order never depends on anything but the file.

Precedence inside a trial: presets ← overrides ← grid point ← run ← seed.  A run may re-set a
key from `overrides` (runs are deltas from the common settings), but a key may not be both
in the grid and in `overrides`, a run, or (train.seed) `seeds`: one of the two would be
silently dead, so that is an error instead.

Trial names are `<image stem>__<run name>__<grid key=value ...>__seed<N>`, each part present
only when the sweep varies it (a nameless run contributes its own key=value parts; a sweep
that varies nothing has one trial named `base`).  Names are sanitised for file names, cut to
150 characters with a hash suffix when longer, and made unique with `-2`, `-3`, ... in
expansion order.  Example: `cactus__prior.guidance_scale=50__train.lr=0.01__seed0`.

Paths (`base` and `images`) are looked up relative to the sweep file first, then the current
folder; a bare preset name also falls back to the project's configs/ folder.

Validation is all up front: every trial's config is built with `config.load_config`, so one
bad key or value anywhere fails the whole sweep with a one-line ConfigError naming the trial,
and a missing image is an InputError — before the first trial starts.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from sjc3d.config import Config, config_to_dict, did_you_mean, is_oracle, load_config, parse_override, read_yaml, resolve_preset_path
from sjc3d.errors import ConfigError, InputError

SWEEP_KEYS = ("name", "base", "overrides", "grid", "runs", "images", "seeds", "sort_by", "sort_order")
MAX_NAME = 150  # well under the 255-byte file-name limit, leaving room for suffixes


@dataclass(frozen=True)
class Trial:
    """One fit of the sweep: an image, a fully resolved config, and where it came from."""

    name: str  # unique within the sweep; the run directory's name
    image: Optional[Path]  # absolute; None when the prior renders its own input (oracle)
    overrides: tuple[str, ...]  # every key=value applied on top of the presets, in order
    varied: tuple[tuple[str, Any], ...]  # the (key, value) pairs this trial varies
    run: str  # the run's name ("" when the sweep has no named run)
    config: Config
    fingerprint: str  # hash of the resolved config and image: a changed trial is re-run

    @property
    def label(self) -> str:
        """The varied settings as `[run] key=value ...` for tables."""
        parts = [self.run] if self.run else []
        return " ".join(parts + [f"{k}={format_value(v)}" for k, v in self.varied])


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path  # the sweep file
    text: str  # its source, copied into the sweep directory for the record
    presets: tuple[Path, ...]
    trials: tuple[Trial, ...]
    sort_by: str
    sort_order: str  # "asc" | "desc"
    shape: str  # "2 images × 4 variants × 2 seeds" for messages


# --------------------------------------------------------------------------- names


def format_value(value: Any) -> str:
    """A value as it appears in a trial name: YAML spelling for scalars, commas for lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)  # shortest exact spelling: 0.01, 1e-05, 100.0
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


def sanitize_name(text: str) -> str:
    """Keep letters, digits and `._=,+-`; everything else becomes `-`; never empty, never hidden."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "-", text).strip("-.")
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9].rstrip('-.')}-{digest}"
    return name or "trial"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for name in names:
        if name not in seen:
            seen[name] = 1
            out.append(name)
            continue
        n = seen[name]
        while True:
            n += 1
            candidate = f"{name}-{n}"
            if candidate not in taken:
                break
        seen[name] = n
        taken.add(candidate)
        out.append(candidate)
    return out


# --------------------------------------------------------------------------- parsing


def _flatten(mapping: dict, where: str, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings to dot paths: {train: {lr: 1}} -> [("train.lr", 1)]."""
    pairs = []
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: key {key!r} is not a config key")
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs += _flatten(value, where, path + ".")
        else:
            pairs.append((path, value))
    return pairs


def _override_pairs(value: Any, where: str) -> list[tuple[str, Any]]:
    """`overrides:` as a (nested or dotted) mapping or a list of "key=value" strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return _flatten(value, where)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [parse_override(v) for v in value]
    raise ConfigError(f"{where}: expected a mapping or a list of key=value strings")


def _dump_value(value: Any) -> str:
    """The inverse of parse_override's YAML parsing, so `key=<this>` reads back `value` exactly."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _resolve_preset(entry: Any, here: Path) -> Path:
    if not isinstance(entry, (str, Path)) or not str(entry):
        raise ConfigError(f"base: {entry!r} is not a preset name or path")
    path = Path(entry).expanduser()
    if not path.is_absolute():
        for candidate in (here / path, here / path.with_suffix(".yaml")):
            if candidate.is_file():
                return candidate.resolve()
    return resolve_preset_path(path).resolve()


def _resolve_images(entries: Any, here: Path) -> list[Path]:
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError("images: expected a list of paths or globs")
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise ConfigError(f"images: {entry!r} is not a path or glob")
        path = Path(entry).expanduser()
        roots = [path] if path.is_absolute() else [here / path, Path.cwd() / path]
        found: list[Path] = []
        for root in roots:
            if _is_glob(entry):
                found = sorted(Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file())
            elif root.is_file():
                found = [root]
            if found:
                break
        if not found:
            what = "no file matches" if _is_glob(entry) else "image not found:"
            raise InputError(f"images: {what} {entry} (looked relative to {here} and the current folder)")
        images += [p.resolve() for p in found]
    return list(dict.fromkeys(images))  # the same file listed twice is one image


def _seeds(value: Any) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise ConfigError("seeds: expected a non-empty list of integers")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seeds: {seed!r} is not an integer")
    if len(set(value)) != len(value):
        raise ConfigError("seeds: a seed is listed twice")
    return list(value)


def _grid(value: Any) -> list[tuple[str, list]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ConfigError("grid: expected a mapping of config key -> list of values")
    axes = []
    for key, values in _flatten(value, "grid"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid: {key} needs a non-empty list of values, got {values!r}")
        axes.append((key, values))
    return axes


def _runs(value: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    """`runs:` as [(name or "", [(key, value), ...]), ...]."""
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise ConfigError("runs: expected a non-empty list of override mappings")
    runs, labels = [], set()
    for i, entry in enumerate(value):
        if not isinstance(entry, (dict, type(None))):
            raise ConfigError(f"runs[{i}]: expected a mapping of overrides (optionally with a name)")
        entry = dict(entry or {})
        name = entry.pop("name", None)
        pairs = _flatten(entry, f"runs[{i}]")
        label = sanitize_name(str(name) if name is not None else "__".join(f"{k}={format_value(v)}" for k, v in pairs))
        if label in labels:
            raise ConfigError(f"runs[{i}]: another run has the same name {label!r}; name them apart")
        labels.add(label)
        runs.append((str(name) if name is not None else "", pairs))
    return runs


def _check_overlaps(common: list, axes: list, runs: list, seeds: list) -> None:
    grid_keys = {k for k, _ in axes}
    for key, _ in common:
        if key in grid_keys:
            raise ConfigError(f"{key} is set in both `overrides` and `grid`; keep it in one")
    for i, (_, pairs) in enumerate(runs):
        for key, _ in pairs:
            if key in grid_keys:
                raise ConfigError(f"runs[{i}] sets {key}, which the grid varies; keep it in one")
    if seeds:
        keys = {k for k, _ in common} | grid_keys | {k for _, pairs in runs for k, _ in pairs}
        if "train.seed" in keys:
            raise ConfigError("train.seed is set elsewhere in the sweep as well as by `seeds`")


def fingerprint(config: Config, image: Optional[Path]) -> str:
    blob = json.dumps({"config": config_to_dict(config), "image": str(image or "")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- public API


def load_sweep(path: str | Path, extra_overrides: list[str] | tuple = ()) -> Sweep:
    """Read, expand and validate a sweep file; every trial's config is built here.

    `extra_overrides` ("key=value") are appended to the file's common `overrides` (tests use
    it to shorten a shipped sweep).  Raises ConfigError / InputError with one line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sweep file {path} not found")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for key in data:
        if key not in SWEEP_KEYS:
            hint = did_you_mean(str(key), list(SWEEP_KEYS))
            raise ConfigError(f"{path}: unknown sweep key {key!r}{hint}; known: {', '.join(SWEEP_KEYS)}")
    here = path.resolve().parent
    try:
        return _expand(path, data, here, list(extra_overrides))
    except ConfigError as e:
        message = str(e)
        raise ConfigError(message if message.startswith(f"sweep {path}") else f"sweep {path}: {message}") from None


def _expand(path: Path, data: dict, here: Path, extra: list[str]) -> Sweep:
    name = sanitize_name(str(data.get("name") or path.stem))
    base = data.get("base") or []
    presets = tuple(_resolve_preset(p, here) for p in (base if isinstance(base, list) else [base]))
    common = _override_pairs(data.get("overrides"), "overrides") + [parse_override(t) for t in extra]
    axes, runs, seeds = _grid(data.get("grid")), _runs(data.get("runs")), _seeds(data.get("seeds"))
    _check_overlaps(common, axes, runs, seeds)
    sort_by = str(data.get("sort_by") or "loss")
    sort_order = str(data.get("sort_order") or "asc")
    if sort_order not in ("asc", "desc"):
        raise ConfigError(f"sort_order={sort_order!r}: expected 'asc' or 'desc'")
    images = _resolve_images(data.get("images"), here)

    # Variants: grid points, runs, or every run at every grid point (runs applied last).
    points = [list(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
    variants = [(run, point) for run in (runs or [("", [])]) for point in points]
    plans = []
    for image in images or [None]:
        for (run_name, run_pairs), point in variants:
            for seed in seeds or [None]:
                seed_pairs = [("train.seed", seed)] if seed is not None else []
                parts = [image.stem] if image is not None else []
                if runs:
                    parts += [run_name] if run_name else [f"{k}={format_value(v)}" for k, v in run_pairs]
                parts += [f"{k}={format_value(v)}" for k, v in point]
                parts += [f"seed{seed}"] if seed is not None else []
                pairs = common + point + run_pairs + seed_pairs
                varied = point + run_pairs + seed_pairs
                plans.append((sanitize_name("__".join(parts) or "base"), image, run_name, pairs, varied))

    names = _unique([p[0] for p in plans])
    trials = []
    for trial_name, (_, image, run_name, pairs, varied) in zip(names, plans):
        overrides = tuple(f"{k}={_dump_value(v)}" for k, v in pairs)
        try:
            config = load_config(presets, overrides)
        except ConfigError as e:
            raise ConfigError(f"sweep {path}: trial {trial_name}: {e}") from None
        if image is None and not is_oracle(config.prior.source):
            raise ConfigError(
                f"sweep {path}: trial {trial_name}: prior.source={config.prior.source!r} needs an input image; "
                "list some under `images:`"
            )
        trials.append(Trial(trial_name, image, overrides, tuple(varied), run_name, config, fingerprint(config, image)))

    shape = " × ".join(
        [_count(len(images), "image")] * bool(images)
        + [_count(len(variants), "variant")]
        + [_count(len(seeds), "seed")] * bool(seeds)
    )
    return Sweep(name, path, path.read_text(), presets, tuple(trials), sort_by, sort_order, shape)
