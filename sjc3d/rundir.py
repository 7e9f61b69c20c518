"""The run directory: where `sjc3d fit` writes and where `export`, `render` and `--resume` read.

    <run>/
      config.yaml          resolved configuration of the run
      input.png            the preprocessed input view (256²): RGB on white, alpha = object mask
      metrics.jsonl        one JSON object per logged step
      checkpoints/last.pt  the latest checkpoint (written atomically)
      checkpoints/step_000400.pt ...  the last `train.keep_checkpoints` checkpoints (0: none)
      checkpoints/final.pt the state at the end of training
      previews/            turntable strips every `train.preview_every` steps
      .lock                while a process writes the run: its pid and host (runlock.py)

A checkpoint is a plain dict of tensors and numbers, loaded with `weights_only=True`:
    step (int), field, renderer, optimizer (state dicts), background ([C] tensor),
    rng (torch RNG state).

With a history (`keep_checkpoints` > 0) each checkpoint is written once, as step_<N>.pt, and
last.pt is a second name (a hard link) for the same file, so keeping a history costs no extra
write.  `--resume` reads last.pt; if that file turns out unreadable (a disk that lost data
despite the atomic rename, a truncated copy), it falls back to the newest readable history
file and says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from sjc3d.atomic import PARTIAL, atomic_path, reporting_write_errors
from sjc3d.config import Config, config_from_dict, read_yaml
from sjc3d.errors import ConfigError, InputError, UserError

if TYPE_CHECKING:  # torch is imported where it is used: RunPaths serves torch-free code (sweep driver)
    import torch

DEFAULT_OUTPUTS = Path("outputs")
HISTORY_NAME = re.compile(r"step_(\d+)\.pt")
UNREADABLE = ".unreadable"  # suffix given to checkpoints a resume found unreadable


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

    def history_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:06d}.pt"

    def history(self) -> list[tuple[int, Path]]:
        """The history checkpoints as (step, path), newest first."""
        found = []
        for path in self.checkpoints.glob("step_*.pt"):
            match = HISTORY_NAME.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    def has_checkpoint(self) -> bool:
        """Something `--resume` can start from: last.pt or a history checkpoint."""
        return self.last_checkpoint.is_file() or bool(self.history())

    def best_checkpoint(self) -> Path:
        """The final state when training finished, else the latest checkpoint."""
        return self.final_checkpoint if self.final_checkpoint.is_file() else self.last_checkpoint


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` with torch.save to a temporary file, then rename it onto `path`.

    torch.save is given an open file rather than a name: its own file writer reports a full
    disk as a bare RuntimeError ("unexpected pos ..."), a Python file raises OSError(ENOSPC),
    which atomic_path turns into a one-line WriteError naming `path`.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def save_run_checkpoint(paths: RunPaths, state: dict[str, Any], keep: int = 0) -> Path:
    """Write a training checkpoint as last.pt, keeping the newest `keep` as step_<N>.pt too.

    keep = 0: last.pt only.  keep > 0: the state is written once, as step_<N>.pt, and linked
    to last.pt (an atomic rename of a fresh hard link); older history files beyond `keep` are
    deleted.  Where hard links are not supported, last.pt is written as a second file.
    """
    if keep <= 0:
        save_checkpoint(paths.last_checkpoint, state)
        return paths.last_checkpoint
    step_path = paths.history_checkpoint(int(state["step"]))
    save_checkpoint(step_path, state)
    link = paths.checkpoints / f".last.{os.getpid()}.link{PARTIAL}.pt"  # a name remove_partials knows
    try:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.link(step_path, link)
        with reporting_write_errors(paths.last_checkpoint):
            os.replace(link, paths.last_checkpoint)
    except OSError:  # no hard links on this file system
        with contextlib.suppress(OSError):
            link.unlink()
        save_checkpoint(paths.last_checkpoint, state)
    for _, old in paths.history()[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
    return step_path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code; a bad file is a one-line UserError."""
    import torch

    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise InputError(f"checkpoint {path} is corrupt or not an sjc3d checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "field" not in state or "step" not in state:
        raise InputError(f"checkpoint {path} is not an sjc3d checkpoint (no field state)")
    return state


def load_resume_checkpoint(paths: RunPaths) -> tuple[dict[str, Any], Path]:
    """The state `--resume` continues from, and the file it came from.

    last.pt when it is readable; otherwise the newest readable history checkpoint, with a
    warning naming both.  Unreadable files newer than the one used are renamed *.unreadable
    (kept for inspection, out of the way of the next checkpoints).  If nothing is readable,
    the error about last.pt is raised.
    """
    candidates = [paths.last_checkpoint] if paths.last_checkpoint.is_file() else []
    candidates += [path for _, path in paths.history()]
    if not candidates:
        raise InputError(f"no checkpoint at {paths.last_checkpoint}")
    errors: list[tuple[Path, InputError]] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except InputError as e:
            errors.append((path, e))
            continue
        if errors:
            also = f" (also unreadable: {', '.join(p.name for p, _ in errors[1:])})" if errors[1:] else ""
            print(f"warning: {errors[0][1]}; resuming from {path} (step {int(state['step'])}) instead{also}",
                  file=sys.stderr, flush=True)
            for bad_path, _ in errors:
                with contextlib.suppress(OSError):
                    bad_path.rename(bad_path.with_name(bad_path.name + UNREADABLE))
        return state, path
    raise errors[0][1]


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
    """The saved configuration of a run, made loadable on this machine.

    A run trained with `field.backend: tcnn` is read back with `auto`: which backend trained it
    is a fact about the machine it ran on, recorded in the checkpoint's field state, and the
    table is converted to whichever backend this machine has (sjc3d/fields/portable.py).  So an
    export or a `--resume` of a GPU run works on a CPU machine.
    """
    try:
        config = config_from_dict(read_yaml(paths.config))
    except ConfigError as e:
        raise InputError(f"{paths.config} is not a valid run configuration: {e}") from None
    if config.field.backend == "tcnn":
        config.field.backend = "auto"
    return config


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
    import torch

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
