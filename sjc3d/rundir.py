"""The run directory: where `sjc3d fit` writes and where `export`, `render` and `--resume` read.

    <run>/
      config.yaml          resolved configuration of the run
      input.png            the preprocessed input view (256²): RGB on white, alpha = object mask
      metrics.jsonl        one JSON object per logged step
      checkpoints/last.pt  the latest checkpoint (written atomically)
      checkpoints/final.pt the state at the end of training
      previews/            turntable strips every `train.preview_every` steps

A checkpoint is a plain dict of tensors and numbers, loaded with `weights_only=True`:
    step (int), field, renderer, optimizer (state dicts), background ([C] tensor),
    rng (torch RNG state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from sjc3d.atomic import atomic_path
from sjc3d.config import Config, config_from_dict, read_yaml
from sjc3d.errors import ConfigError, InputError, UserError

DEFAULT_OUTPUTS = Path("outputs")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def input_image(self) -> Path:
        return self.root / "input.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoints / "final.pt"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    def best_checkpoint(self) -> Path:
        """The final state when training finished, else the latest checkpoint."""
        return self.final_checkpoint if self.final_checkpoint.is_file() else self.last_checkpoint


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` with torch.save to a temporary file, then rename it onto `path`."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code; a bad file is a one-line UserError."""
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise InputError(f"checkpoint {path} is corrupt or not an sjc3d checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "field" not in state or "step" not in state:
        raise InputError(f"checkpoint {path} is not an sjc3d checkpoint (no field state)")
    return state


def find_latest_run(outputs: Path = DEFAULT_OUTPUTS) -> Path:
    """The run under `outputs/` whose latest checkpoint is the newest."""
    candidates = [p.parent.parent for p in outputs.glob("**/checkpoints/last.pt")]
    if not candidates:
        raise InputError(f"no runs with a checkpoint under {outputs}/; pass a run directory")
    return max(candidates, key=lambda run: RunPaths(run).last_checkpoint.stat().st_mtime)


def resolve_run_dir(run_dir: Optional[Path], outputs: Path = DEFAULT_OUTPUTS) -> RunPaths:
    """`run_dir`, or the newest run when None; checked to look like a run directory."""
    root = find_latest_run(outputs) if run_dir is None else Path(run_dir)
    paths = RunPaths(root)
    if not root.is_dir():
        raise InputError(f"run directory {root} does not exist")
    if not paths.config.is_file():
        raise InputError(f"{root} is not an sjc3d run directory (no config.yaml)")
    if not paths.last_checkpoint.is_file() and not paths.final_checkpoint.is_file():
        raise InputError(f"run {root} has no checkpoint yet")
    return paths


def load_run_config(paths: RunPaths) -> Config:
    try:
        return config_from_dict(read_yaml(paths.config))
    except ConfigError as e:
        raise InputError(f"{paths.config} is not a valid run configuration: {e}") from None


@dataclass
class LoadedRun:
    """A trained run ready for export or rendering (modules in eval mode, on `device`)."""

    paths: RunPaths
    config: Config
    field: torch.nn.Module
    renderer: torch.nn.Module
    background: torch.Tensor  # [C] colour (or latent) the renders are blended over
    step: int


def load_run(run_dir: Optional[Path], device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the field and renderer of a run from its config and best checkpoint."""
    from sjc3d.fields import build_field
    from sjc3d.render import build_renderer

    paths = resolve_run_dir(run_dir)
    config = load_run_config(paths)
    state = load_checkpoint(paths.best_checkpoint(), device)
    field = build_field(config.field, device=device)
    renderer = build_renderer(field, config.render, device=device)
    try:
        field.load_state_dict(state["field"])
        if "renderer" in state:
            renderer.load_state_dict(state["renderer"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint of {paths.root} does not match its config.yaml: {first}") from None
    field.eval()
    renderer.eval()
    background = state.get("background", torch.ones(field.n_channels)).to(device)
    return LoadedRun(paths, config, field, renderer, background, int(state["step"]))
